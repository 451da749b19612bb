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
  one reward per question.
- `improve`: GRPO continued from the serving checkpoint's weights, in this process (a
  `Learner` and a `RolloutWorker`, the training machinery of `rl` without the actor group):
  `lm.iterations` GRPO steps (`rl.grpo.grpo_step`, the one the trainer repeats), each on
  `lm.questions` questions x `lm.group_size` sampled plans;
  the iteration (the start included) whose greedy reward on up to `lm.select_rows` training
  questions is best is written out as a Hugging Face directory. At GPU scale the same loop
  runs with `lm.device=cuda` (and bf16).

The conductor settings (worker ids, programs, constraints, ...) are the serving version's
(`VERSION.json`'s `conductor` or `config.conductor`), kept with every candidate
(`conductor.json` beside the weights, and the published version's meta).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from ray_conductor.data.replay import Query
from ray_conductor.errors import ConfigError
from ray_conductor.online.config import LMTrainingConfig
from ray_conductor.online.trainer import Counterfactual
from ray_conductor.workers.base import Completion, WorkerInfo, failed

SETTINGS_FILE = "conductor.json"


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
        return {self.text(w, a): bool(a.correct) for w, a in self.data.answers[key].items()
                if a.responded}

    def judge(self, key: str, text: str) -> bool:
        return self.judgements(key).get(text or "", False)


def as_query(row: Any) -> Query:
    """A logged row as the runner and the rollout worker read a question (its key as id)."""
    return Query(row.key, row.question,
                 answer_format=row.judge.answer_format if row.judge is not None else "mc")


class LMTrainer:
    kind = "lm"

    def __init__(self, settings: LMTrainingConfig, cost_penalty: float, seed: int = 0):
        self.settings, self.cost_penalty, self.seed = settings, float(cost_penalty), seed

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

    # -- scoring -----------------------------------------------------------------------------
    def rewards(self, conductor: Any, data: Counterfactual, rows: list[Any] | None = None,
                pool: CounterfactualPool | None = None) -> np.ndarray:
        """Each row's reward under the conductor's greedy plans, as served."""
        from ray_conductor.policy.runner import run_conductor

        rows = data.rows if rows is None else rows
        if not rows:
            return np.zeros(0)
        pool = pool or CounterfactualPool(data)
        qs = [as_query(r) for r in rows]
        got = asyncio.run(run_conductor(conductor, qs, pool, temperature=0.0))
        out = []
        for q, (_, trace) in zip(qs, got):
            if trace is None:  # an empty plan: no answer, nothing spent
                out.append(0.0)
                continue
            out.append(float(pool.judge(q.query_id, trace.answer))
                       - self.cost_penalty * trace.cost)
        return np.asarray(out, dtype=np.float64)

    def score(self, policy_dir: Path, data: Counterfactual) -> np.ndarray:
        return self.rewards(self._conductor(policy_dir), data)

    # -- training ----------------------------------------------------------------------------
    def improve(self, policy_dir: Path, data: Counterfactual, out_dir: Path
                ) -> tuple[Path, dict[str, Any]]:
        import torch

        from ray_conductor.rl.grpo import grpo_step
        from ray_conductor.rl.learner import Learner, LearnerConfig
        from ray_conductor.rl.rewards import RewardConfig
        from ray_conductor.rl.rollout import RolloutWorker

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
        first = float(self.rewards(worker.conductor, data, select, pool).mean())
        best = {"reward": first, "iteration": 0, "state": learner.state_dict()}
        curve, steps = [first], []
        qs = [as_query(r) for r in data.rows]
        for it in range(1, s.iterations + 1):
            batch = rng.sample(qs, min(len(qs), s.questions))
            trajs = asyncio.run(worker.rollout(batch, s.group_size, iteration=it,
                                               temperature=s.temperature, seed=self.seed + it))
            step = grpo_step(trajs, learner, lambda v: worker.load_weights(
                learner.state_dict(), v), it - 1, learner.cfg)
            reward = float(self.rewards(worker.conductor, data, select, pool).mean())
            curve.append(reward)
            steps.append({"sampled_reward": float(np.mean([t.reward for t in trajs])),
                          "parsed": float(np.mean([t.parsed for t in trajs])),
                          "loss": step.stats["loss"], "grad_norm": step.stats["grad_norm"]})
            if reward > best["reward"]:
                best = {"reward": reward, "iteration": it, "state": learner.state_dict()}
        with torch.no_grad():  # the best greedy reward, the start included: worse updates dropped
            learner.policy.lm.load_state_dict(best["state"])
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        learner.export_pretrained(str(out_dir))
        (out_dir / SETTINGS_FILE).write_text(json.dumps(conductor_settings(policy_dir)))
        figures = {"rows": len(data), "select_rows": len(select), "start_reward": first,
                   "best_reward": best["reward"], "best_iteration": best["iteration"],
                   "iterations": s.iterations, "micro_batch_size": micro,
                   "curve": curve, "steps": steps,
                   "cost_penalty": self.cost_penalty, "calls_replayed": pool.calls,
                   "wall_s": time.perf_counter() - t0}
        return out_dir, figures

