"""Judge a trained conductor checkpoint (or the base model) beside the baselines on a replay
pool's split, with the conductor settings the run trained with. No Ray: one process.

    python benchmarks/eval_checkpoint.py --run-dir runs/bench_train_quality --limit 0
    python benchmarks/eval_checkpoint.py --run-dir runs/bench_train_quality --base  # untrained

`train_quality.py` judges on the first `eval_limit` test questions to keep its budget; this
re-judges the last checkpoint of a run on more of them (`--limit 0`: the whole split), where
the standard error of an accuracy is smaller (~0.045 at 120 questions, ~0.024 at 431).
Summary: {"conductor": P, "random": P, "best_single": P, "knn": P, "oracle": P, ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def pick(p: dict) -> dict:
    return {k: p[k] for k in ("accuracy", "cost_per_query", "calls_per_query", "parse_rate", "n")}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a training run_dir with a checkpoint")
    ap.add_argument("--base", action="store_true",
                    help="judge the run's base model (the untrained conductor) instead")
    ap.add_argument("--split", default=None, help="default: the run's eval_split")
    ap.add_argument("--limit", type=int, default=0, help="first N questions; 0: all")
    ap.add_argument("--baselines", default="singles,random,knn,oracle")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.errors import ConfigError
    from ray_conductor.eval.evaluate import evaluate_policies
    from ray_conductor.eval.policies import RemotePlanner, make_policies
    from ray_conductor.policy.conductor import ConductorConfig
    from ray_conductor.rl.checkpoint import RunDir
    from ray_conductor.rl.rewards import RewardConfig
    from ray_conductor.rl.rollout import RolloutWorker

    torch.set_num_threads(args.threads)
    latest = RunDir(args.run_dir).latest()
    if latest is None:
        raise ConfigError(f"{args.run_dir!r} holds no complete checkpoint")
    path, state = latest
    run_cfg = state["config"]
    conductor_cfg = ConductorConfig(**run_cfg["conductor"])
    conductor_cfg.model = run_cfg["model"] if args.base else str(path / "model")
    split = args.split or run_cfg["eval_split"]
    data = load_pool(run_cfg["pool"], data_dir=run_cfg["data_dir"])
    queries = sorted(data.queries(split), key=lambda q: q.query_id)
    if args.limit:
        queries = queries[: args.limit]
    pool = ReplayPool(data)
    workers = list(pool.workers())
    planner = RolloutWorker(conductor_cfg, RewardConfig(), pool, data.judge)
    tag = "untrained" if args.base else f"iteration {state['iteration']}"
    policies = [RemotePlanner("conductor", planner.plan_texts)]
    policies += make_policies([b for b in args.baselines.split(",") if b], data, workers,
                              seed=run_cfg["seed"])
    t0 = time.perf_counter()
    reports = asyncio.run(evaluate_policies(policies, queries, pool, data.judge, workers,
                                            progress=False))
    res = {k: r.to_dict() for k, r in reports.items()}
    singles = {k: v for k, v in res.items() if k.startswith("single:")}
    summary = {"conductor": {**pick(res["conductor"]), "checkpoint": tag}}
    summary.update({k: pick(res[k]) for k in ("random", "knn", "oracle") if k in res})
    if singles:
        best = max(singles, key=lambda k: singles[k]["accuracy"])
        summary["best_single"] = {**pick(singles[best]), "worker": best.split(":", 1)[1]}
    report = {
        "summary": summary,
        "conductor_final_workers": res["conductor"].get("final_workers"),
        "policies": res, "checkpoint": str(path), "split": split, "n_queries": len(queries),
        "wall_s": round(time.perf_counter() - t0, 1), "conductor_config": run_cfg["conductor"],
    }
    out = args.out or str(Path(args.run_dir) / f"eval_{'base' if args.base else 'ckpt'}_"
                                                f"{split}_{len(queries)}.json")
    from _bench import write_report

    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
