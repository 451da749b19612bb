"""The contract between the executor and whatever answers a step: `Completion`, `WorkerInfo`
and the async `WorkerPool` protocol.

This module is plain Python: no Ray, no torch, no litellm. Replay pools, litellm-backed pools
and the Ray proxy pool all meet this protocol, so the executor never knows which it talks to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": "..."}


@dataclass
class Attempt:
    """One try at a call: which backend model answered, how it ended, and how long it took."""

    model: str
    outcome: str  # "ok" | "rate_limited" | "server_error" | "timeout" | "connection" | "error"
    latency_s: float = 0.0
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


@dataclass
class Completion:
    """What one worker call returned. `error` is set (and `text` is "") when it failed."""

    worker: str
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    error: str | None = None
    error_code: str | None = None
    queue_wait_s: float = 0.0
    cached: bool = False
    served_by: str | None = None  # fallback worker name when the primary did not answer
    attempts: list[Attempt] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkerInfo:
    """What the conductor's prompt and the baselines know about a worker."""

    name: str
    description: str = ""
    input_price_per_mtok: float = 0.0  # dollars per million input tokens
    output_price_per_mtok: float = 0.0


@runtime_checkable
class WorkerPool(Protocol):
    """Anything that can answer a step. Implementations must not raise on a worker failure:
    they return a `Completion` with `error` set. They may raise `PoolError` for a worker name
    they do not know."""

    def workers(self) -> Sequence[WorkerInfo]:
        """The workers in the order the conductor numbers them (worker id = index)."""
        ...

    async def complete(self, worker: str, messages: list[Message], **params: Any) -> Completion:
        ...


# A pool may also stream: `async def stream(worker, messages, **params)` yields the answer's
# text (str) as the provider produces it, then the `Completion` (whose text is those pieces
# joined). Pools without it are streamed by `workflow.executor.stream_worker` in one piece.


def failed(worker: str, error: str, code: str = "worker_failed", **kw: Any) -> Completion:
    """A failed `Completion`, for pools that catch an error and must report it as data."""
    return Completion(worker=worker, error=error, error_code=code, **kw)


PERMANENT = ("missing_answer", "unknown_query")  # failures a second call would repeat
# a worker's answer to this request, not a passing fault: a second call would get it again
# (a replay pool's hole comes through a proxy as a 404; 401/403 are credentials, which a
# worker's fingerprint does not cover, so they are asked again)
DETERMINISTIC_STATUS = (400, 404, 413, 422)


def permanent_failure(c: Completion) -> bool:
    """Whether a failed call says something about the worker on this question (a cache may
    keep it as no answer) rather than about the moment (ask again later)."""
    if c.error_code in PERMANENT:
        return True
    last = c.attempts[-1] if c.attempts else None
    return last is not None and last.outcome == "error" and last.status in DETERMINISTIC_STATUS
