"""Worker proxies, shared by every caller (serving, evaluation, training, online, record), and
the one worker-pool builder (`worker_pool`) every command runs its workflows on."""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import ray

from ray_conductor.data.pools import replay_pool
from ray_conductor.errors import ConfigError
from ray_conductor.graph.spec import PROXY_ROLE, GraphSpec, fan_out
from ray_conductor.workers.config import (
    WorkerConfig, WorkerPoolConfig, as_pool_config, fingerprint)
from ray_conductor.workers.ray_pool import RayWorkerPool

log = logging.getLogger(__name__)

def proxy_name(workers: Sequence[str]) -> str:
    """The Ray name of the proxy process hosting `workers`, e.g. `worker_proxy/gpt-4o` or
    `worker_proxy/a+b+c` for one process hosting three."""
    return f"{PROXY_ROLE}/" + "+".join(workers)


def proxy_groups(workers: Sequence[WorkerConfig], per_process: int) -> list[list[WorkerConfig]]:
    """Workers in config order, `per_process` to a proxy process."""
    return [list(workers[i : i + per_process]) for i in range(0, len(workers), per_process)]


def running_proxies(namespace: str) -> dict[str, str]:
    """worker name -> Ray name of the live proxy hosting it, in `namespace`."""
    out: dict[str, str] = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        name = a["name"]
        if a["namespace"] == namespace and name.startswith(f"{PROXY_ROLE}/"):
            for w in name.split("/", 1)[1].split("+"):
                out[w] = name
    return out


def _check_grouping(groups: list[list[WorkerConfig]], running: dict[str, str],
                    namespace: str) -> None:
    """A worker hosted by a differently grouped proxy would get a second rate limit."""
    for g in groups:
        want = proxy_name([w.name for w in g])
        for w in g:
            have = running.get(w.name)
            if have is not None and have != want:
                raise ConfigError(
                    f"worker {w.name!r} is already served by proxy {have!r} in namespace "
                    f"{namespace!r}, grouped differently from {want!r}: a second proxy would "
                    f"double its rate limit. Use the same graph.workers_per_proxy and worker "
                    f"order, or stop the running proxies first (graph.stop_worker_proxies)")


def build_worker_proxies(spec: GraphSpec, cfg: WorkerPoolConfig | Any,
                         timeout_s: float = 180.0) -> dict[str, Any]:
    """worker name -> the handle of the named proxy process hosting it; created or reused.

    A running proxy is reused only if it was built from the same worker configs (compared by
    fingerprint); otherwise `ConfigError`, so one worker never has two differently configured
    limits."""
    pool = as_pool_config(cfg)
    ns = spec.namespace
    groups = proxy_groups(pool.workers, spec.workers_per_proxy)
    _check_grouping(groups, running_proxies(ns), ns)
    actor_of = {w.name: proxy_name([x.name for x in g]) for g in groups for w in g}
    prints = {w.name: fingerprint(w, pool.replay, pool.queue_timeout_s) for w in pool.workers}
    hosts: dict[str, Any] = {}
    for g in groups:
        name = proxy_name([w.name for w in g])
        fallback_actors = {fb: actor_of[fb] for w in g for fb in w.fallbacks}
        hosts[name] = spec.build(PROXY_ROLE, g, ns, pool.replay, pool.queue_timeout_s,
                                 fallback_actors, {w.name: prints[w.name] for w in g},
                                 replay_pool, name=name)
    seen = fan_out(hosts, "fingerprints", timeout_s=timeout_s)
    for name, got in seen.items():
        for w, fp in got.items():
            if fp != prints[w]:
                raise ConfigError(
                    f"proxy {name!r} in namespace {ns!r} runs worker {w!r} with another config "
                    f"(fingerprint {fp}, this config {prints[w]}): stop it first "
                    f"(graph.stop_worker_proxies) or use another ray.namespace")
    fan_out(hosts, "ready", timeout_s=timeout_s)
    return {w.name: hosts[actor_of[w.name]] for w in pool.workers}


def make_ray_pool(spec: GraphSpec, cfg: WorkerPoolConfig | Any, priority: str = "serve",
                  timeout_s: float = 180.0) -> RayWorkerPool:
    """The pool serving (`serve`), evaluation and training (`rollout`) run workflows on."""
    handles = build_worker_proxies(spec, cfg, timeout_s)
    infos: dict[str, Any] = {}
    for h in {id(h): h for h in handles.values()}.values():
        infos.update(ray.get(h.info.remote(), timeout=timeout_s))
    return RayWorkerPool(handles, [infos[w] for w in handles], priority)


def stop_worker_proxies(namespace: str, workers: Iterable[str] | None = None) -> list[str]:
    """Kill the named proxies (all in `namespace`, or those hosting `workers`); their names
    are free again. Returns the Ray names killed."""
    running = running_proxies(namespace)
    names = sorted({n for w, n in running.items() if workers is None or w in set(workers)})
    for n in names:
        try:
            ray.kill(ray.get_actor(n, namespace=namespace), no_restart=True)
        except ValueError:  # already gone
            pass
    return names


def worker_pool_config(cfg: Any, data: Any) -> WorkerPoolConfig:
    """The workers a command's proxies run: a worker YAML (`cfg.workers`: live providers), or
    replay workers over the command's pool (`cfg.pool`) with the recorded prices."""
    from ray_conductor.config import read_yaml
    from ray_conductor.workers.config import replay_workers

    if getattr(cfg, "workers", None):
        return as_pool_config(read_yaml(cfg.workers, "workers"))
    if data is None:
        raise ConfigError("no workers: give a worker YAML (workers=FILE) or a replay pool "
                          "(pool=demo)")
    return WorkerPoolConfig(workers=replay_workers(cfg.pool, data.worker_infos()),
                            replay=cfg.pool)


def worker_pool(cfg: Any, data: Any, priority: str = "serve", *, spec: GraphSpec | None = None,
                pool_cfg: WorkerPoolConfig | Any = None, timeout_s: float = 180.0) -> Any:
    """The one worker-pool builder: the pool a command runs workflows on, from its config
    (`backend`, `workers`, `pool`, `graph`, `ray.namespace`). backend=local: the replay pool
    `data` in this process; otherwise the shared proxies (`pool_cfg`, else
    `worker_pool_config(cfg, data)`) at `priority`. Ray must be running."""
    backend = getattr(cfg, "backend", "ray")
    if backend == "local":
        from ray_conductor.data.replay import ReplayPool

        return ReplayPool(data)
    if backend != "ray":
        raise ConfigError(f"backend={backend!r}: use local or ray")
    if spec is None:
        spec = GraphSpec.from_config(cfg.graph, cfg.ray.namespace)
    return make_ray_pool(spec, pool_cfg if pool_cfg is not None else
                         worker_pool_config(cfg, data), priority=priority, timeout_s=timeout_s)
