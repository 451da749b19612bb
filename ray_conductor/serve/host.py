"""`PolicyHost`: the served policies where the ingress plans. A policy that plans in
microseconds to milliseconds (kNN, lite, a pinned or scripted workflow, the baselines) is
loaded in the ingress replica and called there: no hop to another deployment. An LM
conductor is a `RemotePolicy`: its plans come from the planner deployment, which batches them
on its CPUs or GPU. Pure: no Ray (the planner deployment arrives as a port).

Planning that may block (the kNN router meeting a new question: one encoder call) runs off
the event loop, in batches: requests that arrive within `batch_wait_s` are encoded together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ray_conductor.errors import ConfigError
from ray_conductor.serve.policies import PlanReply, PlanRequest, PolicySet, policy_kind


class RemotePlanner(Protocol):
    """The planner deployment, as the host sees it."""

    async def plan(self, req: PlanRequest) -> PlanReply: ...

    async def describe(self) -> dict[str, dict[str, Any]]: ...


class RemotePolicy:
    """An LM conductor served by the planner deployment (which loaded the same reference)."""

    interactive = False
    recursion_depth = 0  # the planner's reply says
    max_calls = 0

    def __init__(self, ref: str, planner: RemotePlanner):
        self.ref, self.planner, self.version = ref, planner, f"planner:{ref}"

    def blocking(self, question: str) -> bool:
        return True


class PolicyHost:
    """`update` (a hot-swap) loads what changed and swaps the set in one assignment;
    `plan`, `run` (an interactive policy, over the pool it is given) and `describe` serve
    requests on the version they started on."""

    def __init__(self, load_local: Callable[[str], Any], planner: RemotePlanner | None = None,
                 batch_size: int = 16, batch_wait_s: float = 0.005):
        self._load_local, self.planner = load_local, planner
        self.policies = PolicySet(self._load)
        self.batch_size, self.batch_wait_s = batch_size, batch_wait_s
        self._pending: list[tuple[PlanRequest, asyncio.Future[PlanReply]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.batches: list[int] = []  # sizes of the last blocking planning batches

    def _load(self, ref: str) -> Any:
        if policy_kind(ref) == "local":
            return self._load_local(ref)
        if self.planner is None:
            raise ConfigError(f"policy {ref!r} is an LM conductor, which plans in the planner "
                              "deployment, and this app was started without one: restart "
                              "serve with the LM policy among its policies")
        return RemotePolicy(ref, self.planner)

    def update(self, refs: Mapping[str, str]) -> dict[str, str]:
        return self.policies.update(refs)

    def remote_refs(self, refs: Mapping[str, str]) -> dict[str, str]:
        """The part of `refs` the planner deployment serves."""
        return {n: r for n, r in refs.items() if policy_kind(r) == "lm"}

    async def plan(self, req: PlanRequest) -> PlanReply:
        try:
            policy = self.policies.get(req.model, req.version)
        except ConfigError:  # removed by a swap since the gateway looked
            return PlanReply(req.model, "", None, errors=["unknown_model"])
        if isinstance(policy, RemotePolicy):
            return await policy.planner.plan(req)
        if not policy.blocking(req.question):
            return policy.plan([req])[0]
        fut: asyncio.Future[PlanReply] = asyncio.get_running_loop().create_future()
        self._pending.append((req, fut))
        if len(self._pending) >= self.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.batch_wait_s, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self.batches = (self.batches + [len(batch)])[-1000:]
            asyncio.ensure_future(self._plan_batch(batch))

    async def _plan_batch(self, batch: list[tuple[PlanRequest, asyncio.Future[PlanReply]]]
                          ) -> None:
        try:
            replies = await asyncio.to_thread(self.policies.plan, [r for r, _ in batch])
        except Exception as e:  # each waiting request gets the error, none hangs
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), reply in zip(batch, replies):
            if not fut.done():
                fut.set_result(reply)

    async def run(self, req: PlanRequest, pool: Any, *, query_id: str | None,
                  answer_format: str | None, params: dict[str, Any]) -> tuple[Any, Any]:
        """An interactive policy's run over `pool`, on the version the request started on."""
        policy = self.policies.get(req.model, req.version)
        return await policy.run(req.question, pool, query_id=query_id,
                                answer_format=answer_format, params=params)

    async def describe(self) -> dict[str, dict[str, Any]]:
        """Name -> {policy, policy_version, kind, ...}; an LM conductor as the planner
        deployment serves it."""
        out = self.policies.describe()
        remote = [n for n, d in out.items() if str(d["policy_version"]).startswith("planner:")]
        if remote and self.planner is not None:
            there = await self.planner.describe()
            for n in remote:
                if n in there:
                    out[n] = {**there[n], "where": "planner"}
        return out
