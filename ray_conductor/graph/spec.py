"""The declaration: every role of the system (`GraphConfig`, typed config), and each role as
built (`ActorSpec`: class, resources of one instance, count, restart policy, name) in one
`GraphSpec`. Serving, evaluation, training, online retraining and the lite tier's RLlib all
read their actors from here; `GraphSpec.build` is the one place an actor class is
instantiated.

A role names its actor class as "module:Class", imported only when built, so reading this
file imports neither torch nor litellm, and the graph imports no package above it.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

import ray

from ray_conductor.errors import ConfigError

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


@dataclass
class RLlibRoleConfig(RoleConfig):
    """An RLlib role (env runners, learners): RLlib builds them from these settings, and a
    count of 0 runs the role in the driver's process."""

    count: int = field(default=0, metadata={"help": "instances (0: in the driver's process)",
                                            "min": 0})


def _proxy_role() -> RoleConfig:
    # IO-bound: takes no CPU from the cluster, runs up to 1000 calls at once, comes back
    # under its name when killed (the OOM killer), and re-runs the calls that were in flight
    return RoleConfig(num_cpus=0, max_concurrency=1000, max_restarts=-1, max_task_retries=3)


def _app_role(concurrency: int = 1) -> RoleConfig:
    # a Serve app's named helper: no CPU, restarts forever, re-runs calls in flight
    return RoleConfig(num_cpus=0, max_concurrency=concurrency, max_restarts=-1,
                      max_task_retries=-1)


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
    key_limits: RoleConfig = field(default_factory=_app_role, metadata={
        "help": "one per Serve app: per-key limits and budgets across its replicas"})
    traffic_writer: RoleConfig = field(default_factory=lambda: _app_role(1000), metadata={
        "help": "one per Serve app: the traffic log (an async actor)"})
    online_retrainer: RoleConfig = field(
        default_factory=lambda: RoleConfig(max_concurrency=4), metadata={
            "help": "the online loop beside an app (GPU: its LM trains on cuda)"})
    rllib_env_runner: RLlibRoleConfig = field(default_factory=RLlibRoleConfig,
                                         metadata={"help": "the lite tier's RLlib env runners"})
    rllib_learner: RLlibRoleConfig = field(default_factory=RLlibRoleConfig,
                                      metadata={"help": "the lite tier's RLlib learners"})


@dataclass
class IngressConfig:
    """The HTTP ingress (a Serve deployment, `ServeConfig.ingress`) waits on worker APIs, not
    on its CPU: it takes many requests at once (Serve's default of 5 would queue them in
    front of an idle replica) and scales on how many are ongoing."""

    max_ongoing_requests: int = field(default=256, metadata={
        "help": "requests one replica holds at once", "min": 1})
    min_replicas: int = field(default=1, metadata={"help": "fewest ingress replicas", "min": 1})
    max_replicas: int = field(default=4, metadata={
        "help": "most ingress replicas (autoscaling)", "min": 1})
    target_ongoing_requests: int = field(default=64, metadata={
        "help": "ongoing requests per replica autoscaling aims at", "min": 1})
    num_cpus: float = field(default=0.1, metadata={
        "help": "CPUs one ingress replica reserves", "min": 0})


ACTOR_CLASSES: dict[str, str] = {
    PROXY_ROLE: "ray_conductor.workers.actor:WorkerProxy",
    "rollout": "ray_conductor.rl.rollout:RolloutActor",
    "learner": "ray_conductor.rl.learner_group:LearnerActor",
    "key_limits": "ray_conductor.serve.actors:KeyLimitsActor",
    "traffic_writer": "ray_conductor.serve.actors:TrafficWriter",
    "online_retrainer": "ray_conductor.online.actor:OnlineRetrainer",
}
# roles Ray Serve or RLlib instantiate from the settings this spec gives them
SERVE_ROLES = {"ingress": "ray_conductor.serve.ingress:Ingress",
               "planner": "ray_conductor.serve.planner:Planner"}
RLLIB_ROLES = {"rllib_env_runner": "ray.rllib.env.single_agent_env_runner:SingleAgentEnvRunner",
               "rllib_learner": "ray.rllib.algorithms.ppo.torch.ppo_torch_learner:PPOTorchLearner"}
DETACHED = {PROXY_ROLE, "key_limits", "traffic_writer", "online_retrainer"}


@dataclass(frozen=True)
class ActorSpec:
    """One role as built: its class, the resources of one instance, how many, restarts."""

    role: str
    actor: str
    kind: str = "actor"  # actor: built here; serve: a Serve deployment; rllib: RLlib's
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    count: int = 1
    max_concurrency: int = 1
    max_restarts: int = 0
    max_task_retries: int = 0
    torch_threads: int = 0
    resources: tuple[tuple[str, float], ...] = ()
    detached: bool = False
    max_count: int = 0  # Serve autoscaling: most replicas (0: `count` fixed)

    def actor_class(self) -> Any:
        if self.kind != "actor":
            raise ConfigError(f"role {self.role!r} is built by {self.kind}, not by the graph")
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
                    namespace: str = "ray_conductor",
                    ingress: IngressConfig | Any | None = None) -> "GraphSpec":
        """Every role from `cfg` (the ingress from `ingress`, a `ServeConfig.ingress`)."""
        cfg = cfg if cfg is not None else GraphConfig()
        classes = {**{r: (a, "actor") for r, a in ACTOR_CLASSES.items()},
                   "planner": (SERVE_ROLES["planner"], "serve"),
                   **{r: (a, "rllib") for r, a in RLLIB_ROLES.items()}}
        roles = {}
        for role, (actor, kind) in classes.items():
            rc = getattr(cfg, role, None)
            rc = rc if rc is not None else getattr(GraphConfig(), role)
            kw = {f.name: getattr(rc, f.name) for f in fields(RoleConfig)}
            kw["resources"] = tuple(sorted(dict(kw["resources"] or {}).items()))
            detached = role in DETACHED and (role != PROXY_ROLE or bool(cfg.detached_proxies))
            roles[role] = ActorSpec(role, actor, kind, detached=detached, **kw)
        ing = ingress if ingress is not None else IngressConfig()
        roles["ingress"] = ActorSpec(
            "ingress", SERVE_ROLES["ingress"], "serve", num_cpus=float(ing.num_cpus),
            count=int(ing.min_replicas), max_count=int(ing.max_replicas),
            max_concurrency=int(ing.max_ongoing_requests))
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
            least = 0 if r.kind == "rllib" else 1
            if r.num_cpus < 0 or r.num_gpus < 0 or r.count < least or r.max_concurrency < 1:
                counts = ("count and max_concurrency >= 1" if least else
                          "count >= 0 and max_concurrency >= 1")
                raise ConfigError(f"{where}: num_cpus and num_gpus must be >= 0, {counts} (got "
                                  f"{r.num_cpus}, {r.num_gpus}, {r.count}, {r.max_concurrency})")
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

    def build(self, role: str, *args: Any, name: str | None = None,
              num_gpus: float | None = None, **kw: Any) -> Any:
        """One instance of `role` (named ones: get-or-create in the namespace). `num_gpus`:
        a role whose GPU follows its own config (the online retrainer's LM device)."""
        spec = self.role(role)
        opts = spec.options(name=name, namespace=self.namespace)
        if num_gpus is not None:
            opts["num_gpus"] = num_gpus
        return spec.actor_class().options(**opts).remote(*args, **kw)

    def build_all(self, role: str, *args: Any, **kw: Any) -> list[Any]:
        """`count` unnamed instances of `role`, built from the same arguments."""
        return [self.build(role, *args, **kw) for _ in range(self.role(role).count)]

    def serve_options(self, role: str) -> dict[str, Any]:
        """`ray_actor_options` of a Serve deployment's replicas."""
        from ray_conductor.runtime import TORCH_THREADS_ENV

        r = self.role(role)
        out: dict[str, Any] = {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus}
        if r.resources:
            out["resources"] = dict(r.resources)
        if r.torch_threads > 0:
            out["runtime_env"] = {"env_vars": {TORCH_THREADS_ENV: str(r.torch_threads)}}
        return out

    def rllib_settings(self) -> dict[str, dict[str, Any]]:
        """What RLlib's `PPOConfig.env_runners(...)` and `.learners(...)` read."""
        run, learn = self.role("rllib_env_runner"), self.role("rllib_learner")
        return {"env_runners": {"num_env_runners": run.count,
                                "num_cpus_per_env_runner": run.num_cpus,
                                "num_gpus_per_env_runner": run.num_gpus},
                "learners": {"num_learners": learn.count,
                             "num_cpus_per_learner": learn.num_cpus,
                             "num_gpus_per_learner": learn.num_gpus}}

    def declared(self) -> dict[str, ActorSpec]:
        """Ray actor class name -> its role, for every role that runs as a Ray actor (Serve
        replicas are `ServeReplica:<app>:<deployment>`)."""
        out = {}
        for r in self.roles.values():
            cls = r.actor.split(":")[1]
            out[f"ServeReplica:*:{cls}" if r.kind == "serve" else cls] = r
        return out


def ppo_graph(settings: Any, base: GraphConfig | None = None) -> GraphSpec:
    """The lite tier's graph: its RLlib roles from `PPOSettings` (runners, learners and their
    resources), the rest from `base`."""
    from dataclasses import replace

    base = base if base is not None else GraphConfig()
    cfg = replace(base, rllib_env_runner=RLlibRoleConfig(
        num_cpus=settings.num_cpus_per_env_runner, count=settings.num_env_runners),
        rllib_learner=RLlibRoleConfig(num_cpus=settings.num_cpus_per_learner,
                                      num_gpus=settings.num_gpus_per_learner,
                                      count=settings.num_learners))
    return GraphSpec.from_config(cfg)


def fan_out(handles: Mapping[str, Any] | Sequence[Any], method: str, *args: Any,
            timeout_s: float | None = 120.0, **kw: Any) -> Any:
    """Call `method` on every actor and wait for all the answers (a dict by key for a
    mapping, a list for a sequence)."""
    if isinstance(handles, Mapping):
        refs = {k: getattr(h, method).remote(*args, **kw) for k, h in handles.items()}
        return dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s)))
    return ray.get([getattr(h, method).remote(*args, **kw) for h in handles], timeout=timeout_s)


