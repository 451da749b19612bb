"""`WorkerProxy`: the Ray actor around one `WorkerProxyCore`. One per configured worker, named
in a namespace, so the Serve app, evaluation and the trainer all call the same actor and its
rate limit holds across every caller in the cluster.

A thin shell: it registers litellm's custom providers in its own process, resolves fallback
names to other proxies, and exports the core's accounting as Ray (Prometheus) metrics.
Built only by `ray_conductor.graph`. Must not import torch.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util import metrics

from ray_conductor.workers.accounting import CallRecord
from ray_conductor.workers.base import Completion, Message, WorkerInfo
from ray_conductor.workers.config import WorkerConfig
from ray_conductor.workers.proxy import WorkerProxyCore

_SECONDS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]


class _RayMetrics:
    """The accounting of `WorkerStats`, as Prometheus series tagged by worker."""

    def __init__(self, worker: str):
        self.tags, keys = {"worker": worker}, ("worker",)
        self.counters = {f: metrics.Counter(f"conductor_worker_{f}", f"worker proxy {f}", keys)
                         for f in ("calls", "failures", "retries", "input_tokens",
                                   "output_tokens", "dollars", "cache_hits", "fallbacks")}
        self.queue_wait = metrics.Histogram("conductor_worker_queue_wait_seconds",
                                            "time in the rate limiter's queue", _SECONDS, keys)
        self.latency = metrics.Histogram("conductor_worker_latency_seconds",
                                         "call latency, retries and fallbacks included",
                                         _SECONDS, keys)

    def record(self, r: CallRecord) -> None:
        values = {"calls": 1, "failures": not r.ok, "retries": r.retries,
                  "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                  "dollars": r.cost, "cache_hits": r.cached, "fallbacks": r.fallback}
        for name, v in values.items():
            if v > 0:  # Ray counters refuse zero increments
                self.counters[name].inc(float(v), tags=self.tags)
        self.queue_wait.observe(r.queue_wait_s, tags=self.tags)
        self.latency.observe(r.latency_s, tags=self.tags)


@ray.remote
class WorkerProxy:
    """Async actor: `complete` runs many calls at once; the core's limiter queues them."""

    def __init__(self, cfg: WorkerConfig, namespace: str, replay_spec: str | None = None,
                 queue_timeout_s: float = 300.0):
        from ray_conductor.workers import providers  # imports litellm in this process

        providers.register(default_spec=replay_spec)
        self._namespace = namespace
        self._fallbacks: dict[str, Any] = {}
        self._warm = False
        self._metrics = _RayMetrics(cfg.name)
        self.core = WorkerProxyCore(cfg, fallback=self._call_fallback,
                                    observer=self._metrics.record,
                                    queue_timeout_s=queue_timeout_s, default_api_base=replay_spec)

    async def complete(self, messages: list[Message], **params: Any) -> Completion:
        return await self.core.complete(messages, **params)

    def stats(self) -> dict[str, Any]:
        return self.core.stats()

    def info(self) -> WorkerInfo:
        return self.core.info()

    async def ready(self) -> str:
        """Warm litellm up once (the factory waits for this), then report the worker's name."""
        if not self._warm:
            await self.core.warm_up()
            self._warm = True
        return self.core.cfg.name

    async def _call_fallback(self, name: str, messages: list[Message],
                             params: dict[str, Any]) -> Completion:
        from ray_conductor.graph import actor_name

        if name not in self._fallbacks:
            self._fallbacks[name] = ray.get_actor(actor_name("worker_proxy", name),
                                                  namespace=self._namespace)
        return await self._fallbacks[name].complete.remote(messages, **params)
