"""The training loop, top to bottom: sample questions, roll out (sample plans, execute them
through the shared worker proxies, score), update the learners, sync weights to the rollout
workers, log, checkpoint. At the end, evaluate the trained conductor beside the baselines.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_conductor.config import (
    RayConfig, check, default_data_dir, opt, storage_opt, to_dict)
from ray_conductor.data.splits import SPLITS
from ray_conductor.errors import ConfigError
from ray_conductor.graph import GraphConfig
from ray_conductor.policy.conductor import ConductorConfig
from ray_conductor.rl.learner import LearnerConfig
from ray_conductor.rl.rewards import RewardConfig
from ray_conductor.rl.warm_start import WarmStartConfig


@dataclass
class TrainConfig:
    """Train the conductor with GRPO on Ray: roll out, score, update, sync, checkpoint."""

    model: str = opt("smollm2", "the conductor LM for rollouts and learners: smollm2, "
                     "tiny-smollm2, a local HF directory or registry:DIR", nonempty=True)
    pool: str = opt("demo", "the recorded pool the workers answer from (as for eval)",
                    nonempty=True)
    split: str = opt("train", "the questions trained on", choices=SPLITS)
    data_dir: str = opt(factory=default_data_dir,
                        help="where bare pool names (mmlu_pro, routerbench) are found")
    backend: str = opt("ray", "ray: the WorkerProxy actors; local: a replay pool per rollout "
                       "actor", choices=("ray", "local"))
    iterations: int = opt(20, "GRPO iterations in all (a resumed run counts the done ones)",
                          min=1)
    warmup_steps: int = opt(0, "supervised steps on random valid plans before GRPO (format "
                            "only)", min=0)
    warmup_batch: int = opt(8, "questions per warm-up step", min=1)
    warmup_lr: float | None = opt(None, "the warm-up's learning rate (null: learner.lr)", gt=0)
    warm_start: WarmStartConfig = opt(factory=WarmStartConfig, help="behaviour cloning of a "
                                      "teacher's programs (the lite tier's) before GRPO")
    overlap: bool = opt(False, "sample iteration k+1 while the learners update on k "
                        "(false: the synchronous loop)")
    max_staleness: int = opt(1, "with overlap: updates a sample's weights may lag the "
                             "learner's", min=1)
    questions_per_iter: int = opt(4, "questions per iteration", min=1)
    group_size: int = opt(8, "plans sampled per question; GRPO compares a group", min=2)
    storage: str | None = storage_opt()
    run_dir: str = opt("runs/conductor", "metrics, samples, checkpoints and evaluations",
                       nonempty=True)
    registry: str | None = opt(None, "policy registry checkpoints are published to (null: "
                               "run_dir/registry)")
    promote: bool = opt(True, "promote the final checkpoint in the registry")
    checkpoint_every: int = opt(5, "iterations between checkpoints", min=1)
    keep_checkpoints: int = opt(3, "checkpoints kept in run_dir", min=1)
    resume: bool = opt(False, "continue from the last checkpoint in run_dir")
    overwrite: bool = opt(False, "start afresh in a run_dir that holds an earlier run")
    log_samples: bool = opt(True, "every sampled plan, its reward and errors, in samples.jsonl")
    eval_at_start: bool = opt(False, "judge the untrained conductor first")
    eval_at_end: bool = opt(True, "judge the trained conductor beside eval_baselines")
    eval_split: str = opt("test", "the questions the evaluations judge", choices=SPLITS)
    eval_limit: int | None = opt(200, "only the first N questions of eval_split (null: all)",
                                 min=1)
    eval_baselines: list[str] = opt(["singles", "random", "knn", "oracle"],
                                    "baseline policies judged beside the conductor (as eval's "
                                    "policies=)")
    seed: int = opt(0, "seed of question sampling and rollouts")
    progress: bool = opt(True, "progress bars on stderr")
    conductor: ConductorConfig = opt(factory=lambda: ConductorConfig(max_resamples=0),
                                     help="the policy's planning settings")
    learner: LearnerConfig = opt(factory=LearnerConfig, help="optimiser and loss")
    reward: RewardConfig = opt(factory=RewardConfig, help="the reward")
    ray: RayConfig = opt(factory=RayConfig, help="how to reach or start Ray")
    # the actors: rollout and learner counts and resources, torch threads, the proxies
    graph: GraphConfig = opt(factory=GraphConfig, help="the actors")


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
        **rollout_times(trajs),
        **worker_shares(trajs),
    }


ROLLOUT_TIMES = ("generate_s", "generate_cpu_s", "version_wait_s", "lock_wait_s", "workers_s",
                 "swap_wait_s", "swap_s")


def rollout_times(trajs: list) -> dict[str, float]:
    """Where a rollout's time went (`RolloutWorker.rollout`'s `info`): sampling (wall and CPU),
    the waits for weights, for the engine and on worker calls, and the swap of the weights it
    sampled with; the slowest of the rollout actors' parts."""
    return {f"time/{k}": max((t.info.get(k, 0.0) for t in trajs), default=0.0)
            for k in ROLLOUT_TIMES}


def timeline(trajs: list, t_step: float, times: dict[str, float]) -> dict[str, list]:
    """Wall-clock intervals (time.time(), comparable across processes) of one iteration:
    each rollout part's sampling and worker calls, this step's update and sync, and when the
    weights a part sampled with (`loaded`: [version, time]) landed in its actor; what
    `benchmarks/async_rollouts.py` lays side by side to find idle and overlapped time."""
    parts = {tuple(sorted(c.items())): c for t in trajs if (c := t.info.get("clock"))}
    t_update = t_step + times.get("update_s", 0.0)
    return {"generate": [[c["gen0"], c["gen1"]] for c in parts.values()],
            "workers": [[c["gen1"], c["done"]] for c in parts.values()],
            "update": [[t_step, t_update]],
            "sync": [[t_update, t_update + times.get("sync_s", 0.0)]],
            "loaded": [[c["version"], c["loaded"]] for c in parts.values() if c.get("loaded")]}


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


def check_train(cfg: TrainConfig) -> tuple[Any, list, Any]:
    """Everything that can be wrong with a run, checked before anything is deleted, written
    or started (no directory, no Ray, no model load): ranges, the run directory and
    registry, the actor graph, the model, the pool and its splits, the baselines. Returns
    (pool data, the training questions, the `RunDir`)."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.eval.command import check_policies
    from ray_conductor.graph import GraphSpec
    from ray_conductor.policy.loading import check_model
    from ray_conductor.rl.checkpoint import RunDir

    check(cfg, TrainConfig)
    run = RunDir(cfg.run_dir)
    check_run_dir(cfg, run)
    GraphSpec.from_config(cfg.graph, cfg.ray.namespace)
    check_actors(cfg)
    check_model(cfg.model, engine=cfg.conductor.engine)
    data = load_pool(cfg.pool, data_dir=cfg.data_dir)
    train_q = select_queries(data, cfg.split)
    if cfg.eval_at_start or cfg.eval_at_end:
        select_queries(data, cfg.eval_split, cfg.eval_limit)
    if cfg.eval_at_end:
        check_policies(list(cfg.eval_baselines), data, list(data.models))
    return data, train_q, run


def check_actors(cfg: TrainConfig) -> None:
    """What would otherwise fail inside a rollout actor, after Ray and the proxies started."""
    from ray_conductor.rl.rewards import REWARDS

    if cfg.reward.name not in REWARDS:
        raise ConfigError(f"reward.name={cfg.reward.name}: must be one of "
                          f"{', '.join(sorted(REWARDS))}")
    if str(cfg.conductor.device).startswith("cuda") and not cfg.graph.rollout.num_gpus:
        raise ConfigError(f"conductor.device={cfg.conductor.device} needs a GPU in each rollout "
                          "actor: set graph.rollout.num_gpus=1 (Ray hides GPUs from actors "
                          "that ask for none), or conductor.device=cpu")


def check_run_dir(cfg: TrainConfig, run: Any) -> None:
    """run_dir and the registry: directories we can create or write, outside the pool's
    inputs; an earlier run in run_dir needs resume=true or overwrite=true."""
    from ray_conductor.data.pools import parse_spec

    inputs = [p.expanduser().resolve() for p in parse_spec(cfg.pool, cfg.data_dir)[1]]
    for key, path in (("run_dir", Path(cfg.run_dir)), ("registry", registry_path(cfg))):
        _check_dir(key, path.expanduser())
        target = path.expanduser().resolve()
        for src in inputs:
            if target.is_relative_to(src):  # the input itself, or inside its directory
                raise ConfigError(f"{key}={path} is inside the pool's input {src}: a run never "
                                  f"writes among its inputs; choose another {key}=")
    if run.is_used() and not cfg.resume and not cfg.overwrite:
        raise ConfigError(f"run_dir {cfg.run_dir!r} holds an earlier run: pass resume=true "
                          "to continue it, overwrite=true to start afresh, or another run_dir")


def _check_dir(key: str, path: Path) -> None:
    """`path` is a directory we can write, or one we can create."""
    from ray_conductor.eval.report import check_writable

    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is a file, not a directory; choose another {key}=")
    check_writable(key, path)


def train(cfg: TrainConfig, pool: Any = None) -> dict[str, Any]:
    """`pool`: a zero-argument factory of the rollout actors' worker pool (default: the one
    `cfg.backend` names)."""
    from ray_conductor.rl.rollout_group import build_training_graph
    from ray_conductor.runtime import init_ray

    data, train_q, run = check_train(cfg)
    cfg.conductor.model = cfg.learner.model = cfg.model
    init_ray(cfg.ray)
    graph = build_training_graph(cfg, data, pool)
    if run.is_used() and not cfg.resume:
        run.clear()  # overwrite=true: only now, with every check passed and the actors up
    run.prepare()
    try:
        return _train(cfg, graph, data, train_q, run)
    finally:
        run.close()  # TensorBoard flushed, this run's unfinished checkpoint removed


def _train(cfg: TrainConfig, graph: Any, data: Any, train_q: list, run: Any) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.rl import schedule
    from ray_conductor.rl.grpo import grpo_step
    from ray_conductor.rl.rollout_group import gather

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
    if start == 0 and cfg.warm_start.source:
        result["warm_start"] = warm_start(cfg, graph, data, run, train_q)
        version = result["warm_start"]["version"] = version + 1
        graph.sync_weights(version)

    def submit(it: int, min_version: int) -> list:
        questions = pick_questions(train_q, it, cfg.questions_per_iter, cfg.seed)  # sample
        return graph.rollouts.submit(questions, cfg.group_size, it,  # execute + score
                                     seed=cfg.seed * 100003 + it, min_version=min_version)

    bound = cfg.max_staleness if cfg.overlap else 0  # 0: the synchronous loop
    syncs: list = []  # an overlapped loop's last weight swap, not waited for

    def sync(v: int) -> None:
        refs = graph.sync_weights(v, wait=not cfg.overlap)
        if cfg.overlap:  # the previous swap has landed (a rollout waited for it): errors now
            gather(syncs)
            syncs[:] = refs

    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations,
               desc="train", disable=not cfg.progress)
    published = None
    t0 = time.perf_counter()
    batches = schedule.rollouts(submit, graph.rollouts.collect, start, cfg.iterations,
                                version0=version, bound=bound)
    for it, trajs in batches:
        t_roll = time.perf_counter() - t0  # the wait for this iteration's rollouts
        t_step = time.time()
        step = grpo_step(trajs, graph.learners, sync, version, cfg.learner)  # update + sync
        version = step.version
        m = {**rollout_metrics(trajs), **{f"learner/{k}": v for k, v in step.stats.items()},
             "staleness": step.staleness, "weights_version": version, "time/rollout_s": t_roll,
             **{f"time/{k}": v for k, v in step.times.items()},
             "time/iteration_s": time.perf_counter() - t0,
             "clock": timeline(trajs, t_step, step.times)}
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
        t0 = time.perf_counter()
    gather(syncs)  # the last swap landed (and raised, if it failed) before evaluation
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


def warm_start(cfg: TrainConfig, graph, data, run, train_q: list) -> dict[str, Any]:
    """Behaviour cloning of the teacher's programs (`warm_start.source`: the lite tier's, or a
    program head's) on every training question: the teacher's plan for it, rendered in the
    plan language, as the target of the LM's own prompt; `warm_start.epochs` passes of
    `sft_step`. Logged as iterations -steps..-1 (after a format warm-up's)."""
    from ray_conductor.rl.grpo import sft_epochs
    from ray_conductor.rl.warm_start import balanced, program_key, teacher_programs

    ws, t0 = cfg.warm_start, time.perf_counter()
    programs = teacher_programs(ws.source, data, cfg.split)
    qs = [q for q in train_q if q.query_id in programs][:ws.limit]
    keys = [program_key(programs[q.query_id]) for q in qs]
    idx = balanced(keys, ws.balance, cfg.seed)
    qs, drawn = [qs[i] for i in idx], [keys[i] for i in idx]
    examples = graph.rollouts.examples(qs, [programs[q.query_id] for q in qs])
    t_targets = time.perf_counter() - t0
    steps = ws.epochs * -(-len(examples) // ws.batch)
    if ws.lr:
        graph.learners.set_lr(ws.lr)
    curve = sft_epochs(examples, graph.learners, epochs=ws.epochs, batch=ws.batch,
                       seed=cfg.seed, log=lambda s, st: run.log(s - steps, {
                           "warm_start": 1, **{f"learner/{k}": v for k, v in st.items()}}))
    if ws.lr:
        graph.learners.set_lr(cfg.learner.lr)
    return {"examples": len(examples), "steps": steps, "epoch_loss": curve,
            "targets_s": t_targets, "wall_s": time.perf_counter() - t0,
            "balance": ws.balance, "programs": _top(keys), "drawn": _top(drawn)}


def _top(keys: list[str], n: int = 8) -> dict[str, int]:
    return dict(Counter(keys).most_common(n))


def eval_report_path(run_dir: str, tag: str) -> Path:
    """Where `evaluate_conductor` writes its report for `tag` (untrained, trained)."""
    return Path(run_dir) / f"eval_{tag}.json"


def evaluate_conductor(cfg: TrainConfig, graph, data, *, tag: str,
                       baselines: bool = False) -> dict[str, Any]:
    """The conductor's greedy plans, run by the rollout actors over their own pool (the shared
    proxies when backend=ray), and optionally the baselines over the same pool, judged on the
    eval split by `eval.judge.judge_policies`."""
    from ray_conductor.data.selection import select_queries
    from ray_conductor.eval.judge import judge_policies
    from ray_conductor.eval.policies import ConductorPolicy, make_policies
    from ray_conductor.graph import worker_pool

    queries = select_queries(data, cfg.eval_split, cfg.eval_limit)
    pool = worker_pool(cfg, data, "rollout", spec=graph.spec)
    policies = [ConductorPolicy(f"conductor:{tag}",
                                lambda qs, _pool, params: graph.rollouts.run(qs, params))]
    if baselines:
        policies += make_policies(list(cfg.eval_baselines), data, list(pool.workers()),
                                  seed=cfg.seed)
    return judge_policies(policies, data, queries, pool, out=eval_report_path(cfg.run_dir, tag),
                          title=f"{cfg.pool} ({tag})", progress=cfg.progress,
                          meta={"pool": cfg.pool, "split": cfg.eval_split})
