"""Judge a trained conductor (a run's promoted checkpoint, or the base model) beside the
baselines on a replay pool's split, with the conductor settings the run trained with. No Ray:
one process, the same evaluation as `ray-conductor eval policies=[conductor:RUN_DIR]`.

    python benchmarks/eval_checkpoint.py --run-dir runs/bench_train_quality
    python benchmarks/eval_checkpoint.py --run-dir runs/bench_train_quality --base  # untrained

Summary: {"conductor": P, "random": P, "best_single": P, "knn": P, "oracle": P, ...}.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def pick(p: dict) -> dict:
    return {k: p[k] for k in ("accuracy", "cost_per_query", "calls_per_query", "parse_rate", "n")}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a training run_dir (its registry/) or a "
                    "checkpoint directory")
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
    from ray_conductor.data.selection import select_queries
    from ray_conductor.eval.judge import judge_policies
    from ray_conductor.eval.policies import ConductorPolicy, make_policies
    from ray_conductor.policy.runner import load_conductor, locate_conductor

    torch.set_num_threads(args.threads)
    _, settings, _ = locate_conductor(args.run_dir)
    run_cfg = _run_config(args.run_dir)
    overrides = {"model": run_cfg["model"]} if args.base else {}
    conductor, tag = load_conductor(args.run_dir, **overrides)
    tag = "untrained" if args.base else tag
    split = args.split or run_cfg.get("eval_split", "test")
    data = load_pool(run_cfg["pool"], data_dir=run_cfg.get("data_dir"))
    queries = select_queries(data, split, args.limit or None)
    pool = ReplayPool(data)
    policies = [ConductorPolicy.local("conductor", conductor)]
    policies += make_policies([b for b in args.baselines.split(",") if b], data,
                              list(pool.workers()), seed=run_cfg.get("seed", 0))
    out = args.out or str(Path(args.run_dir) / f"eval_{'base' if args.base else 'ckpt'}_"
                                                f"{split}_{len(queries)}.json")
    report = judge_policies(policies, data, queries, pool, out=None, progress=False, quiet=True)
    res = report["policies"]
    singles = {k: v for k, v in res.items() if k.startswith("single:")}
    summary = {"conductor": {**pick(res["conductor"]), "checkpoint": tag}}
    summary.update({k: pick(res[k]) for k in ("random", "knn", "oracle") if k in res})
    if singles:
        best = max(singles, key=lambda k: singles[k]["accuracy"])
        summary["best_single"] = {**pick(singles[best]), "worker": best.split(":", 1)[1]}
    from _bench import write_report

    write_report({"summary": summary, "conductor_final_workers": res["conductor"]["final_workers"],
                  "policies": res, "checkpoint": tag, "split": split, "n_queries": len(queries),
                  "wall_s": report["wall_s"], "conductor_config": settings}, out)
    return 0


def _run_config(run_dir: str) -> dict:
    """The training config a run recorded with its checkpoints (pool, split, seed, model)."""
    from ray_conductor.policy.runner import locate_conductor
    from ray_conductor.policy.registry import PolicyRegistry

    reg = Path(run_dir) / "registry"
    if reg.is_dir():
        pv = PolicyRegistry(reg).promoted() or PolicyRegistry(reg).latest()
        if pv is not None:
            return pv.meta.get("config", {})
    state = Path(run_dir) / "trainer_state.json"
    if state.is_file():
        import json

        return json.loads(state.read_text()).get("config", {})
    locate_conductor(run_dir)  # says what is wrong with the path
    raise SystemExit(f"{run_dir}: no training config found (registry/ or trainer_state.json)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
