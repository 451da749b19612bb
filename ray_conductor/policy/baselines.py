"""Policies that plan without learning: single workers, cheapest, random, the per-query oracle
and a kNN router. They produce `Plan`s like the trained conductor does, so one evaluation loop
judges them all through the executor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from ray_conductor.errors import ConfigError
from ray_conductor.workers.base import WorkerInfo
from ray_conductor.workflow import Workflow
from ray_conductor.workflow.model import ROUTER_SUBTASK

SUBTASK = ROUTER_SUBTASK


@dataclass
class Plan:
    """A policy's plan for one query. `workflow` is None when the policy produced no valid plan
    (the query then scores as wrong with no calls)."""

    workflow: Workflow | None
    text: str = ""
    attempts: int = 1
    fell_back: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def parsed(self) -> bool:
        return self.workflow is not None and not self.fell_back


class Policy(Protocol):
    name: str

    def plan_batch(self, queries: Sequence, workers: Sequence[WorkerInfo]) -> list[Plan]: ...


def _price(w: WorkerInfo) -> float:
    return w.input_price_per_mtok + w.output_price_per_mtok


class SingleWorker:
    def __init__(self, worker: str):
        self.worker = worker
        self.name = f"single:{worker}"

    def plan_batch(self, queries, workers):
        return [Plan(Workflow.single(self.worker, SUBTASK)) for _ in queries]


class Cheapest:
    """Always the worker with the lowest list price (input + output $/1M tokens)."""

    name = "cheapest"

    def plan_batch(self, queries, workers):
        w = min(workers, key=_price).name
        return [Plan(Workflow.single(w, SUBTASK)) for _ in queries]


class RandomRouter:
    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def plan_batch(self, queries, workers):
        return [Plan(Workflow.single(self.rng.choice(workers).name, SUBTASK)) for _ in queries]


class Oracle:
    """Per query, the cheapest worker that answers correctly (in hindsight): the upper bound.
    Where no worker is correct, the cheapest worker."""

    name = "oracle"

    def __init__(self, data):
        self.data = data

    def plan_batch(self, queries, workers):
        names = [w.name for w in workers]
        plans = []
        for q in queries:
            recs = [(self.data.record(q.query_id, m), m) for m in names]
            ok = [(r.cost, m) for r, m in recs if r is not None and r.correct]
            pick = min(ok)[1] if ok else min(workers, key=_price).name
            plans.append(Plan(Workflow.single(pick, SUBTASK)))
        return plans


class KNNRouter:
    """RouterBench's kNN baseline: a test query goes to the worker with the best accuracy among
    its k nearest training queries (cosine over sentence embeddings), minus `cost_weight` times
    that worker's mean cost there; ties go to the cheaper worker."""

    name = "knn"

    def __init__(self, train_emb: np.ndarray, train_correct: np.ndarray, train_cost: np.ndarray,
                 models: Sequence[str], embed, k: int = 40, cost_weight: float = 0.0):
        if len(train_emb) == 0:
            raise ConfigError("knn needs a non-empty train split to fit on")
        self.emb, self.correct, self.cost = train_emb, train_correct, train_cost
        self.models, self.embed = list(models), embed
        self.k, self.cost_weight = min(k, len(train_emb)), cost_weight

    @classmethod
    def fit(cls, data, embed, k: int = 40, cost_weight: float = 0.0) -> "KNNRouter":
        """Embeds what tells the train questions apart (openings they share stripped, see
        `QuestionFeaturizer`), and applies the same cut to the queries it routes."""
        from ray_conductor.features import QuestionFeaturizer

        train = data.queries("train")
        correct, cost = data.matrix("train")
        featurizer = QuestionFeaturizer.fit([q.query for q in train])

        def embed_distinct(texts):
            return embed(featurizer.transform(texts))

        router = cls(embed_distinct([q.query for q in train]), correct, cost, data.models,
                     embed_distinct, k, cost_weight)
        router.featurizer = featurizer
        return router

    def choose(self, emb: np.ndarray) -> list[int]:
        sims = emb @ self.emb.T
        nn = np.argpartition(-sims, self.k - 1, axis=1)[:, : self.k]
        acc = self.correct[nn].mean(axis=1)  # [Q, M]
        cost = self.cost[nn].mean(axis=1)
        score = acc - self.cost_weight * cost
        best = score.max(axis=1, keepdims=True)
        tied = np.isclose(score, best)
        return [int(np.where(t, c, np.inf).argmin()) for t, c in zip(tied, cost)]

    def plan_batch(self, queries, workers):
        picks = self.choose(self.embed([q.query for q in queries]))
        return [Plan(Workflow.single(self.models[i], SUBTASK)) for i in picks]


def make_policies(names: Sequence[str], data, workers: Sequence[WorkerInfo], *, seed: int = 0,
                  knn_k: int = 40, embed=None, conductor=None) -> list[Policy]:
    """Policies from their command-line names: `singles` (every worker), `single:NAME`,
    `cheapest`, `random`, `oracle`, `knn`, `lite:DIR` (a lite conductor, or a `train-lite`
    run directory; `lite:default` the shipped demo policy), `scripted:FILE` (a pinned
    workflow), `conductor:PATH` (a trained LM conductor, with the `ConductorConfig`
    settings in `conductor` over its own, e.g. {"head": DIR, "programs": True})."""
    known = {w.name for w in workers}
    out: list[Policy] = []
    for name in names:
        if name == "singles":
            out += [SingleWorker(w.name) for w in workers]
        elif name.startswith("single:"):
            w = name.split(":", 1)[1]
            if w not in known:
                raise ConfigError(f"policy {name!r}: unknown worker {w!r}; known: {sorted(known)}")
            out.append(SingleWorker(w))
        elif name == "cheapest":
            out.append(Cheapest())
        elif name == "random":
            out.append(RandomRouter(seed))
        elif name == "oracle":
            out.append(Oracle(data))
        elif name == "knn":
            if embed is None:
                from ray_conductor.features import embed_texts as embed
            out.append(KNNRouter.fit(data, embed, k=knn_k))
        elif name.startswith("lite:"):
            out.append(LitePolicy.load(name.split(":", 1)[1], workers))
        elif name.startswith("conductor:"):
            from ray_conductor.policy.runner import check_overrides, load_conductor

            lm, tag = load_conductor(name.split(":", 1)[1],
                                     **check_overrides(dict(conductor or {})))
            out.append(ConductorPolicy.local(f"conductor:{tag}", lm))
        elif name.startswith("scripted:"):
            out.append(ConductorPolicy.scripted(name.split(":", 1)[1], workers))
        else:
            raise ConfigError(
                f"unknown policy {name!r}; use singles, single:NAME, cheapest, random, oracle, "
                "knn, lite:DIR (a policy or train-lite run dir; lite:default), scripted:FILE "
                "(a pinned workflow), conductor:PATH (a model dir, run dir or registry:DIR)"
            )
    return out


class ConductorPolicy:
    """An LM conductor as a policy: it plans and runs its own workflows (it may call itself
    as a worker), so it gives (plan, trace) pairs instead of plans. `run_batch(queries, pool,
    params)` is where it runs: a local `Conductor` (`local`), or the rollout actors of a training run
    (their own pool, at rollout priority)."""

    def __init__(self, name: str, run_batch):
        self.name, self._run = name, run_batch

    @classmethod
    def local(cls, name: str, conductor) -> "ConductorPolicy":
        from ray_conductor.policy.runner import run_conductor

        async def run(queries, pool, params):
            return await run_conductor(conductor, queries, pool, params=params)

        return cls(name, run)

    @classmethod
    def scripted(cls, path: str, workers: Sequence[WorkerInfo]) -> "ConductorPolicy":
        """A pinned workflow (a plan script, `policy.scripted_engine`) judged beside the
        learned policies; every plan in it must parse over `workers`."""
        from pathlib import Path

        from ray_conductor.policy.runner import check_script, scripted_conductor

        conductor = scripted_conductor(path)
        check_script(conductor, workers)
        return cls.local(f"scripted:{Path(path).name}", conductor)

    async def run_batch(self, queries, pool, params: dict | None = None
                        ) -> list[tuple[Plan, object]]:
        import asyncio
        import inspect

        if inspect.iscoroutinefunction(self._run):
            out = await self._run(queries, pool, params)
        else:  # a blocking remote call (the rollout actors): off the event loop
            out = await asyncio.to_thread(self._run, queries, pool, params)
        return [(Plan(p.workflow, p.texts[-1] if p.texts else "", p.n_attempts, p.fell_back,
                      {"errors": list(p.errors)}), trace) for p, trace in out]


class LitePolicy:
    """The lite conductor as a policy: it decides turn by turn over the pool, so it gives
    (plan, trace) pairs like the LM conductor."""

    def __init__(self, name: str, conductor):
        self.name, self.conductor = name, conductor

    @classmethod
    def load(cls, ref: str, workers: Sequence[WorkerInfo]) -> "LitePolicy":
        from pathlib import Path

        from ray_conductor.lite import LiteConductor, default_policy_dir

        path = default_policy_dir() if ref == "default" else Path(ref)
        return cls(f"lite:{ref if ref == 'default' else path.resolve().name}",
                   LiteConductor.load(path, workers))

    async def run_batch(self, queries, pool, params: dict | None = None
                        ) -> list[tuple[Plan, object]]:
        runs = await self.conductor.run_batch(list(queries), pool, params=params,
                                              cache_embeddings=True)
        return [(Plan(wf), trace) for wf, trace in runs]
