"""What to do when a call fails: classify the error, wait (exponential backoff with jitter,
or what `Retry-After` asks), stop calling a worker that keeps failing (`CircuitBreaker`), and
scrub secrets from every error text before it is stored or logged. Pure: no Ray, no litellm
(errors are recognised by their `status_code`, headers and class names).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

RETRYABLE = frozenset({"rate_limited", "server_error", "timeout", "connection"})
_SECRET_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9._\-]{6,}|AIza[A-Za-z0-9_\-]{20,})")
REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class Fault:
    """A failed attempt as the retry logic sees it."""

    outcome: str  # "rate_limited" | "server_error" | "timeout" | "connection" | "error"
    status: int | None = None
    retry_after_s: float | None = None
    message: str = ""

    @property
    def retryable(self) -> bool:
        return self.outcome in RETRYABLE


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without the given secret values or anything shaped like an API key."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, REDACTED)
    return _SECRET_PATTERNS.sub(REDACTED, text)


def parse_retry_after(value: Any, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value: delta-seconds or an HTTP date."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _headers(exc: BaseException) -> dict[str, str]:
    for obj in (getattr(exc, "litellm_response_headers", None),
                getattr(getattr(exc, "response", None), "headers", None),
                getattr(exc, "headers", None)):
        if obj:
            try:
                return {str(k).lower(): str(v) for k, v in dict(obj).items()}
            except (TypeError, ValueError):
                continue
    return {}


def _retry_after(exc: BaseException) -> float | None:
    h = _headers(exc)
    if "retry-after-ms" in h:
        ms = parse_retry_after(h["retry-after-ms"])
        return None if ms is None else ms / 1000.0
    return parse_retry_after(h.get("retry-after"))


def classify(exc: BaseException) -> Fault:
    """Map an exception to an outcome: 429, 5xx, timeouts and connection errors are retryable;
    other 4xx and unknown errors are not."""
    names = {c.__name__ for c in type(exc).__mro__}
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    text = str(exc) or type(exc).__name__
    message = (text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}")[:1000]
    timeout_names = {"Timeout", "APITimeoutError"}
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or names & timeout_names \
            or status == 408:
        outcome = "timeout"
    elif status == 429 or "RateLimitError" in names:
        outcome = "rate_limited"
    elif names & {"APIConnectionError", "ConnectError", "ConnectionError"} or (
            status is None and isinstance(exc, OSError)):
        outcome = "connection"
    elif status is not None and status >= 500:
        outcome = "server_error"
    else:
        outcome = "error"
    return Fault(outcome, status, _retry_after(exc), message)


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Equal-jitter exponential backoff: half of min(max, base * 2^attempt), plus up to as
    much again at random, so that many failing callers do not retry in lockstep."""
    d = min(max_s, base_s * 2 ** attempt)
    return d / 2 + rng.random() * d / 2


def retry_delay(attempt: int, fault: Fault, base_s: float, max_s: float,
                rng: random.Random) -> float:
    """The wait before retry number `attempt + 1`: never shorter than `Retry-After`."""
    return max(fault.retry_after_s or 0.0, backoff_s(attempt, base_s, max_s, rng))


class CircuitBreaker:
    """Closed: calls go through. After `failures` consecutive failed attempts it opens: calls
    go to the fallback for `cooldown_s`. Then it is half-open: one probe call goes through;
    success closes it, failure opens it again."""

    def __init__(self, failures: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold, self.cooldown_s, self._clock = max(1, failures), cooldown_s, clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_since: float | None = None
        self.times_opened = 0

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self.cooldown_s:
            return "open"
        return "half_open"

    def allow(self) -> bool:
        """May a call go to this worker now? In half-open, only one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._clock()
        if self._probe_since is not None and now - self._probe_since < self.cooldown_s:
            return False  # a probe is out; a lost probe frees the slot after a cooldown
        self._probe_since = now
        return True

    def success(self) -> None:
        self._failures, self._opened_at, self._probe_since = 0, None, None

    def failure(self) -> None:
        self._failures += 1
        reopen = self._opened_at is not None and self.state == "half_open"
        if reopen or (self._opened_at is None and self._failures >= self.threshold):
            self._opened_at, self._probe_since = self._clock(), None
            self.times_opened += 1
