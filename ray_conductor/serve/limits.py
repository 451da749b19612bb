"""Per-key limits, as plain arithmetic: requests per minute (a sliding 60-second window) and
dollars per UTC day. One `KeyLimiter` lives in one named actor (`actors.KeyLimitsActor`), so
the limits hold across every ingress replica; its budget state is saved to a file after each
change and read back when the actor restarts. Pure: no Ray.

Budgets hold by reserve-then-settle. Before a request runs, the limiter reserves its worst
case (`worst_case`: every call the request may make, each at its prompt's tokens and its
output cap, at the worker's prices) and admits it only while what the key spent today plus
what it has reserved is still under the budget. When the request ends, the reservation is
settled at the real cost. So however many requests arrive at once, the budget is overshot by
at most the real cost of the last one admitted (each real cost being within its worst case).
Every refusal says when to retry (`retry_after_s`, the `Retry-After` header of the 429).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

WINDOW_S = 60.0
MESSAGE_TOKENS = 8  # a message's own tokens (role, separators) beyond its text
RESERVATION_TTL_S = 3600.0  # a reservation nobody settled (its replica died) is dropped


@dataclass(frozen=True)
class KeyLimits:
    """None: no limit of that kind."""

    requests_per_minute: float | None = None
    dollars_per_day: float | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused, and in how many seconds it may be retried."""

    message: str
    retry_after_s: float


def utc_day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def to_midnight(t: float) -> float:
    """Seconds from `t` to the next 00:00 UTC (when daily budgets reset)."""
    day = datetime.fromtimestamp(t, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day + timedelta(days=1)).timestamp() - t


# -- the worst case of a request -------------------------------------------------------------


def token_bound(text: str) -> int:
    """An upper bound of the tokens of `text` for byte-level tokenizers (every token covers
    at least one UTF-8 byte)."""
    return len(text.encode("utf-8", "replace"))


def prompt_bound(messages: Sequence[Mapping[str, str]]) -> int:
    return sum(token_bound(m["content"]) + MESSAGE_TOKENS for m in messages)


def call_cost(input_tokens: int, output_tokens: int, price: tuple[float, float]) -> float:
    """Dollars of one call at (input, output) $ per 1M tokens."""
    return (input_tokens * price[0] + output_tokens * price[1]) / 1e6


def worst_case(calls: Sequence[tuple[int, tuple[float, float]]], prompt_tokens: int,
               output_cap: int, step_overhead: int = 256) -> float:
    """The most a request can cost: for each call it may make, given as (outputs it may read,
    the worker's prices), the prompt plus those outputs plus the step's own message, and
    `output_cap` tokens out."""
    return sum(call_cost(prompt_tokens + step_overhead + reads * output_cap, output_cap, price)
               for reads, price in calls)


# -- the limiter -------------------------------------------------------------------------------


@dataclass
class _Reservation:
    key_id: str
    dollars: float
    at: float


class KeyLimiter:
    """Sliding-window request counts, daily spend and open reservations, per key id.
    `state_path`: where the budget state is saved after each change (None: memory only)."""

    def __init__(self, per_key: Mapping[str, KeyLimits] | None = None,
                 default: KeyLimits | None = None, clock: Callable[[], float] = time.time,
                 state_path: str | os.PathLike | None = None):
        self.per_key, self.default = dict(per_key or {}), default or KeyLimits()
        self._clock = clock
        self._times: dict[str, deque[float]] = {}
        self._spent: dict[str, tuple[str, float]] = {}
        self._open: dict[str, _Reservation] = {}
        self.state_path = Path(state_path) if state_path else None
        if self.state_path is not None:
            self._load()

    def limits(self, key_id: str) -> KeyLimits:
        own = self.per_key.get(key_id)
        if own is None:
            return self.default
        return KeyLimits(
            own.requests_per_minute if own.requests_per_minute is not None
            else self.default.requests_per_minute,
            own.dollars_per_day if own.dollars_per_day is not None
            else self.default.dollars_per_day)

    def has_budget(self, key_id: str) -> bool:
        return self.limits(key_id).dollars_per_day is not None

    def spent_today(self, key_id: str) -> float:
        day, dollars = self._spent.get(key_id, ("", 0.0))
        return dollars if day == utc_day(self._clock()) else 0.0

    def reserved(self, key_id: str) -> float:
        self._expire()
        return sum(r.dollars for r in self._open.values() if r.key_id == key_id)

    def check(self, key_id: str) -> Refusal | None:
        """Would a request of `key_id` be refused now (counting nothing)?"""
        return self._refusal(key_id, self._window(key_id))

    def reserve(self, key_id: str, dollars: float = 0.0) -> tuple[str | None, Refusal | None]:
        """Count one request of `key_id` and hold `dollars` (its worst case) against its
        budget: (ticket, None); or (None, why not): the request is not counted."""
        times = self._window(key_id)
        refused = self._refusal(key_id, times)
        if refused is not None:
            return None, refused
        times.append(self._clock())
        if not self.has_budget(key_id):
            return None, None
        ticket = uuid.uuid4().hex
        self._open[ticket] = _Reservation(key_id, max(0.0, float(dollars)), self._clock())
        self._save()
        return ticket, None

    def settle(self, key_id: str, ticket: str | None, dollars: float) -> None:
        """The request ended having cost `dollars`: its reservation is released and the
        real cost charged (also when the reservation was lost)."""
        if ticket is not None:
            self._open.pop(ticket, None)
        today = utc_day(self._clock())
        self._spent[key_id] = (today, self.spent_today(key_id) + max(0.0, float(dollars)))
        if self.has_budget(key_id):
            self._save()

    def charge(self, key_id: str, dollars: float) -> None:
        """A cost without a reservation (`settle` with no ticket)."""
        self.settle(key_id, None, dollars)

    def admit(self, key_id: str) -> str | None:
        """`reserve` of nothing: None when admitted, else why not."""
        _, refused = self.reserve(key_id, 0.0)
        return None if refused is None else refused.message

    def usage(self, key_id: str) -> dict[str, float]:
        now = self._clock()
        recent = sum(1 for t in self._times.get(key_id, ()) if t > now - WINDOW_S)
        return {"requests_last_minute": recent, "dollars_today": self.spent_today(key_id),
                "dollars_reserved": self.reserved(key_id)}

    # -- inside ----------------------------------------------------------------------------
    def _window(self, key_id: str) -> deque[float]:
        now = self._clock()
        times = self._times.setdefault(key_id, deque())
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        return times

    def _refusal(self, key_id: str, times: deque[float]) -> Refusal | None:
        now, lim = self._clock(), self.limits(key_id)
        rpm = lim.requests_per_minute
        if rpm is not None and len(times) >= rpm:
            wait = max(1.0, math.ceil(times[0] + WINDOW_S - now))
            return Refusal(f"API key {key_id} is over its limit of {rpm:g} requests per "
                           f"minute; retry in {wait:.0f}s", wait)
        budget = lim.dollars_per_day
        if budget is None:
            return None
        spent, held = self.spent_today(key_id), self.reserved(key_id)
        if spent >= budget:
            wait = math.ceil(to_midnight(now))
            return Refusal(f"API key {key_id} has spent ${spent:.4f} of its ${budget:g} per "
                           "day; the budget resets at 00:00 UTC", max(1.0, wait))
        if spent + held >= budget:
            return Refusal(f"API key {key_id} has spent ${spent:.4f} of its ${budget:g} per "
                           f"day and ${held:.4f} is held by its requests in flight; retry "
                           "when they finish", 1.0)
        return None

    def _expire(self) -> None:
        old = self._clock() - RESERVATION_TTL_S
        for t in [t for t, r in self._open.items() if r.at < old]:
            del self._open[t]

    def state(self) -> dict[str, Any]:
        return {"spent": {k: list(v) for k, v in self._spent.items()},
                "open": {t: [r.key_id, r.dollars, r.at] for t, r in self._open.items()}}

    def _save(self) -> None:
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state()))
        os.replace(tmp, self.state_path)

    def _load(self) -> None:
        """The saved budget state (a missing or unreadable file: a fresh start, said so in
        the state's absence, never a crash)."""
        assert self.state_path is not None
        try:
            d = json.loads(self.state_path.read_text())
            self._spent = {k: (str(v[0]), float(v[1])) for k, v in d.get("spent", {}).items()}
            self._open = {t: _Reservation(str(v[0]), float(v[1]), float(v[2]))
                          for t, v in d.get("open", {}).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, IndexError, AttributeError):
            import logging

            logging.getLogger(__name__).warning(
                "key limits state %s is unreadable; budgets start from zero", self.state_path)
        self._expire()
