"""`RayWorkerPool`: the executor's `WorkerPool` over the named `WorkerProxy` actors (`stream`
relays a call's text as it arrives, through the proxy's streaming generator).

Each pool instance has a priority: the Serve app's pool says `serve`, the trainer's rollouts
say `rollout`, and the shared proxies admit serve calls first. The pool holds handles only,
so it pickles into other actors without any lookup there; `ray_conductor.graph` builds it.
Imports neither litellm nor torch: prices and descriptions come from the actors.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Sequence

import ray
from ray.exceptions import RayError

from ray_conductor.errors import ConfigError, PoolError
from ray_conductor.workers.base import Completion, Message, WorkerInfo, failed
from ray_conductor.workers.ratelimit import PRIORITIES


class RayWorkerPool:
    """Workers in config order; `complete` awaits the proxy process hosting the worker."""

    def __init__(self, handles: dict[str, Any], infos: Sequence[WorkerInfo],
                 priority: str = "serve"):
        if priority not in PRIORITIES:
            raise ConfigError(f"priority {priority!r} is not one of {PRIORITIES}")
        self._handles, self._infos, self.priority = dict(handles), list(infos), priority

    def workers(self) -> Sequence[WorkerInfo]:
        return list(self._infos)

    def handle(self, worker: str) -> Any:
        """The actor handle of the proxy process hosting `worker`."""
        h = self._handles.get(worker)
        if h is None:
            raise PoolError(f"unknown worker {worker!r}; this pool has {sorted(self._handles)}",
                            code="unknown_worker")
        return h

    def with_priority(self, priority: str) -> "RayWorkerPool":
        """The same proxies, called at another priority."""
        return RayWorkerPool(self._handles, self._infos, priority)

    async def complete(self, worker: str, messages: list[Message], **params: Any) -> Completion:
        """The proxy's answer. A caller that is cancelled (a client disconnected, a deadline
        passed) cancels the call in the proxy too, so it leaves the worker's queue or its
        in-flight slot at once instead of running for nobody."""
        handle = self.handle(worker)
        params.setdefault("priority", self.priority)
        ref = handle.complete.remote(worker, messages, **params)
        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)
            raise
        except RayError as e:  # the proxy is gone for good: a worker failure, not a bug
            return failed(worker, f"worker proxy of {worker!r} is unreachable: "
                          f"{type(e).__name__}", code="proxy_unreachable")

    async def stream(self, worker: str, messages: list[Message], **params: Any
                     ) -> AsyncIterator[str | Completion]:
        """The proxy's `stream`: text as the provider produces it, then the `Completion`.
        Closing this iterator (a client that went away) cancels the call in the proxy."""
        handle = self.handle(worker)
        params.setdefault("priority", self.priority)
        gen = handle.stream.options(num_returns="streaming").remote(worker, messages, **params)
        finished = False
        try:
            async for ref in gen:
                item = await ref
                finished = isinstance(item, Completion)
                yield item
        except RayError as e:  # the proxy died mid-call: a worker failure, not a bug
            finished = True
            yield failed(worker, f"worker proxy of {worker!r} is unreachable: "
                         f"{type(e).__name__}", code="proxy_unreachable")
        finally:
            if not finished:
                ray.cancel(gen)

    def stats(self, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
        """Per worker: calls, tokens, dollars, queue waits, limiter and breaker state."""
        hosts = {id(h): h for h in self._handles.values()}
        out: dict[str, dict[str, Any]] = {}
        for part in ray.get([h.stats.remote() for h in hosts.values()], timeout=timeout_s):
            out.update(part)
        return {w: out[w] for w in self._handles}
