"""Train the default conductor on an MMLU-Pro replay pool's train split for a fixed budget,
then judge it on the test split beside the baselines.

    python benchmarks/train_quality.py --out reports/bench_train_quality.json [key=value ...]

Summary: {"untrained": P, "trained": P, "random": P, "best_single": P, "knn": P, "oracle": P},
each P = {"accuracy", "cost_per_query"}. Extra `key=value` arguments override the training
config (see configs/train_cpu.yaml), e.g. `iterations=20 pool=mmlu_pro:../shared/data/mmlu_pro`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# The documented CPU budget: a format warm-up (10 supervised steps on random valid plans), then
# 4 GRPO iterations, on prompts that show the conductor the first 400 characters of each
# question; judged on 60 test questions. About 30 minutes on a (busy) 2-core machine.
BUDGET = [
    "warmup_steps=10", "warmup_batch=8", "iterations=4", "questions_per_iter=2", "group_size=4",
    "learner.lr=1e-4", "conductor.temperature=0.7", "conductor.few_shot=false",
    "conductor.max_question_chars=400", "conductor.max_new_tokens=48", "eval_at_start=true",
    "eval_limit=60", "eval_baselines=[singles,random,knn,oracle]", "checkpoint_every=100",
    "progress=false", "backend=local",
]


def pick(p: dict) -> dict:
    return {"accuracy": p["accuracy"], "cost_per_query": p["cost_per_query"],
            "calls_per_query": p["calls_per_query"], "parse_rate": p["parse_rate"], "n": p["n"]}


def summarize(result: dict) -> dict:
    start = result["eval_start"]["policies"]
    end = result["eval"]["policies"]
    singles = {k: v for k, v in end.items() if k.startswith("single:")}
    best = max(singles, key=lambda k: singles[k]["accuracy"])
    return {
        "untrained": pick(start["conductor:untrained"]),
        "trained": pick(end["conductor:trained"]),
        "random": pick(end["random"]),
        "best_single": {**pick(singles[best]), "worker": best.split(":", 1)[1]},
        "knn": pick(end["knn"]),
        "oracle": pick(end["oracle"]),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/bench_train_quality.json")
    ap.add_argument("--run-dir", default="runs/bench_train_quality")
    args, overrides = ap.parse_known_args(argv)

    from ray_conductor.config import load, to_dict
    from ray_conductor.rl.trainer import TrainConfig, train

    cfg = load(TrainConfig, ["config=train_cpu", *BUDGET, f"run_dir={args.run_dir}",
                             "overwrite=true", *overrides])
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    summary = summarize(result)
    rows = [r for r in result["metrics"] if r["iteration"] >= 0]
    report = {
        "summary": summary,
        "trained_beats_untrained": summary["trained"]["accuracy"] > summary["untrained"]["accuracy"],
        "trained_beats_random": summary["trained"]["accuracy"] > summary["random"]["accuracy"],
        "wall_s": round(wall, 1),
        "curve": [{k: r.get(k) for k in ("iteration", "reward_mean", "parse_rate", "accuracy",
                                         "cost_per_plan", "time/iteration_s")} for r in rows],
        "config": to_dict(cfg),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    from _bench import write_report

    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
