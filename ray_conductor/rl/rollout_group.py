"""The actors one training run drives, built from the graph's declaration: the shared worker
proxies (backend=ray), `graph.rollout.count` rollout actors and a learner group of
`graph.learner.count` ranks, with a named fan-out for each thing the loop asks of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

import ray
from ray.exceptions import RayTaskError

from ray_conductor.errors import ConductorError, ConfigError
from ray_conductor.graph import GraphSpec, worker_pool
from ray_conductor.rl.learner_group import LearnerGroup


def _replay_pool(spec: str, data_dir: str | None) -> Any:
    """In-process replay pool, built inside the rollout actor (backend=local)."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.replay import ReplayPool

    return ReplayPool(load_pool(spec, data_dir=data_dir))


def _replay_judge(spec: str, data_dir: str | None) -> Any:
    from ray_conductor.data.pools import load_pool

    return load_pool(spec, data_dir=data_dir).judge


def gather(refs: list[Any]) -> list[Any]:
    """`ray.get`, with our own errors (e.g. `EngineError` from a rollout) re-raised as they
    were, so the command line prints their one line instead of a remote traceback."""
    try:
        return ray.get(refs)
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, ConductorError):
            raise cause from None
        raise


class RolloutGroup:
    """The rollout actors: questions dealt round-robin, answers put back in order."""

    def __init__(self, actors: list[Any]):
        self.actors = actors

    def _deal(self, items: Sequence[Any]) -> list[tuple[Any, list[Any]]]:
        n = len(self.actors)
        return [(a, list(items[i::n])) for i, a in enumerate(self.actors) if items[i::n]]

    @staticmethod
    def _undeal(parts: list[list[Any]], total: int, n: int) -> list[Any]:
        out: list[Any] = [None] * total
        for i, part in enumerate(parts):
            out[i::n] = part
        return out

    def rollout(self, questions: list, group_size: int, iteration: int,
                seed: int | None = None) -> list:
        """Trajectories of every question, in one list."""
        return self.collect(self.submit(questions, group_size, iteration, seed))

    def submit(self, questions: list, group_size: int, iteration: int,
               seed: int | None = None, min_version: int = 0) -> list:
        """Start a rollout (sampling waits for weights of `min_version`); `collect` its refs."""
        return [a.rollout.remote(qs, group_size, iteration, None,
                                 None if seed is None else seed + i, min_version)
                for i, (a, qs) in enumerate(self._deal(questions))]

    @staticmethod
    def collect(refs: list) -> list:
        return [t for part in gather(refs) for t in part]

    def run(self, questions: list, params: dict | None = None) -> list:
        """Evaluation: (plan, trace) per question, in order."""
        dealt = self._deal(questions)
        parts = gather([a.run.remote(qs, 0.0, params) for a, qs in dealt])
        return self._undeal(parts, len(questions), len(self.actors))

    def demonstrations(self, questions: list, seed: int) -> list:
        """Format warm-up trajectories (see `RolloutWorker.demonstrations`)."""
        return gather([self.actors[0].demonstrations.remote(questions, seed)])[0]

    def load_weights(self, ref: Any, version: int, wait: bool = True) -> list:
        """Weights to every actor; `wait=False` returns the refs (an overlapped loop does not
        wait for a swap that queues behind a generation)."""
        refs = [a.load_weights.remote(ref, version) for a in self.actors]
        return gather(refs) if wait else refs

    def examples(self, questions: list, workflows: list) -> list:
        """Supervised targets (see `RolloutWorker.examples`)."""
        return gather([self.actors[0].examples.remote(questions, workflows)])[0]

    def workers(self) -> list:
        return gather([self.actors[0].workers.remote()])[0]

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []


@dataclass
class TrainingGraph:
    """The actors one training run drives: worker proxies (shared with serving and other
    drivers), rollout actors and the learner group."""

    spec: GraphSpec
    proxies: dict[str, Any]
    rollouts: RolloutGroup
    learners: LearnerGroup

    def sync_weights(self, version: int, wait: bool = True) -> list:
        """Learner weights -> every rollout actor, through the object store."""
        return self.rollouts.load_weights(self.learners.get_weights(), version, wait)

    def shutdown(self) -> None:
        """Rollouts and learners; the worker proxies stay for their other users."""
        self.learners.shutdown()
        self.rollouts.shutdown()


def build_training_graph(cfg: Any, data: Any, pool: Any = None) -> TrainingGraph:
    """Everything from `cfg.graph` (the one declaration) and the training config's policy,
    reward and pool settings. `pool`: a zero-argument factory of the rollout actors' worker
    pool, instead of the one `cfg.backend` names (benchmarks: workers behind a server)."""
    from ray_conductor.config import to_dict

    spec = GraphSpec.from_config(cfg.graph, cfg.ray.namespace)
    spec.check_resources(["rollout", "learner"])
    proxies: dict[str, Any] = {}
    if pool is None and cfg.backend == "ray":
        pool = worker_pool(cfg, data, "rollout", spec=spec)
        proxies = {w.name: pool.handle(w.name) for w in pool.workers()}
    elif pool is None and cfg.backend == "local":
        pool = partial(_replay_pool, cfg.pool, cfg.data_dir)
    elif pool is None:
        raise ConfigError(f"backend={cfg.backend!r}: use ray or local")
    judge = partial(_replay_judge, cfg.pool, cfg.data_dir)
    actors = spec.build_all("rollout", cfg.conductor, cfg.reward, pool, judge)
    learner_cfg = {**to_dict(cfg.learner), "model": cfg.conductor.model}
    learners = LearnerGroup(learner_cfg, spec)
    gather([a.ready.remote() for a in actors])
    return TrainingGraph(spec, proxies, RolloutGroup(actors), learners)
