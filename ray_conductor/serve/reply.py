"""What the gateway hands out and carries: its settings, the `Reply` (a JSON body or
server-sent events), a 429 that says when to retry (`Limited`), one request's state on its
way through (`RequestState`), and the pool a streaming policy runs on (`ObservedPool`,
reporting each call's start and end). Pure: no Ray, no HTTP server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ray_conductor.errors import ServeError
from ray_conductor.serve import protocol as api
from ray_conductor.serve import wire
from ray_conductor.workers.base import Completion, WorkerPool
from ray_conductor.workflow.executor import Emit

if TYPE_CHECKING:
    from ray_conductor.serve.results import Run


@dataclass
class GatewaySettings:
    pool: str | None = None  # the replay pool's spec, for messages
    replay_workers: frozenset[str] = frozenset()  # workers that answer only recorded questions
    max_body_bytes: int = 2_000_000
    max_prompt_chars: int = 200_000
    call_timeout_s: float | None = None
    orchestration_prices: tuple[float, float] = (0.0, 0.0)  # $/1M input, output
    policies_ttl_s: float = 2.0
    default_budget: float | None = None  # $/day of a key that sets none
    output_cap: int = 4096  # output tokens a call may make when the request sets no max
    reward_range: tuple[float, float] = (-1.0, 1.0)
    fallbacks: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass
class Reply:
    """An HTTP answer: a JSON body, or server-sent events as they are produced."""

    status: int = 200
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Limited(ServeError):
    """A 429 that says when to retry."""

    def __init__(self, message: str, retry_after_s: float, code: str):
        super().__init__(message, 429, code=code, type="rate_limit_error")
        self.retry_after_s = retry_after_s


def error_reply(e: ServeError) -> Reply:
    retry = getattr(e, "retry_after_s", None)
    headers = {"retry-after": str(max(1, round(retry)))} if retry is not None else {}
    return Reply(e.status, wire.error_body(e), headers=headers)


@dataclass
class RequestState:
    """One request as the gateway carries it from the door to the log."""

    rid: str
    endpoint: str
    t0: float
    key_id: str | None = None
    req: api.ApiRequest | None = None
    query_id: str | None = None
    timeout_s: float | None = None
    logged: bool = False
    ticket: str | None = None
    reserved: float = 0.0  # the worst case held against the key's budget
    cost: float | None = None  # the real cost, once known
    settled: bool = False
    streaming: bool = False  # the stream owns logging and settling from here


class ObservedPool:
    """A pool reporting each call's start and end (an interactive policy's progress)."""

    def __init__(self, pool: WorkerPool, emit: Emit):
        self.pool, self.emit, self.calls = pool, emit, 0

    def workers(self) -> Any:
        return self.pool.workers()

    async def complete(self, worker: str, messages: Any, **params: Any) -> Completion:
        i, t = self.calls, time.perf_counter()
        self.calls += 1
        self.emit({"event": "step.started", "step": i, "worker": worker})
        c = await self.pool.complete(worker, messages, **params)
        self.emit({"event": "step.finished", "step": i, "worker": worker,
                   "served_by": c.served_by, "ok": c.ok, "error_code": c.error_code,
                   "latency_s": round(time.perf_counter() - t, 4), "cached": c.cached,
                   "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
                   "cost": c.cost})
        return c


def internal_error(rid: str, e: BaseException) -> ServeError:
    return ServeError(f"internal error ({type(e).__name__}) on request {rid}; the server log "
                      "has the details", 500, code="internal_error", type="server_error")


def fingerprint(run: Run, req: api.ApiRequest) -> str:
    return f"conductor-{run.version}" if run.version else f"worker-{req.model}"


def version_headers(run: Run) -> dict[str, str]:
    """One request id per response: Serve's own `x-request-id`; ours is the body's `id`."""
    return {"x-conductor-policy-version": run.version or ""}


def traffic_row(ctx: RequestState, run: Run | None, u: Any, now: float, *, status: int,
                error: str | None, error_code: str | None) -> dict[str, Any]:
    """The request's traffic row, whatever its outcome (never the key, only its id)."""
    from ray_conductor.serve.results import steps_view
    from ray_conductor.serve.traffic import request_row
    from ray_conductor.workflow import render

    req = ctx.req
    trace = None
    if run is not None:
        trace = {"steps": steps_view(run, with_text=True), "answer": run.trace.answer,
                 "wall_s": run.trace.wall_s, "plan_text": run.plan_text,
                 "plan_attempts": run.plan_attempts,
                 "plan_fell_back": run.plan_fell_back, "plan_errors": run.plan_errors,
                 "context_messages": len(req.context) if req else 0}
    return request_row(
        request_id=ctx.rid, time=now, key_id=ctx.key_id, endpoint=ctx.endpoint,
        model=req.model if req else None, policy=run.policy if run else None,
        policy_version=run.version if run else None,
        stream=req.stream if req else None, status=status, error=error,
        error_code=error_code, question=req.question if req else None,
        query_id=ctx.query_id, workflow=render(run.workflow) if run else None,
        trace=trace, answer=run.trace.answer if run else None,
        cost=u.cost if u else (ctx.cost or 0.0),
        input_tokens=u.input_tokens if u else 0,
        output_tokens=u.output_tokens if u else 0,
        orchestration_input_tokens=u.orchestration_input_tokens if u else 0,
        orchestration_output_tokens=u.orchestration_output_tokens if u else 0,
        latency_s=time.perf_counter() - ctx.t0)
