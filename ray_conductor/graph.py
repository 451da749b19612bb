"""The actor graph: the one declaration of which Ray actors exist, under which names, with
which resources and restart policy. Evaluation, training, serving and online retraining all
build from a `GraphSpec`, so they drive the same named actors (and so the same rate limits).

A role names its actor class as "module:Class", imported only when built, so reading this
file imports neither torch nor litellm. Builders for the trainer's roles live beside their
actors (`rl.rollout_group`, `rl.learner_group`) and read their `ActorSpec` from here; worker
proxies are built here because every caller shares them.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

import ray

from ray_conductor.data.pools import replay_pool
from ray_conductor.errors import ConfigError
from ray_conductor.workers.config import (
    WorkerConfig, WorkerPoolConfig, as_pool_config, fingerprint)
from ray_conductor.workers.ray_pool import RayWorkerPool

log = logging.getLogger(__name__)

PROXY_ROLE = "worker_proxy"


# -- the declaration, as typed config ----------------------------------------------------------


@dataclass
class RoleConfig:
    """Resources and restart policy of one role; `count` instances of it."""

    num_cpus: float = field(default=1.0, metadata={"help": "CPUs per instance", "min": 0})
    num_gpus: float = field(default=0.0, metadata={"help": "GPUs per instance", "min": 0})
    count: int = field(default=1, metadata={"help": "instances", "min": 1})
    max_concurrency: int = field(default=1, metadata={"help": "calls one instance runs at once",
                                                      "min": 1})
    max_restarts: int = field(default=0, metadata={  # -1: restart forever
        "help": "restarts after a crash (-1: forever)", "min": -1})
    max_task_retries: int = field(default=0, metadata={  # calls in flight when it died
        "help": "times a call in flight when the actor died is re-run (-1: forever)", "min": -1})
    torch_threads: int = field(default=0, metadata={  # roles that take turns may use more
        "help": "torch threads (0: the CPUs Ray assigned)", "min": 0})
    resources: dict[str, float] = field(default_factory=dict, metadata={
        "help": "custom Ray resources per instance, e.g. {proxy: 1}"})


def _proxy_role() -> RoleConfig:
    # IO-bound: takes no CPU from the cluster, runs up to 1000 calls at once, comes back
    # under its name when killed (the OOM killer), and re-runs the calls that were in flight
    return RoleConfig(num_cpus=0, max_concurrency=1000, max_restarts=-1, max_task_retries=3)


@dataclass
class GraphConfig:
    """Every role of the system. `detached_proxies`: worker proxies outlive the driver that
    created them (a training job that exits leaves serving's proxies alone).
    `workers_per_proxy`: how many workers one proxy process hosts (each process imports litellm
    and its replay data: ~540 MB; 12 workers cost 616 MB in one process, 6.5 GB in twelve);
    each worker keeps its own limiter, breaker and accounting. Commands that share proxies
    must group them alike (the same value, the same worker order): a worker is never hosted
    twice."""

    worker_proxy: RoleConfig = field(default_factory=_proxy_role)
    detached_proxies: bool = field(default=True, metadata={
        "help": "worker proxies outlive the driver that created them"})
    workers_per_proxy: int = field(default=16, metadata={
        "help": "workers hosted by one proxy process (each process imports litellm)",
        "min": 1})
    rollout: RoleConfig = field(default_factory=lambda: RoleConfig(max_concurrency=4))
    learner: RoleConfig = field(default_factory=RoleConfig)
    planner: RoleConfig = field(default_factory=lambda: RoleConfig(max_concurrency=16))


ACTOR_CLASSES: dict[str, str | None] = {
    PROXY_ROLE: "ray_conductor.workers.actor:WorkerProxy",
    "rollout": "ray_conductor.rl.rollout:RolloutActor",
    "learner": "ray_conductor.rl.learner_group:LearnerActor",
    "planner": None,  # a Serve deployment: `serve` reads its resources from the spec
}


@dataclass(frozen=True)
class ActorSpec:
    """One role as built: its class, the resources of one instance, how many, restarts."""

    role: str
    actor: str | None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    count: int = 1
    max_concurrency: int = 1
    max_restarts: int = 0
    max_task_retries: int = 0
    torch_threads: int = 0
    resources: tuple[tuple[str, float], ...] = ()
    detached: bool = False

    def actor_class(self) -> Any:
        if not self.actor:
            raise ConfigError(f"role {self.role!r} is not a Ray actor")
        module, cls = self.actor.split(":")
        return getattr(importlib.import_module(module), cls)

    def options(self, *, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        """`.options(...)` for one instance (named ones are get-or-create)."""
        from ray_conductor.runtime import TORCH_THREADS_ENV

        opts: dict[str, Any] = {
            "num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
            "max_concurrency": self.max_concurrency, "max_restarts": self.max_restarts,
            "max_task_retries": self.max_task_retries}
        if self.resources:
            opts["resources"] = dict(self.resources)
        if namespace:
            opts["namespace"] = namespace
        if name:
            opts.update(name=name, get_if_exists=True)
        if self.detached:
            opts["lifetime"] = "detached"
        if self.torch_threads > 0:
            opts["runtime_env"] = {"env_vars": {TORCH_THREADS_ENV: str(self.torch_threads)}}
        return opts

    def ray_resources(self) -> dict[str, float]:
        """What one instance reserves on a node, for `serve` deployments."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, **dict(self.resources)}


@dataclass(frozen=True)
class GraphSpec:
    """The whole graph: every role's `ActorSpec`, and the namespace actors are named in."""

    namespace: str
    roles: Mapping[str, ActorSpec]
    workers_per_proxy: int = 1

    @classmethod
    def from_config(cls, cfg: GraphConfig | Any | None = None,
                    namespace: str = "ray_conductor") -> "GraphSpec":
        cfg = cfg if cfg is not None else GraphConfig()
        roles = {}
        for role, actor in ACTOR_CLASSES.items():
            rc = getattr(cfg, role)
            kw = {f.name: getattr(rc, f.name) for f in fields(RoleConfig)}
            kw["resources"] = tuple(sorted(dict(kw["resources"] or {}).items()))
            roles[role] = ActorSpec(role, actor, detached=role == PROXY_ROLE and bool(
                cfg.detached_proxies), **kw)
        spec = cls(namespace, roles, int(cfg.workers_per_proxy))
        spec.validate()
        return spec

    def role(self, name: str) -> ActorSpec:
        if name not in self.roles:
            raise ConfigError(f"unknown role {name!r}; the graph has {sorted(self.roles)}")
        return self.roles[name]

    def validate(self) -> None:
        """Ranges, before anything is built."""
        if self.workers_per_proxy < 1:
            raise ConfigError(f"graph.workers_per_proxy={self.workers_per_proxy}: use 1 or more")
        for r in self.roles.values():
            where = f"graph.{r.role}"
            if r.num_cpus < 0 or r.num_gpus < 0 or r.count < 1 or r.max_concurrency < 1:
                raise ConfigError(f"{where}: num_cpus and num_gpus must be >= 0, count and "
                                  f"max_concurrency >= 1 (got {r.num_cpus}, {r.num_gpus}, "
                                  f"{r.count}, {r.max_concurrency})")
            if r.max_restarts < -1 or r.max_task_retries < -1:
                raise ConfigError(f"{where}: max_restarts and max_task_retries are -1 (forever) "
                                  "or >= 0")

    def check_resources(self, roles: Iterable[str]) -> None:
        """Refuse, with a `ConfigError`, roles that ask for GPUs a cluster without any GPU
        cannot give (their actors would wait forever); warn when a cluster has fewer than
        asked (an autoscaler may still add them)."""
        have = ray.cluster_resources()
        gpus = float(have.get("GPU", 0.0))
        for name in roles:
            r = self.role(name)
            need = r.num_gpus * r.count
            if need > 0 and gpus == 0:
                raise ConfigError(
                    f"graph.{name} asks for {r.num_gpus:g} GPU(s) x {r.count}, but this Ray "
                    f"cluster has no GPU: set graph.{name}.num_gpus=0 to run it on CPUs, or "
                    f"join a GPU cluster (ray.address=...)")
            if need > gpus:
                log.warning("graph.%s asks for %g GPUs in all; the cluster has %g now",
                            name, need, gpus)

    def build(self, role: str, *args: Any, name: str | None = None, **kw: Any) -> Any:
        """One instance of `role` (named ones: get-or-create in the namespace)."""
        spec = self.role(role)
        return spec.actor_class().options(**spec.options(
            name=name, namespace=self.namespace)).remote(*args, **kw)


def fan_out(handles: Mapping[str, Any] | Sequence[Any], method: str, *args: Any,
            timeout_s: float | None = 120.0, **kw: Any) -> Any:
    """Call `method` on every actor and wait for all the answers (a dict by key for a
    mapping, a list for a sequence)."""
    if isinstance(handles, Mapping):
        refs = {k: getattr(h, method).remote(*args, **kw) for k, h in handles.items()}
        return dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s)))
    return ray.get([getattr(h, method).remote(*args, **kw) for h in handles], timeout=timeout_s)


# -- worker proxies ----------------------------------------------------------------------------


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
    ns, role = spec.namespace, spec.role(PROXY_ROLE)
    groups = proxy_groups(pool.workers, spec.workers_per_proxy)
    _check_grouping(groups, running_proxies(ns), ns)
    actor_of = {w.name: proxy_name([x.name for x in g]) for g in groups for w in g}
    prints = {w.name: fingerprint(w, pool.replay, pool.queue_timeout_s) for w in pool.workers}
    hosts: dict[str, Any] = {}
    cls = role.actor_class()
    for g in groups:
        name = proxy_name([w.name for w in g])
        fallback_actors = {fb: actor_of[fb] for w in g for fb in w.fallbacks}
        hosts[name] = cls.options(**role.options(name=name, namespace=ns)).remote(
            g, ns, pool.replay, pool.queue_timeout_s, fallback_actors,
            {w.name: prints[w.name] for w in g}, replay_pool)
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
