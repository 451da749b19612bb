"""`WorkerProxy`: the Ray actor around one or more `WorkerProxyCore`s. Each configured worker
lives in exactly one named proxy process, so the Serve app, evaluation and the trainer all
call the same limiter and its rate limit holds across every caller in the cluster. `stream`
relays a call's text as the provider produces it, as a Ray streaming generator.

A thin shell: it registers litellm's custom providers in its own process, routes each call to
its worker's core, calls fallbacks by the actor names it was given (it never looks the graph
up itself), reports the fingerprint of the config it was built from, and exports the cores'
accounting as Ray (Prometheus) metrics. Built only by `ray_conductor.graph`. Must not import
torch or the graph.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, AsyncIterator, Callable

import ray
from ray.util import metrics

from ray_conductor.errors import PoolError
from ray_conductor.workers.accounting import CallRecord
from ray_conductor.workers.base import Completion, Message, WorkerInfo
from ray_conductor.workers.config import WorkerConfig
from ray_conductor.workers.proxy import WorkerProxyCore

_SECONDS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
_COUNTERS = ("calls", "failures", "retries", "input_tokens", "output_tokens", "dollars",
             "cache_hits", "fallbacks")


@lru_cache(maxsize=1)
def _series() -> tuple[dict[str, Any], Any, Any]:
    """The Prometheus series, created once per process and tagged by worker."""
    keys = ("worker",)
    counters = {f: metrics.Counter(f"conductor_worker_{f}", f"worker proxy {f}", keys)
                for f in _COUNTERS}
    wait = metrics.Histogram("conductor_worker_queue_wait_seconds",
                             "time in the rate limiter's queue", _SECONDS, keys)
    latency = metrics.Histogram("conductor_worker_latency_seconds",
                                "call latency, retries and fallbacks included", _SECONDS, keys)
    return counters, wait, latency


def _observer(worker: str):
    tags = {"worker": worker}

    def record(r: CallRecord) -> None:
        counters, wait, latency = _series()
        values = {"calls": 1, "failures": not r.ok, "retries": r.retries,
                  "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                  "dollars": r.cost, "cache_hits": r.cached, "fallbacks": r.fallback}
        for name, v in values.items():
            if v > 0:  # Ray counters refuse zero increments
                counters[name].inc(float(v), tags=tags)
        wait.observe(r.queue_wait_s, tags=tags)
        latency.observe(r.latency_s, tags=tags)

    return record


@ray.remote
class WorkerProxy:
    """Async actor: `complete` runs many calls at once; each worker's limiter queues them.

    `fallback_actors` maps a fallback worker's name to the Ray name of the proxy hosting it;
    `fingerprints` are what the graph computed from each worker's config; `replay_loader`
    opens a recorded pool for `replay/` workers (injected: workers do not import data)."""

    def __init__(self, cfgs: list[WorkerConfig], namespace: str, replay_spec: str | None = None,
                 queue_timeout_s: float = 300.0, fallback_actors: dict[str, str] | None = None,
                 fingerprints: dict[str, str] | None = None,
                 replay_loader: Callable[[str], Any] | None = None):
        from ray_conductor.workers import providers  # imports litellm in this process

        providers.register(default_spec=replay_spec, loader=replay_loader)
        self._namespace = namespace
        self._fallback_actors = dict(fallback_actors or {})
        self._fingerprints = dict(fingerprints or {})
        self._remote: dict[str, Any] = {}
        self._warm = False
        self.cores = {
            c.name: WorkerProxyCore(c, fallback=self._call_fallback, observer=_observer(c.name),
                                    queue_timeout_s=queue_timeout_s,
                                    default_api_base=replay_spec)
            for c in cfgs}

    def _core(self, worker: str) -> WorkerProxyCore:
        core = self.cores.get(worker)
        if core is None:
            raise PoolError(f"this proxy hosts {sorted(self.cores)}, not {worker!r}",
                            code="unknown_worker")
        return core

    async def complete(self, worker: str, messages: list[Message], **params: Any) -> Completion:
        return await self._core(worker).complete(messages, **params)

    async def stream(self, worker: str, messages: list[Message], **params: Any
                     ) -> AsyncIterator[str | Completion]:
        """A Ray streaming generator: the answer's text as it arrives, then the
        `Completion`. Cancelling the generator cancels the call."""
        async for item in self._core(worker).stream(messages, **params):
            yield item

    def stats(self) -> dict[str, dict[str, Any]]:
        return {w: core.stats() for w, core in self.cores.items()}

    def info(self) -> dict[str, WorkerInfo]:
        return {w: core.info() for w, core in self.cores.items()}

    def fingerprints(self) -> dict[str, str]:
        return dict(self._fingerprints)

    def pid(self) -> int:
        return os.getpid()

    async def ready(self) -> list[str]:
        """Warm litellm up once (the graph waits for this), then name the hosted workers."""
        if not self._warm:
            for core in self.cores.values():
                await core.warm_up()
            self._warm = True
        return list(self.cores)

    async def _call_fallback(self, name: str, messages: list[Message],
                             params: dict[str, Any]) -> Completion:
        if name in self.cores:  # hosted here: no hop through Ray
            return await self.cores[name].complete(messages, **params)
        if name not in self._remote:
            actor = self._fallback_actors.get(name)
            if actor is None:
                raise PoolError(f"no proxy is known for fallback worker {name!r}",
                                code="unknown_worker")
            self._remote[name] = ray.get_actor(actor, namespace=self._namespace)
        return await self._remote[name].complete.remote(name, messages, **params)
