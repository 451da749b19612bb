"""The ports the gateway talks through, as protocols (the Ray shell and the tests each supply
their own), and `PlannerClient`: the conductor as `RecursivePool` sees it, so that nested
(recursive) plans go through the policy host too. Pure: no Ray.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ray_conductor.serve.policies import PlanReply, PlanRequest


class PlannerPort(Protocol):
    """Where the gateway plans (`serve.host.PolicyHost`)."""

    async def plan(self, req: PlanRequest) -> PlanReply: ...

    async def run(self, req: PlanRequest, pool: Any, *, query_id: str | None,
                  answer_format: str | None, params: dict[str, Any]) -> tuple[Any, Any]: ...

    async def describe(self) -> dict[str, dict[str, Any]]: ...


class LimitsPort(Protocol):
    """The per-key limits (`serve.limits.KeyLimiter` in its actor)."""

    async def reserve(self, key_id: str, dollars: float
                      ) -> tuple[str | None, str | None, float]: ...

    async def check(self, key_id: str) -> tuple[str | None, float]: ...

    def settle(self, key_id: str, ticket: str | None, dollars: float) -> None: ...


class TrafficSink(Protocol):
    def append(self, row: dict[str, Any]) -> None: ...

    async def feedback(self, request_id: str, key_id: str | None, reward: float | None,
                       label: str | None) -> str | None: ...


class PlannerClient:
    """The conductor as `RecursivePool` sees it (`cfg`, a blocking `plan`): nested plans go
    to the planner, on the policy version the request started on. `RecursivePool` calls
    `plan` from a worker thread; the call runs on the ingress's event loop."""

    def __init__(self, planner: PlannerPort, reply: PlanReply, loop: asyncio.AbstractEventLoop,
                 timeout_s: float = 300.0):
        self.planner, self.reply, self.loop, self.timeout_s = planner, reply, loop, timeout_s
        self.cfg = type("Cfg", (), {"recursion_depth": reply.recursion_depth,
                                    "self_name": reply.self_name})()
        self.input_tokens = self.output_tokens = 0

    def plan(self, question: str, workers: Any, *, previous: str | None = None, **_: Any) -> Any:
        from ray_conductor.policy.conductor import PlanResult

        req = PlanRequest(self.reply.model, question, list(workers), previous, self.reply.version)
        got = asyncio.run_coroutine_threadsafe(self.planner.plan(req), self.loop).result(
            self.timeout_s)
        self.input_tokens += got.input_tokens
        self.output_tokens += got.output_tokens
        return PlanResult(question, got.workflow, texts=[got.text], n_attempts=got.attempts,
                          fell_back=got.fell_back, errors=list(got.errors))
