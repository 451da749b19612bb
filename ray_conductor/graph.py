"""The actor graph: the one place that declares which Ray actors exist, under which names,
with which resources, and builds them. Serving, evaluation and training all build from here,
so they share the same named actors (and so the same rate limits).

A role names its actor class as "module:Class" and is imported only when built, so reading
this file imports neither torch nor litellm. Roles of the trainer (rollout, learner) belong
here beside `worker_proxy`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import ray

from ray_conductor.workers.config import WorkerPoolConfig, as_pool_config


@dataclass(frozen=True)
class Role:
    """A kind of actor: its class, the resources of one instance, its call concurrency."""

    actor: str  # "module:Class" of a @ray.remote class
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    max_concurrency: int = 1

    def actor_class(self) -> Any:
        module, cls = self.actor.split(":")
        return getattr(importlib.import_module(module), cls)


ROLES: dict[str, Role] = {
    # IO-bound: takes no CPU from the cluster, runs up to 1000 calls at once
    "worker_proxy": Role("ray_conductor.workers.actor:WorkerProxy", num_cpus=0,
                         max_concurrency=1000),
}


def actor_name(role: str, key: str) -> str:
    """The Ray name of the `key` instance of `role`, e.g. `worker_proxy/gpt-4o`."""
    return f"{role}/{key}"


def build_actor(role: str, key: str, *args: Any, namespace: str, detached: bool = False) -> Any:
    """Create the named actor, or get it if some other caller already did."""
    r = ROLES[role]
    return r.actor_class().options(
        name=actor_name(role, key), namespace=namespace, get_if_exists=True,
        lifetime="detached" if detached else None, num_cpus=r.num_cpus, num_gpus=r.num_gpus,
        max_concurrency=r.max_concurrency).remote(*args)


def fan_out(handles: dict[str, Any], method: str, *args: Any, timeout_s: float = 60.0,
            **kw: Any) -> dict[str, Any]:
    """Call `method` on every actor and wait for all the answers, by name."""
    refs = {k: getattr(h, method).remote(*args, **kw) for k, h in handles.items()}
    return dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s)))


def build_worker_proxies(cfg: WorkerPoolConfig | Any, namespace: str | None = None,
                         timeout_s: float = 120.0) -> dict[str, Any]:
    """One `WorkerProxy` per configured worker, named in the namespace; returns handles by
    worker name once all are ready. An existing proxy of the same name is reused as it is
    (its config is the one it was created with)."""
    pool = as_pool_config(cfg)
    ns = namespace or pool.namespace
    handles = {w.name: build_actor("worker_proxy", w.name, w, ns, pool.replay,
                                   pool.queue_timeout_s, namespace=ns, detached=pool.detached)
               for w in pool.workers}
    fan_out(handles, "ready", timeout_s=timeout_s)
    return handles
