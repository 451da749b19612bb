"""`RayWorkerPool`: the executor's `WorkerPool` over the `WorkerProxy` actors, and the one
factory that serving and training both call to get it.

Each pool instance has a priority: the Serve app's pool says `serve`, the trainer's rollouts
say `rollout`, and the shared proxies admit serve calls first. Imports neither litellm nor
torch: prices and descriptions come from the actors.
"""

from __future__ import annotations

from typing import Any, Sequence

from ray.exceptions import RayError

from ray_conductor.errors import ConfigError, PoolError
from ray_conductor.graph import build_worker_proxies, fan_out
from ray_conductor.workers.base import Completion, Message, WorkerInfo, failed
from ray_conductor.workers.ratelimit import PRIORITIES


class RayWorkerPool:
    """Workers in config order; `complete` awaits the named proxy actor."""

    def __init__(self, handles: dict[str, Any], infos: Sequence[WorkerInfo],
                 priority: str = "serve"):
        if priority not in PRIORITIES:
            raise ConfigError(f"priority {priority!r} is not one of {PRIORITIES}")
        self._handles, self._infos, self.priority = dict(handles), list(infos), priority

    def workers(self) -> Sequence[WorkerInfo]:
        return list(self._infos)

    def with_priority(self, priority: str) -> "RayWorkerPool":
        """The same proxies, called at another priority."""
        return RayWorkerPool(self._handles, self._infos, priority)

    async def complete(self, worker: str, messages: list[Message], **params: Any) -> Completion:
        handle = self._handles.get(worker)
        if handle is None:
            raise PoolError(f"unknown worker {worker!r}; this pool has {sorted(self._handles)}",
                            code="unknown_worker")
        params.setdefault("priority", self.priority)
        try:
            return await handle.complete.remote(messages, **params)
        except RayError as e:  # the proxy is gone: a worker failure, not the caller's bug
            return failed(worker, f"worker proxy {worker!r} is unreachable: "
                          f"{type(e).__name__}", code="proxy_unreachable")

    def stats(self, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
        return fan_out(self._handles, "stats", timeout_s=timeout_s)


def create_worker_proxies(cfg: Any, namespace: str | None = None) -> dict[str, Any]:
    """Create or get the proxies of `cfg` (a `WorkerPoolConfig`, DictConfig or dict)."""
    return build_worker_proxies(cfg, namespace)


def make_ray_pool(cfg: Any, priority: str = "serve", namespace: str | None = None
                  ) -> RayWorkerPool:
    """The pool serving (`serve`) and training (`rollout`) both run their workflows on."""
    handles = create_worker_proxies(cfg, namespace)
    infos = fan_out(handles, "info")
    return RayWorkerPool(handles, [infos[name] for name in handles], priority)
