"""The LM conductor's tier of the online loop on real recorded answers, on this machine's
CPU. A trained LM conductor (a training run's promoted version, published into a fresh
registry as version 1) serves `--rows` train-split questions of a replay pool: its greedy
plans run over the recorded answers, and each served answer gets its question's label as
feedback (the traffic log). Then `Retrainer` rounds with the LM trainer (`LMTrainer`):
re-roll every worker's answer to those questions (replay: table lookups through a
`ReplayPool`), continue GRPO from the served weights on the training slice, test candidate
against serving policy on the held-back slice (one-sided paired t-test) and promote or
reject; with `--rounds 2` the promoted (or kept) version serves the next `--rows` questions,
which are its live watch and the next round's traffic.

The app is an in-process stand-in for the Serve app (the loop's `App` interface: the served
reference, the hot-swap, the worker pool, the verifier); the end-to-end Serve path of the
loop is the lite tier's (`tests/test_online_e2e.py`, `shift.py`). Train split only.

    cd benchmarks && python online_lm.py --run-dir ../runs/bench_train_quality_constrained

Summary: per round the decisions, the held-back rewards of serving policy and candidate,
the paired test's lower bound, the GRPO curve and parse rate, and wall times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench, when loaded from elsewhere


class ReplayApp:
    """The loop's view of a Serve app, over a replay pool: references, swaps, the pool."""

    def __init__(self, ref: str, data: Any):
        from ray_conductor.data.replay import ReplayPool

        self.ref, self.data, self.pool, self.swaps = ref, data, ReplayPool(data), []

    def reference(self, model: str) -> str:
        return self.ref

    def swap(self, model: str, ref: str) -> str:
        self.swaps.append(ref)
        self.ref = ref
        return "v" + ref.rsplit("@", 1)[1]

    def rollout_pool(self) -> tuple[Any, dict[str, str]]:
        return self.pool, {w: "replay" for w in self.data.models}

    def verifier(self) -> Any:
        return self.data

    def log_dir(self) -> str:
        return "in-memory"


def serve(ref: str, queries: list[Any], data: Any, t0: float) -> tuple[list[dict], dict]:
    """The served version's greedy plans on `queries`, as traffic-log rows with labels."""
    import pandas as pd

    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.policy.runner import load_conductor, run_conductor

    start = time.perf_counter()
    conductor, tag = load_conductor(ref)
    out = asyncio.run(run_conductor(conductor, queries, ReplayPool(data)))
    rows, correct, fell = [], 0, 0
    for i, (q, (plan, trace)) in enumerate(zip(queries, out)):
        answer = trace.answer if trace else ""
        ok = bool(trace) and data.judge(q.query_id, answer)
        correct += ok
        fell += plan.fell_back
        rows.append({"request_id": f"{tag}-{q.query_id}", "status": 200, "model": "online",
                     "policy_version": tag, "question": q.query, "query_id": q.query_id,
                     "answer": answer or "(no answer)", "cost": trace.cost if trace else 0.0,
                     "reward": None, "label": q.reference,
                     "time": pd.Timestamp(t0 + i, unit="s", tz="UTC")})
    return rows, {"version": tag, "questions": len(queries),
                  "accuracy": round(correct / len(queries), 4),
                  "cost": round(sum(r["cost"] for r in rows) / len(rows), 6),
                  "fell_back": fell, "wall_s": round(time.perf_counter() - start, 1)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a training run_dir (its registry)")
    ap.add_argument("--pool", default="demo", help="replay pool spec (default: demo)")
    ap.add_argument("--rows", type=int, default=120, help="questions served per round")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=3, help="GRPO updates per round")
    ap.add_argument("--questions", type=int, default=8, help="questions per update")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--select-rows", type=int, default=32)
    ap.add_argument("--holdout", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="../runs/bench_online_lm")
    ap.add_argument("--out", default="../reports/bench_online_lm.json")
    args = ap.parse_args(argv)

    import torch

    from _bench import environment, write_report

    from ray_conductor.config import default_data_dir
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.online.config import RetrainConfig
    from ray_conductor.online.loop import Retrainer, tier_trainer
    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.policy.runner import locate_conductor

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    data = load_pool(args.pool, data_dir=default_data_dir())
    queries = select_queries(data, "train", args.rows * args.rounds)
    model, settings, source = locate_conductor(args.run_dir)
    reg = PolicyRegistry(work / "registry")
    reg.promote(reg.publish(model, kind="lm", meta={"config": {"conductor": settings},
                                                    "source": f"{args.run_dir}@{source}"}
                            ).version)
    app = ReplayApp(f"registry:{reg.root}@1", data)

    cfg = RetrainConfig(app="bench", model="online", state_dir=str(work / "state"))
    cfg.trigger.every_rows, cfg.trigger.every_minutes = args.rows, None
    cfg.evaluation.holdout, cfg.evaluation.min_rows = args.holdout, 20
    cfg.training.min_rows, cfg.rollback.window = 20, args.rows
    lm = cfg.training.lm
    lm.iterations, lm.questions, lm.group_size = args.iterations, args.questions, args.group_size
    lm.lr, lm.select_rows = args.lr, args.select_rows
    lm.batch_size = int(settings.get("batch_size", 16))
    traffic: list[dict] = []
    clock = {"t": 1.0e9}
    import pandas as pd

    loop = Retrainer(cfg, app, lambda penalty, kind="lite": tier_trainer(cfg, penalty, kind),
                     read=lambda _: pd.DataFrame(traffic), clock=lambda: clock["t"])
    rounds = []
    for k in range(args.rounds):
        qs = queries[k * args.rows:(k + 1) * args.rows]
        rows, served = serve(app.ref, qs, data, clock["t"] + 1)
        traffic += rows
        clock["t"] += 10 * len(rows) + 10
        t0 = time.perf_counter()
        made = loop.round()
        by = {d["kind"]: d for d in made}
        ev, tr = by.get("evaluated", {}), by.get("trained", {})
        t = tr.get("training", {})
        rounds.append({
            "round": k, "served": served, "decisions": [d["kind"] for d in made],
            "train_rows": tr.get("train_rows"), "held_rows": ev.get("n"),
            "serving_mean": ev.get("serving_mean"), "candidate_mean": ev.get("candidate_mean"),
            "gain": (ev.get("test") or {}).get("mean"), "lcb": (ev.get("test") or {}).get("lcb"),
            "p_value": (ev.get("test") or {}).get("p_value"),
            "curve": t.get("curve"), "best_iteration": t.get("best_iteration"),
            "steps": t.get("steps"), "train_wall_s": t.get("wall_s"),
            "watch": next(({key: d.get(key) for key in ("kind", "test_kind", "live_mean",
                                                          "previous_replayed_mean", "n")}
                           for d in made if d["kind"] in ("kept", "rolled_back")), None),
            "round_wall_s": round(time.perf_counter() - t0, 1)})
        print(f"round {k}: served {served} -> {rounds[-1]['decisions']} "
              f"(serving {ev.get('serving_mean')}, candidate {ev.get('candidate_mean')}) in "
              f"{rounds[-1]['round_wall_s']}s", flush=True)
    report = {
        "summary": {"rounds": len(rounds),
                    "promotions": sum(r["decisions"].count("promoted") for r in rounds),
                    "rejections": sum(r["decisions"].count("rejected") for r in rounds),
                    "last": rounds[-1] if rounds else None},
        "setup": {"run_dir": args.run_dir, "source_version": source, "pool": args.pool,
                  "split": "train", "rows_per_round": args.rows, "settings": settings,
                  "lm": vars(lm), "holdout": args.holdout,
                  "cost_penalty": loop.state.cost_penalty},
        "rounds": rounds, "decisions": loop.decisions.read(),
        "wall_s": round(time.perf_counter() - t_all, 1),
        "environment": environment(args.threads)}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
