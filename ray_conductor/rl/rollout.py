"""Rollouts: for a batch of questions, sample a group of G workflows each with the conductor,
execute them through the shared worker pool (at `rollout` priority), score them, and return
trajectories for the learner. The same worker also runs the conductor for evaluation (greedy
plans, executed where its pool is).

`RolloutWorker` is a plain class (testable without Ray); `RolloutActor` is its Ray shell.
With `recursion_depth > 0` the pool is wrapped in a `RecursivePool`, so the conductor may
call itself as a worker, in training and evaluation alike.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any, Callable, Sequence

import ray

from ray_conductor.data.replay import Query
from ray_conductor.policy.conductor import Conductor, ConductorConfig, PlanResult, build_engine
from ray_conductor.policy.runner import run_conductor, with_recursion
from ray_conductor.rl.rewards import RewardConfig, score_plan
from ray_conductor.rl.types import Trajectory
from ray_conductor.runtime import limit_torch_threads
from ray_conductor.workers.base import WorkerInfo, WorkerPool
from ray_conductor.workflow import Trace

WARMUP_SUBTASKS = (
    "Answer the question. End with 'The answer is (X)'.",
    "Solve the problem step by step and give the final answer.",
    "Answer the question.",
)
CHECK_SUBTASK = "Check the earlier answer and give the final answer as 'The answer is (X)'."


class RolloutWorker:
    """Holds a generation engine and a worker pool; turns questions into trajectories.

    `judge(query_id, answer_text) -> bool` decides correctness (replay data or a verifier).
    """

    def __init__(self, conductor_cfg: ConductorConfig, reward_cfg: RewardConfig,
                 pool: WorkerPool, judge: Callable[[str, str], bool], *,
                 concurrency: int = 64, engine: Any = None):
        self.conductor = Conductor(engine or build_engine(conductor_cfg), conductor_cfg)
        self.reward_cfg = reward_cfg
        self.pool = with_recursion(pool, self.conductor)
        self.judge = judge
        self.concurrency = concurrency
        self.weights_version = 0
        # one sampling round (every engine call of a plan_many) or one weight swap at a time,
        # so the version a rollout records is the one that sampled all of its plans
        self._swap = threading.Lock()
        self.swaps: dict[int, dict[str, float]] = {}  # version -> its swap's wait and load times

    def workers(self) -> list[WorkerInfo]:
        return list(self.pool.workers())

    def load_weights(self, state_dict: dict[str, Any], version: int) -> int:
        """Swap the engine's weights between two sampling rounds: an overlapped rollout
        pauses for the swap only (the wait for a round under way is recorded as `wait_s`)."""
        t0 = time.perf_counter()
        with self._swap, self.conductor._lock:
            t1 = time.perf_counter()
            self.conductor.engine.load_state_dict(state_dict)
            self.weights_version = version
            t2 = time.perf_counter()
        self.swaps[version] = {"wait_s": t1 - t0, "load_s": t2 - t1, "t_loaded": time.time()}
        for old in [v for v in self.swaps if v < version - 8]:
            del self.swaps[old]
        return version

    async def wait_for_version(self, version: int, timeout_s: float = 1800.0) -> None:
        """Until weights of at least `version` are loaded: an overlapped rollout of
        iteration k may not start on weights staler than the schedule's bound allows."""
        waited = 0.0
        while self.weights_version < version:
            if waited > timeout_s:
                raise TimeoutError(f"rollout waited {timeout_s:.0f} s for weights version "
                                   f"{version}; it holds {self.weights_version}")
            await asyncio.sleep(0.005)
            waited += 0.005

    async def rollout(self, questions: Sequence[Query], group_size: int, *, iteration: int,
                      temperature: float | None = None, seed: int | None = None,
                      min_version: int = 0) -> list[Trajectory]:
        """G independent first-attempt plans per question (no re-sampling: an unparsable plan
        is a trajectory with the parse-failure reward), executed and scored. A failing engine
        raises `EngineError`: there is nothing to learn from a batch it did not sample.
        Sampling starts once weights of `min_version` or later are loaded; every trajectory
        records the version it was sampled with (`info["weights_version"]`)."""
        t_start = time.time()
        await self.wait_for_version(min_version)
        t_ready = time.time()
        flat = [q for q in questions for _ in range(group_size)]
        plans, version, gen = await asyncio.to_thread(
            self._plan_many, [q.query for q in flat], temperature, seed)
        sem = asyncio.Semaphore(self.concurrency)
        out = list(await asyncio.gather(*(self._score(q, p, iteration, sem, version)
                                          for q, p in zip(flat, plans))))
        t_done = time.time()
        swap = self.swaps.get(version, {})
        timing = {
            "generate_s": gen["t1"] - gen["t0"],  # sampling, wall (CPU shared with the learner)
            "generate_cpu_s": gen["cpu_s"],  # this thread's CPU time while sampling
            "version_wait_s": t_ready - t_start,  # for weights the staleness bound asks for
            "lock_wait_s": gen["t0"] - t_ready,  # behind another round's sampling or a swap
            "workers_s": t_done - gen["t1"],  # executing the plans: waits on worker calls
            "swap_wait_s": swap.get("wait_s", 0.0), "swap_s": swap.get("load_s", 0.0),
            # wall-clock stamps (time.time(), comparable across processes): a timeline
            "clock": {"start": t_start, "ready": t_ready, "gen0": gen["t0"],
                      "gen1": gen["t1"], "done": t_done, "version": version,
                      "loaded": swap.get("t_loaded")},
        }
        for t in out:
            t.info.update(timing)
        return out

    def _plan_many(self, questions: list[str], temperature: float | None, seed: int | None
                   ) -> tuple[list[PlanResult], int, dict[str, float]]:
        """Plans, the weights version that sampled them (no swap falls in between: the whole
        round holds the swap lock) and the round's wall-clock start and end and CPU time."""
        with self._swap:
            t0, cpu0 = time.time(), time.thread_time()
            version = self.weights_version
            plans = self.conductor.plan_many(questions, self.workers(), temperature=temperature,
                                             seed=seed, strict=True)
            gen = {"t0": t0, "t1": time.time(), "cpu_s": time.thread_time() - cpu0}
        return plans, version, gen

    async def _score(self, q: Query, plan: PlanResult, iteration: int,
                     sem: asyncio.Semaphore, version: int) -> Trajectory:
        parsed = not plan.fell_back and plan.n_attempts == 1
        async with sem:
            s = await score_plan(plan.workflow if parsed else None, q.query, q.query_id,
                                 self.pool, self.judge, self.reward_cfg,
                                 answer_format=q.answer_format)
        sample = plan.samples[0]
        return Trajectory.from_sample(
            sample, s.reward, f"{iteration}:{q.query_id}", cost=s.cost, calls=s.calls,
            parsed=s.parsed, correct=s.correct, query_id=q.query_id,
            info={"final_worker": s.final_worker, "text": sample.text,
                  "errors": list(plan.errors), "weights_version": version},
        )

    async def run(self, questions: Sequence[Query], *, temperature: float = 0.0,
                  params: dict[str, Any] | None = None) -> list[tuple[PlanResult, Trace | None]]:
        """Evaluation: one plan per question (greedy by default, re-sampled and falling back as
        configured), executed over this worker's pool (see `policy.runner.run_conductor`)."""
        return await run_conductor(self.conductor, questions, self.pool,
                                   temperature=temperature, params=params,
                                   concurrency=self.concurrency)

    def demonstrations(self, questions: Sequence[Query], seed: int) -> list[Trajectory]:
        """Format warm-up data: for each question a valid plan over uniformly random workers,
        as prompt + plan + EOS with advantage 1. A learner step on these is supervised
        fine-tuning on the plan language; the uniform choice teaches the format without a
        preference for any worker."""
        rng = random.Random(seed)
        offered = self.conductor.offered(self.workers())
        return self.examples(questions, [random_plan(rng, offered, self.conductor.cfg)
                                         for _ in questions], tag="warmup")

    def examples(self, questions: Sequence[Query], workflows: Sequence[Any], *,
                 tag: str = "sft") -> list[Trajectory]:
        """Supervised targets: each question's conductor prompt (as this conductor builds
        it) with `workflows[i]` rendered in the plan language (+ EOS) as the completion,
        advantage 1 (a learner's `sft_step` or `train_step` on them clones the plans)."""
        from ray_conductor.policy.engine import prompt_ids
        from ray_conductor.workflow import render

        tok = self.conductor.engine.tokenizer
        offered = self.conductor.offered(self.workers())
        ids = [w.name for w in offered] if self.conductor.cfg.worker_ids == "index" else None
        out = []
        for q, wf in zip(questions, workflows):
            text = render(wf, ids)
            completion = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            p = prompt_ids(tok, self.conductor.prompt(q.query, offered))
            out.append(Trajectory(p, completion, None, 1.0, f"{tag}:{q.query_id}",
                                  advantage=1.0, parsed=True, query_id=q.query_id,
                                  info={"text": text}))
        return out


def random_plan(rng: random.Random, offered: Sequence[WorkerInfo], cfg: ConductorConfig
                ) -> Any:
    """A valid plan over uniformly random LLM workers: one step, sometimes a solve-then-check
    pair, and with program workers offered also a cascade (two cheap answers, a third worker
    only if they disagree) or a vote of three."""
    from ray_conductor.workflow import Step, Workflow
    from ray_conductor.workflow.programs import VOTE, is_program

    names = [w.name for w in offered if w.name != cfg.self_name and not is_program(w.name)]
    pick = rng.choice
    programs = any(w.name == VOTE for w in offered) and cfg.max_steps >= 4
    r = rng.random()
    if programs and r < 0.2:
        return Workflow((Step(pick(names), pick(WARMUP_SUBTASKS), ()),
                         Step(pick(names), pick(WARMUP_SUBTASKS), ()),
                         Step(pick(names), pick(WARMUP_SUBTASKS), (0, 1), "disagree")))
    if programs and r < 0.35:
        return Workflow(tuple(Step(pick(names), pick(WARMUP_SUBTASKS), ()) for _ in range(3))
                        + (Step(VOTE, "Give the most common answer.", "all"),))
    steps = [Step(pick(names), pick(WARMUP_SUBTASKS), ())]
    if r > 0.75:
        steps.append(Step(pick(names), CHECK_SUBTASK, "all"))
    return Workflow(tuple(steps))


@ray.remote
class RolloutActor:
    """Thin Ray shell over `RolloutWorker`. `pool` is a `WorkerPool` that pickles (the proxies'
    `RayWorkerPool`) or a zero-argument factory run here (an in-process replay pool); the judge
    comes from a factory, so replay data is loaded in this process. Async: nothing here blocks
    the event loop on `ray.get`."""

    def __init__(self, conductor_cfg, reward_cfg, pool, judge_factory, concurrency: int = 64):
        limit_torch_threads()
        pool = pool() if callable(pool) and not hasattr(pool, "complete") else pool
        self.w = RolloutWorker(conductor_cfg, reward_cfg, pool, judge_factory(),
                               concurrency=concurrency)

    async def rollout(self, questions, group_size, iteration, temperature=None, seed=None,
                      min_version=0):
        return await self.w.rollout(questions, group_size, iteration=iteration,
                                    temperature=temperature, seed=seed, min_version=min_version)

    async def run(self, questions, temperature=0.0, params=None):
        return await self.w.run(questions, temperature=temperature, params=params)

    async def load_weights(self, state_dict, version):
        return await asyncio.to_thread(self.w.load_weights, state_dict, version)

    async def demonstrations(self, questions, seed):
        return await asyncio.to_thread(self.w.demonstrations, questions, seed)

    async def examples(self, questions, workflows):
        return await asyncio.to_thread(self.w.examples, questions, workflows)

    async def workers(self):
        return self.w.workers()

    async def ready(self):
        return True
