"""The LM conductor's tier of the online loop (`LMTrainer`): the same `Trainer` protocol as
the lite tier, so the same rounds, paired tests, promotions and rollbacks apply to a served
LM conductor (`registry:DIR` whose promoted version is of kind `lm`).

Both methods run the conductor over a `CounterfactualPool`: every worker's re-rolled answer
to each question (what `reroll` gathered through the proxies at `rollout` priority), served
back as that worker's completion, so a plan of any shape (chains, votes, conditional steps)
runs exactly as it would live, without a call. A plan's reward is the loop's own currency,
correct - cost_penalty * dollars, where "correct" is the re-rolled judgement of the answer
the plan ended with (a vote's winner, a chain's last step).

- `score`: greedy plans (the policy as served: re-sampling and fallback as its settings say),
  one reward per question. Exact only where every step's cell is observed: the loop scores
  the questions `needed` says are (`cells.CellBroker.scorable` asks the rest within the call
  budget, a pass per step that depends on earlier answers).
- `improve`: GRPO continued from the serving checkpoint's weights, in this process (a
  `Learner` and a `RolloutWorker`, the training machinery of `rl` without the actor group):
  `lm.iterations` GRPO steps (`rl.grpo.grpo_step`, the one the trainer repeats), each on
  `lm.questions` questions x `lm.group_size` sampled plans;
  the iteration (the start included) whose greedy reward on up to `lm.select_rows` training
  questions is best is written out as a Hugging Face directory. At GPU scale the same loop
  runs with `lm.device=cuda` (and bf16).

Unobserved cells (the budgeted re-roll knows some workers' answers to a question, not all):
a step that calls a worker whose answer nobody observed gets a failure marked `unobserved`,
not the worker's own failure. A sampled plan that met one is run again after its cells are
fetched through the round's `CellBroker` (`cells`, set by the loop: within the budget, every
call accounted), a few passes at most (a conditional step, a vote, shows its cell only once
the answers before it are known); a plan still short of a cell is not scored: it leaves its
GRPO group (a group left with fewer than two scored plans teaches nothing and is left out),
so no worker is learnt against for answers nobody saw. The fetches run between event loops
(a fetch makes its calls through the Reroller's own `asyncio.run`). The greedy selection
compares two iterations on the questions both score exactly and fetches nothing.

The conductor settings (worker ids, programs, constraints, ...) are the serving version's
(`VERSION.json`'s `conductor` or `config.conductor`), kept with every candidate
(`conductor.json` beside the weights, and the published version's meta).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

from ray_conductor.data.replay import Query
from ray_conductor.errors import ConfigError
from ray_conductor.online.config import LMTrainingConfig
from ray_conductor.online.reroll import merge
from ray_conductor.online.trainer import Counterfactual
from ray_conductor.workers.base import Completion, WorkerInfo, WorkerPool, failed

SETTINGS_FILE = "conductor.json"
UNOBSERVED = "unobserved"  # a step's cell nobody observed: no failure of the worker's
PASSES = 4  # fetch-and-run-again rounds for the sampled plans
Cell = tuple[str, str]  # (question key, worker)
Job = Callable[[Any], Awaitable[tuple[Any, Any]]]  # a pool -> (its result, its trace)


def conductor_settings(policy_dir: Path | str) -> dict[str, Any]:
    """The conductor settings a published LM version (its registry meta) or a candidate (its
    `conductor.json`) runs with; the weights' own path is not one of them."""
    from ray_conductor.policy.registry import version_at
    from ray_conductor.policy.runner import settings_from_meta as from_meta

    d = Path(policy_dir)
    try:
        pv = version_at(d)
        meta = pv.meta if pv is not None else {}
        if not from_meta(meta) and (d / SETTINGS_FILE).is_file():
            meta = {"conductor": json.loads((d / SETTINGS_FILE).read_text())}
    except ValueError as e:
        raise ConfigError(f"{d}: unreadable policy settings ({e}); republish the policy") \
            from None
    return {k: v for k, v in from_meta(meta).items() if k != "model"}


def lm_penalty(meta: dict[str, Any]) -> float:
    """The dollar penalty an LM version was trained with (0: the paper's reward has none)."""
    reward = ((meta.get("config") or {}).get("reward") or {})
    return float(reward.get("cost_penalty_per_dollar", 0.0) or 0.0)


class CounterfactualPool:
    """A `WorkerPool` over re-rolled answers: the question is the call's
    `metadata.query_id` (a row key); the completion is that worker's re-rolled answer
    (its comparable answer for votes and conditions, its cost), or the failure it had."""

    def __init__(self, data: Counterfactual):
        self.data = data
        self._workers = list(data.workers)
        self._names = {w.name for w in self._workers}
        self._keys = {r.key for r in data.rows} | set(data.answers)
        self.calls = 0

    def workers(self) -> list[WorkerInfo]:
        return list(self._workers)

    @staticmethod
    def text(worker: str, answer: Any) -> str:
        """The completion text of a re-rolled answer: what the judgement map keys on."""
        if answer.answer is None:
            return f"[{worker}: an answer with nothing comparable in it]"
        return f"The answer is ({answer.answer})."

    async def complete(self, worker: str, messages: list[Any], **params: Any) -> Completion:
        self.calls += 1
        key = (params.get("metadata") or {}).get("query_id")
        got = self.data.answers.get(str(key), {}).get(worker) if key is not None else None
        if got is None and worker in self._names and str(key) in self._keys:
            return failed(worker, f"nobody observed {worker}'s answer to question {key}",
                          UNOBSERVED)
        if worker not in self._names or got is None:
            return failed(worker, f"no re-rolled answer of {worker} to question {key}",
                          "unknown_query")
        if not got.responded:
            return failed(worker, f"{worker} gave no answer to question {key} when re-asked",
                          "missing_answer", cost=got.cost)
        return Completion(worker=worker, text=self.text(worker, got), cost=got.cost,
                          meta={"answer": got.answer, "counterfactual": True})

    def judgements(self, key: str) -> dict[str, bool]:
        """Completion text -> correct, for one question (equal comparable answers are judged
        alike, so one text has one judgement)."""
        return {self.text(w, a): bool(a.correct) for w, a in self.data.answers.get(key, {}).items()
                if a.responded}

    def judge(self, key: str, text: str) -> bool:
        return self.judgements(key).get(text or "", False)


class PlanView:
    """One plan's view of a pool: the unobserved cells its steps asked for (`asked`)."""

    def __init__(self, pool: WorkerPool):
        self.pool, self.asked = pool, []

    def workers(self) -> list[WorkerInfo]:
        return list(self.pool.workers())

    async def complete(self, worker: str, messages: list[Any], **params: Any) -> Completion:
        c = await self.pool.complete(worker, messages, **params)
        if c.error_code == UNOBSERVED:
            self.asked.append((str((params.get("metadata") or {}).get("query_id")), worker))
        return c


def worth_asking(asked: list[Cell], trace: Any) -> list[Cell]:
    """The `asked` cells a call is worth now: not the cell of a conditional step that ran
    only as far as anyone knows (it sees a step whose cell is missing, or a vote or
    condition that depends on one): once that cell is known, it may not run. The next
    pass asks it if it does. (A plain step's counterfactual answer does not depend on
    what it reads, so only conditions and votes carry the doubt.)"""
    if trace is None:
        return list(asked)
    unsure: set[int] = set()
    sure, doubtful = set(), set()
    for st in sorted(trace.steps, key=lambda t: t.index):  # a step sees earlier steps only
        depends = any(k in unsure for k in st.access)
        if st.error_code == UNOBSERVED:
            (doubtful if st.when is not None and depends else sure).add(st.worker)
        if st.error_code == UNOBSERVED or ((st.program or st.when is not None) and depends):
            unsure.add(st.index)
    return [c for c in asked if c[1] in sure or c[1] not in doubtful]


def trainable(samples: Sequence[Any]) -> list[Any]:
    """The scored samples (None: not scored) of the groups that keep at least two: GRPO
    weighs a plan against its group's others, and an unscored plan is no failure."""
    n = Counter(t.group_id for t in samples if t is not None)
    return [t for t in samples if t is not None and n[t.group_id] >= 2]


def paired_gain(new: np.ndarray, old: np.ndarray) -> float:
    """Mean reward gain of `new` over `old` on the questions both score (NaN: not scored);
    NaN when they share none."""
    both = ~np.isnan(new) & ~np.isnan(old)
    return float((new[both] - old[both]).mean()) if both.any() else float("nan")


def scored_mean(x: np.ndarray) -> float:
    """The mean over the scored questions (NaN when none is)."""
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def as_query(row: Any) -> Query:
    """A logged row as the runner and the rollout worker read a question (its key as id)."""
    return Query(row.key, row.question,
                 answer_format=row.judge.answer_format if row.judge is not None else "mc")


class LMTrainer:
    kind = "lm"

    def __init__(self, settings: LMTrainingConfig, cost_penalty: float, seed: int = 0):
        self.settings, self.cost_penalty, self.seed = settings, float(cost_penalty), seed
        self.cells: Any = None  # the round's `CellBroker` (the loop sets it): `fetch`
        self._loaded: dict[tuple[str, int], tuple[Any, dict[Any, Any]]] = {}

    # -- loading ---------------------------------------------------------------------------
    def conductor_config(self, policy_dir: Path | str, **over: Any) -> Any:
        from ray_conductor.policy.conductor import ConductorConfig

        s = self.settings
        cfg = ConductorConfig(**{**conductor_settings(policy_dir), "model": str(policy_dir),
                                 "device": s.device,
                                 "autocast": "bfloat16" if s.autocast else None,
                                 "batch_size": s.batch_size, **over})
        if cfg.engine != "hf":
            raise ConfigError(f"online retraining of an LM conductor runs its engine in the "
                              f"loop's process (engine=hf); this version says {cfg.engine!r}")
        return cfg

    def meta(self, policy_dir: Path | str) -> dict[str, Any]:
        """What a published version of this candidate keeps: the settings it runs with."""
        return {"conductor": conductor_settings(policy_dir)}

    def _conductor(self, policy_dir: Path | str) -> Any:
        from ray_conductor.policy.conductor import Conductor, build_engine

        cfg = self.conductor_config(policy_dir)
        return Conductor(build_engine(cfg), cfg)

    def _greedy(self, policy_dir: Path, rows: list[Any], pool: CounterfactualPool
                ) -> tuple[Any, list[Any]]:
        """The policy's conductor and its greedy plans for `rows`, each loaded and planned
        once (the loop asks `needed` on every pass of `scorable`, then `score`s); the two
        policies last used (serving and candidate) are kept."""
        from ray_conductor.policy.runner import with_recursion

        d = Path(policy_dir)
        stamp = max((f.stat().st_mtime_ns for f in d.iterdir()), default=0) if d.is_dir() else 0
        sig = (str(d.resolve()), stamp)
        if sig not in self._loaded:
            while len(self._loaded) >= 2:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[sig] = (self._conductor(d), {})
        conductor, plans = self._loaded[sig]
        names = tuple(w.name for w in with_recursion(pool, conductor).workers())
        todo = [r for r in rows if (r.key, r.question, names) not in plans]
        for r, wf in zip(todo, self._plans(conductor, todo, pool)):
            plans[(r.key, r.question, names)] = wf
        return conductor, [plans[(r.key, r.question, names)] for r in rows]

    # -- running plans over the counterfactual answers ----------------------------------------
    @staticmethod
    def _plans(conductor: Any, rows: list[Any], pool: CounterfactualPool) -> list[Any]:
        from ray_conductor.policy.runner import with_recursion

        if not rows:
            return []
        got = conductor.plan_many([r.question for r in rows],
                                  list(with_recursion(pool, conductor).workers()),
                                  temperature=0.0)
        return [p.workflow for p in got]

    @staticmethod
    def _play(conductor: Any, pool: CounterfactualPool, jobs: list[Job]
              ) -> list[tuple[Any, bool, list[Cell]]]:
        """Each job run on its own view of the pool: its result, whether it met an
        unobserved cell, and the cells worth fetching (`worth_asking`). One event loop; no
        fetch in it."""
        from ray_conductor.policy.runner import with_recursion

        async def run() -> list[tuple[Any, bool, list[Cell]]]:
            sem = asyncio.Semaphore(64)

            async def one(job: Job) -> tuple[Any, bool, list[Cell]]:
                view = PlanView(pool)
                async with sem:
                    result, trace = await job(with_recursion(view, conductor))
                return result, bool(view.asked), worth_asking(view.asked, trace)

            return list(await asyncio.gather(*(one(j) for j in jobs)))

        return asyncio.run(run()) if jobs else []

    def _play_greedy(self, conductor: Any, workflows: list[Any], rows: list[Any],
                     pool: CounterfactualPool) -> list[tuple[float, bool, list[Cell]]]:
        """Each greedy plan's reward (correct - penalty * dollars; an empty plan: 0), as
        `_play` returns it."""
        from ray_conductor.workflow import execute

        def job(wf: Any, q: Query) -> Job:
            async def run(view: WorkerPool) -> tuple[float, Any]:
                if not len(wf):  # an empty plan: no answer, nothing spent
                    return 0.0, None
                trace = await execute(wf, q.query, view, query_id=q.query_id,
                                      answer_format=q.answer_format)
                return (float(pool.judge(q.query_id, trace.answer))
                        - self.cost_penalty * trace.cost), trace
            return run

        return self._play(conductor, pool, [job(wf, as_query(r))
                                            for wf, r in zip(workflows, rows)])

    def _fetch(self, asked: list[Cell], data: Counterfactual, tally: dict[str, Any]) -> int:
        """The `asked` cells (first asked first) from the round's `CellBroker`, within the
        budget and accounted there, merged into `data`'s answers; how many it got."""
        rows = {r.key: r for r in data.rows}
        wanted = [(rows[k], w) for k, w in dict.fromkeys(asked) if k in rows]
        if self.cells is None or not wanted:
            return 0
        calls, dollars = self.cells.fetched.calls, self.cells.fetched.dollars
        got = self.cells.fetch(wanted, data.answers)
        merge(data.answers, got)
        n = sum(len(c) for c in got.values())
        tally["fetches"] += 1
        tally["cells_fetched"] += n
        tally["fetch_calls"] += self.cells.fetched.calls - calls
        tally["fetch_dollars"] += self.cells.fetched.dollars - dollars
        return n

    def _passes(self, conductor: Any, pool: CounterfactualPool,
                jobs: list[Job], data: Counterfactual,
                tally: dict[str, Any]) -> tuple[list[Any], list[bool]]:
        """Run the jobs; the unobserved cells they asked for are fetched (`_fetch`) and the
        jobs that asked run again, `PASSES` times at most, until nothing more comes. Each
        job's last result, and whether it is exact (it asked for no unobserved cell)."""
        results: list[Any] = [None] * len(jobs)
        pending = list(range(len(jobs)))
        for k in range(PASSES):
            got = self._play(conductor, pool, [jobs[i] for i in pending])
            wanted: list[Cell] = []
            for i, (res, _, cells) in zip(pending, got):
                results[i] = res
                wanted += cells
            pending = [i for i, (_, short, _) in zip(pending, got) if short]
            if not pending or k == PASSES - 1 or not self._fetch(wanted, data, tally):
                break
        exact = [True] * len(jobs)
        for i in pending:
            exact[i] = False
        return results, exact

    # -- scoring -----------------------------------------------------------------------------
    def rewards(self, conductor: Any, data: Counterfactual, rows: list[Any] | None = None,
                pool: CounterfactualPool | None = None, exact: bool = False) -> np.ndarray:
        """Each row's reward under the conductor's greedy plans, as served. A step whose
        cell nobody observed counts as a failed call; with `exact`, its row is NaN."""
        rows = data.rows if rows is None else rows
        if not rows:
            return np.zeros(0)
        pool = pool or CounterfactualPool(data)
        got = self._play_greedy(conductor, self._plans(conductor, rows, pool), rows, pool)
        return np.asarray([np.nan if exact and short else r for r, short, _ in got],
                          dtype=np.float64)

    def score(self, policy_dir: Path, data: Counterfactual) -> np.ndarray:
        """Exact on the questions `needed` names nothing for (the ones the loop passes)."""
        pool = CounterfactualPool(data)
        conductor, plans = self._greedy(policy_dir, data.rows, pool)
        got = self._play_greedy(conductor, plans, data.rows, pool)
        return np.asarray([r for r, _, _ in got], dtype=np.float64)

    def needed(self, policy_dir: Path, data: Counterfactual) -> dict[str, list[str]]:
        """Per question key, the unobserved cells the policy's greedy plan reads (none: its
        score is exact). The loop asks them within the budget and asks again
        (`CellBroker.scorable`): a pass reveals the cells of the steps that depend on the
        answers before them (a disagreement's third worker, a vote's tie-break)."""
        pool = CounterfactualPool(data)
        conductor, plans = self._greedy(policy_dir, data.rows, pool)
        out: dict[str, list[str]] = {}
        for _, _, wanted in self._play_greedy(conductor, plans, data.rows, pool):
            for key, w in wanted:
                if w not in out.setdefault(key, []):
                    out[key].append(w)
        return out

    def _score_samples(self, worker: Any, trajs: list[Any], questions: list[Query],
                       data: Counterfactual, pool: CounterfactualPool, reward_cfg: Any,
                       tally: dict[str, Any]) -> list[Any]:
        """The sampled plans scored over the answers, their unobserved cells fetched within
        the budget (`_passes`); None for a plan still short of a cell (not scored)."""
        from ray_conductor.rl.rewards import score_plan
        from ray_conductor.workflow import parse

        conductor = worker.conductor
        names = [w.name for w in conductor.offered(worker.workers())]
        qs = {q.query_id: q for q in questions}

        def job(t: Any) -> Job:
            q = qs[t.query_id]
            wf = parse(t.info["text"], names, max_steps=conductor.cfg.max_steps) \
                if t.parsed else None  # as the rollout parsed it: one first attempt

            async def run(view: WorkerPool) -> tuple[Any, Any]:
                got = await score_plan(wf, q.query, q.query_id, view, pool.judge, reward_cfg,
                                       answer_format=q.answer_format)
                return got, got.trace
            return run

        results, exact = self._passes(conductor, pool, [job(t) for t in trajs], data, tally)
        return [replace(t, reward=s.reward, cost=s.cost, calls=s.calls, correct=s.correct,
                        info={**t.info, "final_worker": s.final_worker})
                if ok else None for t, s, ok in zip(trajs, results, exact)]

    # -- training ----------------------------------------------------------------------------
    def improve(self, policy_dir: Path, data: Counterfactual, out_dir: Path
                ) -> tuple[Path, dict[str, Any]]:
        import torch

        from ray_conductor.rl.grpo import grpo_step
        from ray_conductor.rl.learner import Learner, LearnerConfig
        from ray_conductor.rl.rewards import RewardConfig
        from ray_conductor.rl.rollout import RolloutWorker

        self._loaded.clear()  # an earlier round's scoring conductors: memory for the learner
        t0, s = time.perf_counter(), self.settings
        cfg = self.conductor_config(policy_dir)
        pool = CounterfactualPool(data)
        reward_cfg = RewardConfig(name="paper", parse_fail=s.parse_fail, wrong=0.0,
                                  correct=1.0, cost_penalty_per_dollar=self.cost_penalty)
        worker = RolloutWorker(cfg, reward_cfg, pool, pool.judge)
        micro = s.micro_batch_size or s.group_size
        learner = Learner(str(policy_dir), LearnerConfig(
            model=str(policy_dir), lr=s.lr, bf16=s.bf16, micro_batch_size=micro,
            clip_eps=s.clip_eps, seed=self.seed), device=s.device)
        rng = random.Random(self.seed)
        select = rng.sample(data.rows, min(len(data.rows), s.select_rows))
        first = self.rewards(worker.conductor, data, select, pool, exact=True)
        best = {"rewards": first, "iteration": 0, "state": learner.state_dict()}
        curve, steps, version = [scored_mean(first)], [], 0
        tally = {"plans_sampled": 0, "plans_unscored": 0, "groups_left_out": 0,
                 "fetches": 0, "cells_fetched": 0, "fetch_calls": 0, "fetch_dollars": 0.0}
        qs = [as_query(r) for r in data.rows]
        for it in range(1, s.iterations + 1):
            batch = rng.sample(qs, min(len(qs), s.questions))
            trajs = asyncio.run(worker.rollout(batch, s.group_size, iteration=it,
                                               temperature=s.temperature, seed=self.seed + it))
            scored = self._score_samples(worker, trajs, batch, data, pool, reward_cfg, tally)
            train = trainable(scored)
            unscored = sum(t is None for t in scored)
            groups = {t.group_id for t in trajs}
            tally["plans_sampled"] += len(trajs)
            tally["plans_unscored"] += unscored
            tally["groups_left_out"] += len(groups) - len({t.group_id for t in train})
            row = {"parsed": float(np.mean([t.parsed for t in trajs])), "unscored": unscored,
                   "trained_on": len(train)}
            if not train:  # no group kept two scored plans: no update, the same policy
                steps.append(row)
                curve.append(curve[-1])
                continue
            step = grpo_step(train, learner, lambda v: worker.load_weights(
                learner.state_dict(), v), version, learner.cfg)
            version = step.version
            rewards = self.rewards(worker.conductor, data, select, pool, exact=True)
            curve.append(scored_mean(rewards))
            steps.append({**row, "sampled_reward": float(np.mean([t.reward for t in train])),
                          "loss": step.stats["loss"], "grad_norm": step.stats["grad_norm"]})
            if paired_gain(rewards, best["rewards"]) > 0:
                best = {"rewards": rewards, "iteration": it, "state": learner.state_dict()}
        with torch.no_grad():  # the best greedy reward, the start included: worse updates dropped
            learner.policy.lm.load_state_dict(best["state"])
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        learner.export_pretrained(str(out_dir))
        (out_dir / SETTINGS_FILE).write_text(json.dumps(conductor_settings(policy_dir)))
        figures = {"rows": len(data), "select_rows": len(select),
                   "select_scored": int((~np.isnan(first)).sum()),
                   "start_reward": curve[0], "best_reward": scored_mean(best["rewards"]),
                   "best_iteration": best["iteration"], "iterations": s.iterations,
                   "updates": version, "micro_batch_size": micro,
                   "curve": curve, "steps": steps, **tally,
                   "cost_penalty": self.cost_penalty, "calls_replayed": pool.calls,
                   "wall_s": time.perf_counter() - t0}
        return out_dir, figures
