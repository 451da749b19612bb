"""Per-worker accounting: what one proxy spent and how its calls went. Pure.

A `CallRecord` describes one call *as this worker served it*: tokens and dollars are this
worker's own backend usage (a call answered by a fallback is paid for by the fallback's
record), so summing the records of all workers gives the cluster's real spend.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CallRecord:
    ok: bool
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    queue_wait_s: float = 0.0
    latency_s: float = 0.0
    cached: bool = False
    fallback: bool = False  # answered by a fallback worker
    error_code: str | None = None


def _quantile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class WorkerStats:
    """Running totals, and the last `window` waits and latencies for quantiles."""

    calls: int = 0
    failures: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    dollars: float = 0.0
    cache_hits: int = 0
    fallbacks: int = 0
    rate_limit_timeouts: int = 0
    queue_wait_s: float = 0.0
    latency_s: float = 0.0
    window: int = 1000
    _waits: deque[float] = field(default_factory=deque, repr=False)
    _latencies: deque[float] = field(default_factory=deque, repr=False)

    def record(self, r: CallRecord) -> None:
        self.calls += 1
        self.failures += not r.ok
        self.retries += r.retries
        self.input_tokens += r.input_tokens
        self.output_tokens += r.output_tokens
        self.dollars += r.cost
        self.cache_hits += r.cached
        self.fallbacks += r.fallback
        self.rate_limit_timeouts += r.error_code == "rate_limit_timeout"
        self.queue_wait_s += r.queue_wait_s
        self.latency_s += r.latency_s
        for buf, x in ((self._waits, r.queue_wait_s), (self._latencies, r.latency_s)):
            buf.append(x)
            if len(buf) > self.window:
                buf.popleft()

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_") and k != "window"}
        waits, lats = list(self._waits), list(self._latencies)
        d.update(queue_wait_p50_s=_quantile(waits, 0.5), queue_wait_p99_s=_quantile(waits, 0.99),
                 latency_p50_s=_quantile(lats, 0.5), latency_p99_s=_quantile(lats, 0.99))
        return d
