"""Do a trained conductor's multi-step plans pay? Its greedy plans on a replay pool's split,
by shape (one step, multi-step, conditional, vote), each judged against its first step's
answer alone. In replay a step's text is its worker's recorded answer, so a chain's extra
steps can only change *which* worker answers; a vote or a conditional escalation can add
accuracy.

    python benchmarks/plan_payoff.py --run-dir runs/bench_train_quality_constrained --limit 200

Summary: {"all": S, "<shape>": S, ...}, S = {"n", "accuracy", "first_step_alone", "cost",
"calls", "steps"}; `pays` = accuracy - first_step_alone over all plans.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from statistics import mean

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench, when loaded from elsewhere


def stats(rows: list[dict]) -> dict:
    return {"n": len(rows),
            "accuracy": round(mean(r["correct"] for r in rows), 4),
            "first_step_alone": round(mean(r["first_alone"] for r in rows), 4),
            "cost": round(mean(r["cost"] for r in rows), 6),
            "calls": round(mean(r["calls"] for r in rows), 2),
            "steps": round(mean(r["steps"] for r in rows), 2)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a training run_dir or checkpoint")
    ap.add_argument("--pool", default="demo",
                    help="replay pool spec (default: demo, the pool train_quality.py trains on)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="first N questions; 0: all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--round-bf16", action="store_true",
                    help="round the weights to bf16 first: what a run with learner.bf16 syncs "
                         "to its rollout actors, so what its in-training evaluation judged")
    ap.add_argument("--out", default="reports/plan_payoff.json")
    args = ap.parse_args(argv)

    import torch

    from _bench import plan_shape, write_report

    from ray_conductor.config import default_data_dir
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.policy.runner import load_conductor, run_conductor

    torch.set_num_threads(args.threads)
    conductor, tag = load_conductor(args.run_dir)
    if args.round_bf16:
        with torch.no_grad():
            for p in conductor.engine.model.parameters():
                p.copy_(p.to(torch.bfloat16).to(p.dtype))
    pool_spec = args.pool
    data = load_pool(pool_spec, data_dir=default_data_dir())
    queries = select_queries(data, args.split, args.limit or None)
    out = asyncio.run(run_conductor(conductor, queries, ReplayPool(data)))
    rows = []
    for q, (plan, trace) in zip(queries, out):
        steps = trace.steps if trace else []
        rows.append({"query_id": q.query_id, "shape": plan_shape(plan.workflow),
                     "correct": bool(trace) and data.judge(q.query_id, trace.answer),
                     "first_alone": bool(steps) and data.judge(q.query_id, steps[0].text),
                     "cost": trace.cost if trace else 0.0, "calls": trace.calls if trace else 0,
                     "steps": len(plan.workflow), "fell_back": plan.fell_back})
    summary = {"all": {**stats(rows), "fell_back": sum(r["fell_back"] for r in rows)}}
    for kind in sorted({r["shape"] for r in rows}):
        summary[kind] = stats([r for r in rows if r["shape"] == kind])
    summary["pays"] = round(summary["all"]["accuracy"] - summary["all"]["first_step_alone"], 4)
    report = {"summary": summary, "conductor": tag, "run_dir": args.run_dir, "pool": pool_spec,
              "split": args.split, "round_bf16": args.round_bf16,
              "settings": {k: getattr(conductor.cfg, k) for k in (
                  "constrain", "programs", "worker_ids", "greedy_samples", "temperature")},
              "rows": rows}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
