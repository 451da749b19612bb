"""Rollouts: for a batch of questions, sample a group of G workflows each with the conductor,
execute them through the shared worker pool (at `rollout` priority), score them, and return
trajectories for the learner.

`RolloutWorker` is a plain class (testable without Ray); `RolloutActor` is its Ray shell.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import ray

from ray_conductor.policy.conductor import Conductor, ConductorConfig, PlanResult, build_engine
from ray_conductor.rl.rewards import RewardConfig, reward
from ray_conductor.rl.types import Trajectory
from ray_conductor.runtime import limit_torch_threads
from ray_conductor.workers.base import WorkerInfo, WorkerPool
from ray_conductor.workflow import execute


WARMUP_SUBTASKS = (
    "Answer the question. End with 'The answer is (X)'.",
    "Solve the problem step by step and give the final answer.",
    "Answer the question.",
)
CHECK_SUBTASK = "Check the earlier answer and give the final answer as 'The answer is (X)'."


@dataclass
class Question:
    """What a rollout needs of a query: the id (for replay and judging) and the text."""

    query_id: str
    query: str


class RolloutWorker:
    """Holds a generation engine and a worker pool; turns questions into trajectories.

    `judge(query_id, answer_text) -> bool` decides correctness (replay data or a verifier).
    """

    def __init__(self, conductor_cfg: ConductorConfig, reward_cfg: RewardConfig,
                 pool: WorkerPool, judge: Callable[[str, str], bool], *,
                 concurrency: int = 64, engine: Any = None):
        self.conductor = Conductor(engine or build_engine(conductor_cfg), conductor_cfg)
        self.reward_cfg = reward_cfg
        self.pool = pool
        self.judge = judge
        self.concurrency = concurrency
        self.weights_version = 0

    def workers(self) -> list[WorkerInfo]:
        return list(self.pool.workers())

    def load_weights(self, state_dict: dict[str, Any], version: int) -> int:
        self.conductor.engine.load_state_dict(state_dict)
        self.weights_version = version
        return version

    async def rollout(self, questions: Sequence[Question], group_size: int, *, iteration: int,
                      temperature: float | None = None, seed: int | None = None
                      ) -> list[Trajectory]:
        """G independent first-attempt plans per question (no re-sampling: an unparsable plan
        is a trajectory with the parse-failure reward), executed and scored."""
        flat = [q for q in questions for _ in range(group_size)]
        plans = await asyncio.to_thread(
            self.conductor.plan_many, [q.query for q in flat], self.workers(),
            temperature=temperature, seed=seed)
        sem = asyncio.Semaphore(self.concurrency)
        trajs = await asyncio.gather(*(self._score(q, p, iteration, sem)
                                       for q, p in zip(flat, plans)))
        return [t for t in trajs if t is not None]

    async def _score(self, q: Question, plan: PlanResult, iteration: int,
                     sem: asyncio.Semaphore) -> Trajectory | None:
        if not plan.samples:  # the engine failed: nothing to learn from
            return None
        sample = plan.samples[0]
        parsed = not plan.fell_back and plan.n_attempts == 1
        correct, cost, calls, final = False, 0.0, 0, None
        if parsed and len(plan.workflow):
            async with sem:
                trace = await execute(plan.workflow, q.query, self.pool, query_id=q.query_id)
            correct = bool(self.judge(q.query_id, trace.answer))
            cost, calls, final = trace.cost, trace.calls, trace.final_worker
        r = reward(parsed, correct, cost, calls, self.reward_cfg)
        return Trajectory.from_sample(
            sample, r, f"{iteration}:{q.query_id}", cost=cost, calls=calls, parsed=parsed,
            correct=correct, query_id=q.query_id,
            info={"final_worker": final, "text": sample.text, "errors": list(plan.errors),
                  "weights_version": self.weights_version},
        )

    def demonstrations(self, questions: Sequence[Question], seed: int) -> list[Trajectory]:
        """Format warm-up data: for each question a valid plan over uniformly random workers
        (one step, sometimes a solve-then-check pair), as prompt + plan + EOS with advantage 1.
        A learner step on these is supervised fine-tuning on the plan language; the uniform
        choice teaches the format without a preference for any worker."""
        from ray_conductor.policy.engine import prompt_ids
        from ray_conductor.workflow import Step, Workflow, render

        rng = random.Random(seed)
        tok = self.conductor.engine.tokenizer
        offered = self.conductor.offered(self.workers())
        names = [w.name for w in offered if w.name != self.conductor.cfg.self_name]
        out = []
        for q in questions:
            steps = [Step(rng.choice(names), rng.choice(WARMUP_SUBTASKS), ())]
            if rng.random() < 0.25:
                steps.append(Step(rng.choice(names), CHECK_SUBTASK, "all"))
            text = render(Workflow(tuple(steps)), [w.name for w in offered])
            completion = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            p = prompt_ids(tok, self.conductor.prompt(q.query, offered))
            out.append(Trajectory(p, completion, None, 1.0, f"warmup:{q.query_id}",
                                  advantage=1.0, parsed=True, query_id=q.query_id))
        return out

    def plan_texts(self, questions: Sequence[str]) -> list[dict[str, Any]]:
        """Greedy plans for evaluation, as plain data (workflow text, fell_back, attempts)."""
        from ray_conductor.workflow import render

        plans = self.conductor.plan_many(list(questions), self.workers(), temperature=0.0)
        return [{"workflow": render(p.workflow) if len(p.workflow) else "",
                 "fell_back": p.fell_back, "attempts": p.n_attempts, "errors": p.errors}
                for p in plans]


@ray.remote
class RolloutActor:
    """Thin Ray shell over `RolloutWorker`. It builds its pool and judge from picklable
    factories, so litellm providers and replay data are set up in this process."""

    def __init__(self, conductor_cfg, reward_cfg, pool_factory, judge_factory,
                 concurrency: int = 64):
        limit_torch_threads()
        self.w = RolloutWorker(conductor_cfg, reward_cfg, pool_factory(), judge_factory(),
                               concurrency=concurrency)

    async def rollout(self, questions, group_size, iteration, temperature=None, seed=None):
        return await self.w.rollout(questions, group_size, iteration=iteration,
                                    temperature=temperature, seed=seed)

    def load_weights(self, state_dict, version):
        return self.w.load_weights(state_dict, version)

    def plan_texts(self, questions):
        return self.w.plan_texts(questions)

    def demonstrations(self, questions, seed):
        return self.w.demonstrations(questions, seed)

    def ready(self):
        return True
