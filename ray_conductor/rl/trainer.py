"""The training loop, top to bottom: sample questions, roll out (sample plans, execute them
through the shared worker proxies, score), update the learners, sync weights to the rollout
workers, log, checkpoint. At the end, evaluate the trained conductor beside the baselines.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_conductor.config import RayConfig, default_data_dir, to_dict
from ray_conductor.errors import ConfigError
from ray_conductor.graph import GraphConfig
from ray_conductor.policy.conductor import ConductorConfig
from ray_conductor.rl.learner import LearnerConfig
from ray_conductor.rl.rewards import RewardConfig


@dataclass
class TrainConfig:
    model: str = "smollm2"  # the conductor LM, for both rollouts and learners
    pool: str = "demo"
    split: str = "train"
    data_dir: str = field(default_factory=default_data_dir)
    backend: str = "ray"  # ray: WorkerProxy actors; local: in-process replay pool per rollout
    iterations: int = 20
    warmup_steps: int = 0  # supervised steps on random valid plans before GRPO (format only)
    warmup_batch: int = 8
    warmup_lr: float | None = None  # the warm-up's learning rate (None: learner.lr)
    questions_per_iter: int = 4
    group_size: int = 8
    run_dir: str = "runs/conductor"
    registry: str | None = None  # policy registry checkpoints are published to (run_dir/registry)
    promote: bool = True  # promote the final checkpoint in the registry
    checkpoint_every: int = 5
    keep_checkpoints: int = 3
    resume: bool = False  # continue from the last checkpoint in run_dir
    overwrite: bool = False  # start afresh in a run_dir that holds an earlier run
    log_samples: bool = True  # every sampled plan, its reward and errors, in samples.jsonl
    eval_at_start: bool = False
    eval_at_end: bool = True
    eval_split: str = "test"
    eval_limit: int | None = 200
    eval_baselines: list[str] = field(default_factory=lambda: ["singles", "random", "knn",
                                                               "oracle"])
    seed: int = 0
    progress: bool = True
    conductor: ConductorConfig = field(default_factory=lambda: ConductorConfig(max_resamples=0))
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # the actors: rollout and learner counts and resources, torch threads, the proxies
    graph: GraphConfig = field(default_factory=GraphConfig)


def pick_questions(queries: list, iteration: int, n: int, seed: int) -> list:
    """The iteration's questions: a deterministic function of (seed, iteration), so a resumed
    run sees the same sequence as an uninterrupted one."""
    rng = random.Random(f"{seed}:{iteration}")
    return rng.sample(queries, min(n, len(queries)))


def rollout_metrics(trajs: list) -> dict[str, float]:
    n = max(len(trajs), 1)
    return {
        "reward_mean": sum(t.reward for t in trajs) / n,
        "parse_rate": sum(t.parsed for t in trajs) / n,
        "accuracy": sum(t.correct for t in trajs) / n,
        "cost_per_plan": sum(t.cost for t in trajs) / n,
        "calls_per_plan": sum(t.calls for t in trajs) / n,
        "completion_tokens": sum(len(t.completion_ids) for t in trajs) / n,
        "trajectories": len(trajs),
        **worker_shares(trajs),
    }


def worker_shares(trajs: list) -> dict[str, float]:
    """`workers/<name>`: the share of executed plans whose answer came from each worker, the
    quantity GRPO moves when it learns (or collapses onto) a routing preference."""
    finals = [t.info.get("final_worker") for t in trajs]
    finals = [w for w in finals if w]
    return {f"workers/{w}": finals.count(w) / len(finals) for w in sorted(set(finals))}


def sample_rows(trajs: list) -> list[dict[str, Any]]:
    """What `samples.jsonl` keeps of each trajectory: the plan text and how it fared."""
    return [{"query_id": t.query_id, "reward": t.reward, "parsed": t.parsed,
             "correct": t.correct, "cost": t.cost, "calls": t.calls,
             "final_worker": t.info.get("final_worker"), "text": t.info.get("text"),
             "errors": t.info.get("errors") or []} for t in trajs]


def registry_path(cfg: TrainConfig) -> Path:
    return Path(cfg.registry) if cfg.registry else Path(cfg.run_dir) / "registry"


def train(cfg: TrainConfig) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.rl.checkpoint import RunDir
    from ray_conductor.rl.rollout_group import build_training_graph
    from ray_conductor.runtime import init_ray

    if cfg.iterations < 1 or cfg.group_size < 2:
        raise ConfigError("iterations must be >= 1 and group_size >= 2 (GRPO compares a group)")
    cfg.conductor.model = cfg.learner.model = cfg.model
    run = RunDir(cfg.run_dir)
    if run.is_used() and not cfg.resume:
        if not cfg.overwrite:
            raise ConfigError(f"run_dir {cfg.run_dir!r} holds an earlier run: pass resume=true "
                              "to continue it, overwrite=true to start afresh, or another run_dir")
        run.clear()
    init_ray(cfg.ray)
    data = load_pool(cfg.pool, data_dir=cfg.data_dir)
    train_q = select_queries(data, cfg.split)
    graph = build_training_graph(cfg, data)
    registry = PolicyRegistry(registry_path(cfg))

    start, version = 0, 0
    latest = run.latest() if cfg.resume else None
    if latest is not None:
        path, state = latest
        graph.learners.load(str(path / "learner.pt"))
        start, version = state["iteration"] + 1, state["weights_version"]
        graph.sync_weights(version)
        print(f"resumed from {path} (iteration {state['iteration']})")
    if cfg.resume:
        run.truncate_metrics(start)  # iterations after the checkpoint are done again
    result: dict[str, Any] = {"run_dir": str(run.path), "start_iteration": start}
    if cfg.eval_at_start and start == 0:
        result["eval_start"] = evaluate_conductor(cfg, graph, data, tag="untrained")
    elif cfg.eval_at_start and eval_report_path(cfg.run_dir, "untrained").exists():
        # a resumed run: the untrained conductor was judged before the stop
        result["eval_start"] = json.loads(eval_report_path(cfg.run_dir, "untrained").read_text())

    if start == 0 and cfg.warmup_steps > 0:
        version = warmup(cfg, graph, run, train_q)

    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations,
               desc="train", disable=not cfg.progress)
    published = None
    for it in bar:
        t0 = time.perf_counter()
        questions = pick_questions(train_q, it, cfg.questions_per_iter, cfg.seed)  # sample
        trajs = graph.rollouts.rollout(questions, cfg.group_size, it,
                                       seed=cfg.seed * 100003 + it)  # execute + score
        t_roll = time.perf_counter() - t0
        stats = graph.learners.train_step(trajs)  # update
        version += 1
        graph.sync_weights(version)  # sync
        m = {**rollout_metrics(trajs), **{f"learner/{k}": v for k, v in stats.items()},
             "time/rollout_s": t_roll, "time/iteration_s": time.perf_counter() - t0}
        run.log(it, m)  # log
        if cfg.log_samples:
            run.log_samples(it, sample_rows(trajs))
        bar.set_postfix(reward=f"{m['reward_mean']:.3f}", parse=f"{m['parse_rate']:.2f}")
        if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:  # checkpoint
            tmp = run.begin_checkpoint(it)
            graph.learners.save(str(tmp / "learner.pt"))  # resume state: weights + optimizer
            graph.learners.export_pretrained(str(tmp / "model"))  # conductor.model=<this dir>
            state = {"iteration": it, "weights_version": version, "config": to_dict(cfg)}
            final = run.commit_checkpoint(tmp, it, state, keep=cfg.keep_checkpoints)
            published = registry.publish(final / "model", kind="lm", meta={
                **state, "reward_mean": m["reward_mean"], "run_dir": str(run.path)})
    run.close()
    if published is not None and cfg.promote:
        registry.promote(published.version, reason=f"end of training run {run.path}")
    result["registry"] = {"path": str(registry.root),
                          "promoted": published.version if published and cfg.promote else None}
    if cfg.eval_at_end:
        result["eval"] = evaluate_conductor(cfg, graph, data, tag="trained", baselines=True)
    result["metrics"] = run.metrics()
    graph.shutdown()  # rollouts and learners; the worker proxies stay for other users
    return result


def warmup(cfg: TrainConfig, graph, run, train_q: list) -> int:
    """A small model cannot write the plan language at first, and GRPO learns nothing from a
    group whose rewards are all 0. A few supervised steps on random *valid* plans teach the
    format (not a worker preference); logged as iterations -warmup_steps..-1. It may run at
    its own rate (`warmup_lr`): a rate that learns the format in a few steps also makes GRPO
    collapse onto whichever worker the first parsable plans happened to name."""
    if cfg.warmup_lr:
        graph.learners.set_lr(cfg.warmup_lr)
    for s in range(cfg.warmup_steps):
        it = s - cfg.warmup_steps
        questions = pick_questions(train_q, it, cfg.warmup_batch, cfg.seed)
        stats = graph.learners.train_step(graph.rollouts.demonstrations(questions, cfg.seed + s))
        run.log(it, {"warmup": 1, **{f"learner/{k}": v for k, v in stats.items()}})
    if cfg.warmup_lr:
        graph.learners.set_lr(cfg.learner.lr)
    graph.sync_weights(cfg.warmup_steps)
    return cfg.warmup_steps


def eval_report_path(run_dir: str, tag: str) -> Path:
    """Where `evaluate_conductor` writes its report for `tag` (untrained, trained)."""
    return Path(run_dir) / f"eval_{tag}.json"


def evaluate_conductor(cfg: TrainConfig, graph, data, *, tag: str,
                       baselines: bool = False) -> dict[str, Any]:
    """The conductor's greedy plans, run by the rollout actors over their own pool (the shared
    proxies when backend=ray), and optionally the baselines over the same pool, judged on the
    eval split by `eval.judge.judge_policies`."""
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.eval.judge import judge_policies
    from ray_conductor.eval.policies import ConductorPolicy, make_policies

    queries = select_queries(data, cfg.eval_split, cfg.eval_limit)
    pool = ReplayPool(data)
    if cfg.backend == "ray":
        from ray_conductor.graph import make_ray_pool
        from ray_conductor.workers.config import WorkerPoolConfig, replay_workers

        pool = make_ray_pool(graph.spec, WorkerPoolConfig(
            workers=replay_workers(cfg.pool, data.worker_infos()), replay=cfg.pool),
            priority="rollout")
    policies = [ConductorPolicy(f"conductor:{tag}",
                                lambda qs, _pool, params: graph.rollouts.run(qs, params))]
    if baselines:
        policies += make_policies(list(cfg.eval_baselines), data, list(pool.workers()),
                                  seed=cfg.seed)
    return judge_policies(policies, data, queries, pool, out=eval_report_path(cfg.run_dir, tag),
                          title=f"{cfg.pool} ({tag})", progress=cfg.progress,
                          meta={"pool": cfg.pool, "split": cfg.eval_split})
