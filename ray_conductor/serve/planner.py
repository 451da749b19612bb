"""The planner deployment: hosts the served LM conductors and plans for them, with planning
requests batched by `@serve.batch` (one engine call plans a batch). Its resources are the
graph's `planner` role (CPU by default; `graph.planner.num_gpus` puts the LM on a GPU). Other
policies plan in the ingress (`serve.host`); an app that serves no LM conductor has no
planner deployment.

Hot-swap: Serve's `user_config` (`{"policies": {name: reference}}`, the LM ones among the
ingress's) reaches `reconfigure`, which loads what changed off the event loop and swaps the
live set in one assignment; the replica keeps running, and a request that already picked its
policy object finishes on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import Any

from ray import serve

from ray_conductor.serve.config import as_serve_config
from ray_conductor.serve.policies import (
    LoadContext,
    PlanReply,
    PlanRequest,
    PolicySet,
    load_policy,
)

log = logging.getLogger(__name__)


@serve.deployment(name="Planner")
class Planner:
    def __init__(self, settings: dict[str, Any]):
        cfg = as_serve_config(settings["config"])
        conductor = dict(cfg.conductor)
        if cfg.graph.planner.num_gpus > 0:
            conductor.setdefault("device", "cuda")
        ctx = LoadContext([], None, cfg.pool, cfg.knn_k, conductor, cfg.plan_temperature)
        self.policies = PolicySet(lambda ref: load_policy(ref, ctx))
        self.versions: dict[str, str] = {}
        self.swap_error: str | None = None
        self.batches: deque[int] = deque(maxlen=1000)  # sizes of the last planning batches
        self._plan.set_max_batch_size(cfg.plan_batch_size)
        self._plan.set_batch_wait_timeout_s(cfg.plan_batch_wait_s)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the LM policies `user_config` names and swap them in. A swap that fails to
        load keeps the live policies (and reports why in `whoami`); only a replica with no
        policy yet fails, so a bad first config is a failed deploy with the reason."""
        refs = dict(user_config.get("policies") or {})
        try:
            self.versions = await asyncio.to_thread(self.policies.update, refs, True)
            self.swap_error = None
            limit_threads()
        except Exception as e:  # a bad new version must not take the live ones down
            if not self.policies.names():
                raise
            self.swap_error = f"{refs}: {type(e).__name__}: {e}"
            log.error("policy swap refused, still serving %s: %s", self.versions, e)

    async def plan(self, req: PlanRequest) -> PlanReply:
        return await self._plan(req)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _plan(self, reqs: list[PlanRequest]) -> list[PlanReply]:
        self.batches.append(len(reqs))
        return await asyncio.to_thread(self.policies.plan, reqs)

    def describe(self) -> dict[str, dict[str, Any]]:
        return self.policies.describe()

    def whoami(self) -> dict[str, Any]:
        ctx = serve.get_replica_context()
        return {"pid": os.getpid(), "replica": ctx.replica_id.unique_id,
                "versions": dict(self.versions), "swap_error": self.swap_error,
                "batches": len(self.batches), "max_batch": max(self.batches, default=0)}


def limit_threads() -> None:
    """torch on the CPUs this replica was given (`graph.planner.num_cpus`, or its
    `torch_threads`), set after loading: an encoder that loads sets every core, and on a busy
    machine two spinning threads made one question's embedding 20x slower than one thread."""
    import sys

    if "torch" in sys.modules:
        from ray_conductor.runtime import limit_torch_threads

        limit_torch_threads()
