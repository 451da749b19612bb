"""Per-key limits, as plain arithmetic: requests per minute (a sliding 60-second window) and
dollars per UTC day. One `KeyLimiter` lives in one named actor (`actors.KeyLimitsActor`), so
the limits hold across every ingress replica. Pure: no Ray.

A request is admitted (and counted) before it runs, while its cost is known only after: a key
is refused once what it has already spent today reaches its budget, so the last admitted
request may overshoot the budget by its own cost.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

WINDOW_S = 60.0


@dataclass(frozen=True)
class Limits:
    """None: no limit of that kind."""

    requests_per_minute: float | None = None
    dollars_per_day: float | None = None


def utc_day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


class KeyLimiter:
    """Sliding-window request counts and daily spend, per key id."""

    def __init__(self, per_key: Mapping[str, Limits] | None = None,
                 default: Limits | None = None, clock: Callable[[], float] = time.time):
        self.per_key, self.default = dict(per_key or {}), default or Limits()
        self._clock = clock
        self._times: dict[str, deque[float]] = {}
        self._spent: dict[str, tuple[str, float]] = {}

    def limits(self, key_id: str) -> Limits:
        own = self.per_key.get(key_id)
        if own is None:
            return self.default
        return Limits(
            own.requests_per_minute if own.requests_per_minute is not None
            else self.default.requests_per_minute,
            own.dollars_per_day if own.dollars_per_day is not None
            else self.default.dollars_per_day)

    def spent_today(self, key_id: str) -> float:
        day, dollars = self._spent.get(key_id, ("", 0.0))
        return dollars if day == utc_day(self._clock()) else 0.0

    def admit(self, key_id: str) -> str | None:
        """Count one request of `key_id` and return None, or return why it is refused (a
        message naming the limit; the refused request is not counted)."""
        now, lim = self._clock(), self.limits(key_id)
        times = self._times.setdefault(key_id, deque())
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        rpm = lim.requests_per_minute
        if rpm is not None and len(times) >= rpm:
            wait = max(0.0, times[0] + WINDOW_S - now)
            return (f"API key {key_id} is over its limit of {rpm:g} requests per minute; "
                    f"retry in {wait:.0f}s")
        budget, spent = lim.dollars_per_day, self.spent_today(key_id)
        if budget is not None and spent >= budget:
            return (f"API key {key_id} has spent ${spent:.4f} of its ${budget:g} per day; "
                    "the budget resets at 00:00 UTC")
        times.append(now)
        return None

    def charge(self, key_id: str, dollars: float) -> None:
        today = utc_day(self._clock())
        self._spent[key_id] = (today, self.spent_today(key_id) + max(0.0, float(dollars)))

    def usage(self, key_id: str) -> dict[str, float]:
        now = self._clock()
        recent = sum(1 for t in self._times.get(key_id, ()) if t > now - WINDOW_S)
        return {"requests_last_minute": recent, "dollars_today": self.spent_today(key_id)}
