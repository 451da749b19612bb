"""The rate limiter of one worker: requests and tokens per sliding window, a cap on calls in
flight, and a queue with two priority classes. Pure asyncio: no Ray, no litellm.

Why a sliding-window log and not a refilling bucket: a bucket of capacity L refilled at L per
window admits up to 2L in some window (a full bucket plus one window of refill). The log admits
a call only if the last `window_s` seconds hold fewer than L admissions, so *every* window of
that length holds at most L. Calls over the limit wait their turn instead of failing: `serve`
calls first, then `rollout`, first come first served within a class, strictly in that order
(a rollout never overtakes a waiting serve call). A call fails only when its deadline passes.

Rollouts use what serving leaves, without making a serve call wait behind them:
- they never take the last free request slot of the window, nor the last concurrency slot, so
  a serve call that arrives while rollouts saturate the worker finds one free;
- they are paced, one per `window_s / L`, so that their admissions (and so their expiries) are
  spread over the window rather than bunched: a slot used by a serve call is given back to
  serving by the next expiry, a fraction of a window later, not at the next window's start.
Together this costs rollouts one request per window, and keeps serve waits near zero unless
several serve calls arrive within one pacing interval.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ray_conductor.errors import ConfigError, RateLimitTimeout, WorkerCallError

PRIORITIES = ("serve", "rollout")
Clock = Callable[[], float]


def max_in_window(times: list[float], window_s: float) -> int:
    """The most admissions in any half-open window [t, t + window_s): what the limiter
    guarantees to keep at or below the limit (for tests and benchmarks)."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


@dataclass(frozen=True)
class Limits:
    """Admissions (`requests`) and `tokens` allowed per `window_s`; None means unlimited."""

    requests: float | None = None
    tokens: float | None = None
    window_s: float = 60.0
    concurrency: int | None = None

    @classmethod
    def per_minute(cls, rpm: float | None, tpm: float | None, window_s: float = 60.0,
                   concurrency: int | None = None) -> "Limits":
        """Provider-style per-minute rates enforced over a window of `window_s`."""
        scale = window_s / 60.0
        return cls(rpm * scale if rpm else None, tpm * scale if tpm else None, window_s,
                   concurrency)


class SlidingWindow:
    """Amounts admitted in the last `window_s` seconds; a new amount fits while the sum stays
    at or below `limit`. Entries expire `window_s` after their admission."""

    def __init__(self, limit: float, window_s: float):
        self.limit, self.window_s = limit, window_s
        self._log: deque[list[float]] = deque()  # [admitted_at, amount, 1.0 while counted]
        self._used = 0.0

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - self.window_s:
            entry = self._log.popleft()
            self._used -= entry[1]
            entry[2] = 0.0

    def used(self, now: float) -> float:
        self._expire(now)
        return self._used

    def wait_s(self, now: float, amount: float) -> float:
        """0 when `amount` fits now, else the seconds until enough has expired (inf: never)."""
        if amount > self.limit:
            return math.inf
        excess = self.used(now) + amount - self.limit
        if excess <= 1e-9:
            return 0.0
        freed = 0.0
        for t, a, _ in self._log:
            freed += a
            if freed >= excess - 1e-9:  # positive even where float rounding says 0
                return max(t + self.window_s - now, 1e-6)
        return math.inf  # not reached: the log holds more than `excess`

    def add(self, now: float, amount: float) -> list[float]:
        entry = [now, float(amount), 1.0]
        self._log.append(entry)
        self._used += amount
        return entry

    def adjust(self, entry: list[float], amount: float) -> None:
        """Correct an admitted amount (an estimate) to what it really was, if still counted."""
        if entry[2]:
            self._used += amount - entry[1]
            entry[1] = float(amount)


@dataclass
class Permit:
    """An admission: hand it back with `RateLimiter.release` when the call is over."""

    priority: str
    tokens: float
    queue_wait_s: float
    admitted_at: float = 0.0  # wall clock, comparable across processes (traces, benchmarks)
    _entry: list[float] | None = field(default=None, repr=False)
    released: bool = False


@dataclass
class _Waiter:
    priority: str
    tokens: float
    since: float
    future: asyncio.Future[Permit]


class RateLimiter:
    """Admits calls in priority order within `limits`; see the module docstring."""

    def __init__(self, limits: Limits, clock: Clock = time.monotonic):
        self.limits = limits
        self._clock = clock
        # wall time of an admission = the limiter's own clock + this offset, so admissions
        # are exactly as far apart in wall time as the limiter decided (no thread switch in
        # between), and comparable across processes
        self._wall_offset = time.time() - clock()
        w = limits.window_s
        self._requests = SlidingWindow(limits.requests, w) if limits.requests else None
        self._tokens = SlidingWindow(limits.tokens, w) if limits.tokens else None
        self._queues: dict[str, deque[_Waiter]] = {p: deque() for p in PRIORITIES}
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._last_rollout = -math.inf

    async def acquire(self, tokens: float = 0, priority: str = "serve",
                      timeout_s: float | None = None) -> Permit:
        """Wait for an admission; raise `RateLimitTimeout` once `timeout_s` has passed."""
        if priority not in self._queues:
            raise ConfigError(f"priority {priority!r} is not one of {PRIORITIES}")
        if self._tokens and tokens > self._tokens.limit:
            raise WorkerCallError(
                f"a call of ~{tokens:.0f} tokens can never fit the tpm budget of "
                f"{self._tokens.limit:.0f} tokens per {self.limits.window_s:g}s window; raise "
                "tpm or window_s, or send fewer tokens", code="over_capacity")
        waiter = _Waiter(priority, tokens, self._clock(),
                         asyncio.get_running_loop().create_future())
        self._queues[priority].append(waiter)
        self._pump()
        fut = waiter.future
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except asyncio.TimeoutError:
            if fut.done() and not fut.cancelled():
                return fut.result()  # admitted at the deadline
            self._drop(waiter)
            raise RateLimitTimeout(
                f"waited {timeout_s:.2f}s in the {priority} queue without an admission "
                f"(limits: {self.describe()}); raise the deadline or lower the load") from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())
            else:
                self._drop(waiter)
            raise
        return fut.result()

    def release(self, permit: Permit, actual_tokens: float | None = None) -> None:
        """The call is over: free its slot, and count its real token usage if known."""
        if permit.released:
            return
        permit.released = True
        self._in_flight -= 1
        if actual_tokens is not None:
            self.reconcile(permit, actual_tokens)
        self._pump()

    def reconcile(self, permit: Permit, actual_tokens: float) -> None:
        """Replace the estimate a call was admitted with by the usage the provider reported."""
        if self._tokens and permit._entry is not None:
            self._tokens.adjust(permit._entry, actual_tokens)
            permit.tokens = actual_tokens

    def state(self) -> dict[str, float | int]:
        now = self._clock()
        return {"queued_serve": len(self._queues["serve"]),
                "queued_rollout": len(self._queues["rollout"]),
                "in_flight": self._in_flight,
                "requests_in_window": self._requests.used(now) if self._requests else 0,
                "tokens_in_window": self._tokens.used(now) if self._tokens else 0}

    def describe(self) -> str:
        lim = self.limits
        parts = [f"{lim.requests:g} requests" if lim.requests else "",
                 f"{lim.tokens:g} tokens" if lim.tokens else ""]
        per = " and ".join(p for p in parts if p) or "no rate limit"
        cap = f", {lim.concurrency} in flight" if lim.concurrency else ""
        return f"{per} per {lim.window_s:g}s{cap}"

    # -- the queue ----------------------------------------------------------------------------
    def _head(self) -> _Waiter | None:
        for p in PRIORITIES:
            q = self._queues[p]
            while q and q[0].future.done():  # cancelled while waiting
                q.popleft()
            if q:
                return q[0]
        return None

    def _drop(self, waiter: _Waiter) -> None:
        waiter.future.cancel()
        try:
            self._queues[waiter.priority].remove(waiter)
        except ValueError:
            pass  # already popped by _head
        self._pump()

    def _wait_s(self, now: float, w: _Waiter) -> float | None:
        """Seconds until the head may go; None while the concurrency cap blocks it."""
        rollout = w.priority == "rollout"
        cap = self.limits.concurrency
        if cap and self._in_flight >= cap - (rollout and cap > 1):
            return None
        wait = 0.0
        if self._requests:
            room = 1 + (rollout and self._requests.limit >= 2)  # leave serving one slot
            wait = self._requests.wait_s(now, room)
            if rollout:
                pace = self.limits.window_s / self._requests.limit
                wait = max(wait, self._last_rollout + pace - now)
        if self._tokens:
            wait = max(wait, self._tokens.wait_s(now, w.tokens))
        return wait

    def _pump(self) -> None:
        """Admit waiters from the head while they fit; else wake up when the head may fit."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while (w := self._head()) is not None:
            now = self._clock()
            wait = self._wait_s(now, w)
            if wait is None:
                return  # release() pumps again
            if wait > 0:
                self._timer = asyncio.get_running_loop().call_later(wait, self._pump)
                return
            self._admit(now, w)

    def _admit(self, now: float, w: _Waiter) -> None:
        self._queues[w.priority].popleft()
        self._in_flight += 1
        if w.priority == "rollout":
            self._last_rollout = now
        if self._requests:
            self._requests.add(now, 1)
        entry = self._tokens.add(now, w.tokens) if self._tokens else None
        w.future.set_result(Permit(w.priority, w.tokens, now - w.since,
                                   now + self._wall_offset, entry))
