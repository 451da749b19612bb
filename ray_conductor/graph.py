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

from ray_conductor.config import to_dict
from ray_conductor.errors import ConfigError
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
    # holds the conductor's generation engine; resources come from the training config
    "rollout": Role("ray_conductor.rl.rollout:RolloutActor", num_cpus=1, max_concurrency=4),
    # one data-parallel rank each; `rl.learner_group.LearnerGroup` creates and wires them
    "learner": Role("ray_conductor.rl.learner_group:LearnerActor", num_cpus=1),
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


# -- the trainer's roles -----------------------------------------------------------------------


def _replay_pool(spec: str, data_dir: str | None) -> Any:
    """In-process replay pool, built inside the rollout actor (backend=local)."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.replay import ReplayPool

    return ReplayPool(load_pool(spec, data_dir=data_dir))


def _replay_judge(spec: str, data_dir: str | None) -> Any:
    from ray_conductor.data.pools import load_pool

    return load_pool(spec, data_dir=data_dir).judge


def _proxy_pool(pool_cfg: WorkerPoolConfig) -> Any:
    """The shared `WorkerProxy` actors at rollout priority (backend=ray)."""
    from ray_conductor.workers.ray_pool import make_ray_pool

    return make_ray_pool(pool_cfg, priority="rollout")


@dataclass
class TrainingGraph:
    """The actors one training run drives: worker proxies (shared with serving), rollout
    workers and the learner group."""

    proxies: dict[str, Any]
    rollouts: list[Any]
    learners: Any  # rl.learner_group.LearnerGroup

    def rollout(self, questions: list, group_size: int, iteration: int,
                seed: int | None = None) -> list:
        """Questions dealt round-robin to the rollout workers; trajectories in one list."""
        n = len(self.rollouts)
        refs = [r.rollout.remote(questions[i::n], group_size, iteration, None,
                                 None if seed is None else seed + i)
                for i, r in enumerate(self.rollouts) if questions[i::n]]
        return [t for part in ray.get(refs) for t in part]

    def demonstrations(self, questions: list, seed: int) -> list:
        """Format warm-up trajectories (see `RolloutWorker.demonstrations`)."""
        return ray.get(self.rollouts[0].demonstrations.remote(questions, seed))

    def sync_weights(self, version: int) -> None:
        """Learner weights -> every rollout worker, through the object store."""
        ref = self.learners.get_weights()
        ray.get([r.load_weights.remote(ref, version) for r in self.rollouts])

    def plan_texts(self, questions: list[str]) -> list[dict]:
        n = len(self.rollouts)
        parts = ray.get([r.plan_texts.remote(questions[i::n]) for i, r in enumerate(self.rollouts)])
        out: list[dict] = [{}] * len(questions)
        for i, part in enumerate(parts):
            out[i::n] = part
        return out

    def ready(self) -> list:
        return [r.ready.remote() for r in self.rollouts]

    def shutdown(self) -> None:
        self.learners.shutdown()
        for r in self.rollouts:
            ray.kill(r)


def build_training_graph(cfg: Any, data: Any) -> TrainingGraph:
    """Worker proxies (backend=ray), `cfg.num_rollout_workers` rollout actors and a learner
    group of `cfg.num_learners`, all from the training config."""
    from functools import partial

    from ray_conductor.rl.learner_group import LearnerGroup
    from ray_conductor.runtime import TORCH_THREADS_ENV
    from ray_conductor.workers.config import replay_workers

    ns = cfg.ray.namespace
    proxies: dict[str, Any] = {}
    if cfg.backend == "ray":
        pool_cfg = WorkerPoolConfig(workers=replay_workers(cfg.pool, data.worker_infos()),
                                    replay=cfg.pool, namespace=ns)
        proxies = build_worker_proxies(pool_cfg, ns)
        pool_factory = partial(_proxy_pool, pool_cfg)
    elif cfg.backend == "local":
        pool_factory = partial(_replay_pool, cfg.pool, cfg.data_dir)
    else:
        raise ConfigError(f"backend={cfg.backend!r}: use ray or local")
    judge_factory = partial(_replay_judge, cfg.pool, cfg.data_dir)
    role = ROLES["rollout"]
    env = ({"runtime_env": {"env_vars": {TORCH_THREADS_ENV: str(cfg.torch_threads)}}}
           if cfg.torch_threads > 0 else {})
    rollouts = [
        role.actor_class().options(
            num_cpus=cfg.rollout_num_cpus, num_gpus=cfg.rollout_num_gpus,
            max_concurrency=role.max_concurrency, namespace=ns, **env,
        ).remote(cfg.conductor, cfg.reward, pool_factory, judge_factory)
        for _ in range(cfg.num_rollout_workers)
    ]
    learner_cfg = {**to_dict(cfg.learner), "model": cfg.conductor.model}
    learners = LearnerGroup(learner_cfg, cfg.num_learners,
                            {"num_cpus": cfg.learner_num_cpus, "num_gpus": cfg.learner_num_gpus,
                             **env})
    graph = TrainingGraph(proxies, rollouts, learners)
    ray.get(graph.ready())
    return graph
