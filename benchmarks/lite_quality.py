"""Train the lite conductor on each pool's train split and judge it on the whole test split
beside singles, cheapest, random, kNN, oracle and the LM conductor's last result; sweep the
budget to draw the lite conductor's own cost-accuracy frontier.

    python benchmarks/lite_quality.py [--pools SPEC ...] [--sweep 0.25,0.5,1] [key=value ...]

Pools (default): the full MMLU-Pro pool and every RouterBench task in `../shared/data` (the
CSVs of one task, e.g. `mbpp_train.csv` + `mbpp_test.csv`, are one pool). Per pool:

- the main lite run uses the shipped settings (`configs/lite.yaml`). Its budget is in
  MMLU-Pro dollars, so on another pool it is carried over as the same fraction of the best
  single model's *train* $/query (0.45x); nothing is chosen on test;
- sweep points: budgets of 0.25x ... 1.0x that train $/query, with fewer PPO iterations;
- one evaluation (`eval.judge.judge_policies`, in-process replay pool, whole test split):
  what `ray-conductor eval policies=[singles,cheapest,random,knn,oracle,lite:RUN/policy,
  lite:RUN/selector]` reports;
- the goal: MMLU-Pro-like pools, lite accuracy >= the best single model's (by train
  accuracy: gpt-4o) at <= 0.5x its cost; RouterBench pools, >= kNN's at <= kNN's cost;
  with the paired gain over that reference (same questions, offline from the recorded
  answers, checked against the judge's accuracy);
- the LM conductor's last result (`train_quality_48_iterations.json`) was measured on the
  demo pool's test split; where those questions all lie in this pool's test split (the demo
  pool is a slice of MMLU-Pro), the lite conductor is also judged on exactly them.

Summary: per pool {policies: {name: accuracy, cost_per_query, calls_per_query}, goal,
pareto_frontier, sweep}; a cost-accuracy plot per pool beside the report. Extra `key=value`
arguments override the lite training config of every run (see configs/lite.yaml).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, environment, local_ray, write_report

for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parents[1]
SWEEP = (0.25, 0.35, 0.5, 0.75, 1.0)
BASELINES = ["singles", "cheapest", "random", "knn", "oracle"]
LM_RESULT = ROOT / "benchmarks" / "results" / "train_quality_48_iterations.json"
SPLIT_SUFFIX = re.compile(r"[_\-.](train|test|val|valid|dev)$", re.IGNORECASE)
NOT_ON_FRONTIER = {"oracle": "hindsight: it reads the answers"}


# -- pools -----------------------------------------------------------------------------------


def discover_pools(data_dir: Path) -> list[str]:
    """The full MMLU-Pro pool, then one RouterBench pool per task: CSVs whose names differ
    only by a split suffix (`_train`, `_test`, ...) are one task."""
    specs = []
    if (data_dir / "mmlu_pro").is_dir():
        specs.append(f"mmlu_pro:{data_dir / 'mmlu_pro'}")
    tasks: dict[str, list[str]] = {}
    for csv in sorted((data_dir / "routerbench").glob("*.csv")):
        tasks.setdefault(SPLIT_SUFFIX.sub("", csv.stem), []).append(str(csv))
    specs += [f"routerbench:{','.join(files)}" for _, files in sorted(tasks.items())]
    return specs


def pool_tag(spec: str) -> str:
    """A short file-name-safe name: mmlu_pro, routerbench_mbpp, demo, ..."""
    fmt, _, rest = spec.partition(":")
    if fmt == "routerbench" and rest:
        stems = {SPLIT_SUFFIX.sub("", Path(p).stem) for p in rest.split(",")}
        return "routerbench_" + "+".join(sorted(stems))
    if fmt == "parquet" and rest:
        return Path(rest).stem
    return fmt


def goal_kind(spec: str) -> str:
    """RouterBench's goal is kNN's point; MMLU-Pro's is half the best single model's cost."""
    return "knn" if spec.startswith("routerbench") else "best_single"


def train_singles(data) -> dict[str, dict[str, float]]:
    """Each worker's accuracy and $/query on the train split (what the budgets and the
    goal's reference model are read from: never test)."""
    correct, cost = data.matrix("train")
    return {m: {"accuracy": float(correct[:, i].mean()), "cost_per_query": float(cost[:, i].mean())}
            for i, m in enumerate(data.models)}


def best_single(stats: dict[str, dict[str, float]]) -> str:
    """The most accurate worker on train (ties: the cheaper)."""
    return max(stats, key=lambda m: (stats[m]["accuracy"], -stats[m]["cost_per_query"]))


def shipped_ratio(overrides: list[str]) -> float:
    """configs/lite.yaml's budget as a fraction of the best single model's train $/query on
    the pool it was written for (MMLU-Pro: $0.0021 of gpt-4o's $0.00466, 0.45x)."""
    from ray_conductor.data.pools import load_pool

    cfg = _config(["config=lite", *overrides])
    stats = train_singles(load_pool(cfg.pool, data_dir=cfg.data_dir))
    return cfg.budget / stats[best_single(stats)]["cost_per_query"]


# -- training --------------------------------------------------------------------------------


def _config(argv: list[str]):
    from ray_conductor.config import load
    from ray_conductor.lite.train import LiteTrainConfig

    return load(LiteTrainConfig, argv)


def train_point(spec: str, run_dir: Path, budget: float, overrides: list[str],
                sweep: list[str] = ()) -> dict[str, Any]:
    """One lite training run on the pool's train split; its summary without the bulky parts.
    `sweep`: settings that shorten a sweep point (applied last)."""
    from ray_conductor.lite.train import train_lite

    argv = ["config=lite", f"pool={spec}", f"run_dir={run_dir}", "overwrite=true",
            "progress=false", f"budget={budget:.8g}", *overrides, *sweep]
    s = train_lite(_config(argv))
    return {"budget": budget, "run_dir": str(run_dir), "iterations": s["iterations"],
            "best_iteration": s["best_iteration"], "fit_rows": s["fit_rows"],
            "val_rows": s["val_rows"], "wall_s": round(s["wall_s"], 1),
            "val": {k: {m: v[m] for m in ("accuracy", "cost_per_query", "calls_per_query")}
                    for k, v in s["val"].items()}}


# -- evaluation ------------------------------------------------------------------------------


def lite_policies(run_dir: Path, workers, suffix: str = "") -> list:
    """`lite:RUN/policy` and `lite:RUN/selector` as `make_policies` builds them, renamed
    when several runs share one table."""
    from ray_conductor.eval.policies import make_policies

    out = make_policies([f"lite:{run_dir / 'policy'}", f"lite:{run_dir / 'selector'}"], None,
                        workers)
    for p in out:
        p.name += suffix
    return out


def judge(policies: list, data, queries: list) -> dict[str, dict[str, Any]]:
    """The project's one evaluation, in-process replay, quietly; per policy its report."""
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.eval.judge import judge_policies

    pool = ReplayPool(data)
    return judge_policies(policies, data, queries, pool, out=None, progress=False,
                          quiet=True)["policies"]


def brief(p: dict[str, Any]) -> dict[str, Any]:
    acc, n = p["accuracy"], max(p["n"], 1)
    return {"accuracy": round(acc, 4), "accuracy_se": round(math.sqrt(acc * (1 - acc) / n), 4),
            "cost_per_query": round(p["cost_per_query"], 7),
            "calls_per_query": round(p["calls_per_query"], 3), "n": p["n"]}


def pareto_frontier(policies: dict[str, dict[str, Any]]) -> list[str]:
    """Names of the non-dominated policies (no other is at least as accurate for no more
    money, and better in one), cheapest first."""
    pts = sorted(policies.items(), key=lambda kv: (kv[1]["cost_per_query"], -kv[1]["accuracy"]))
    out, best = [], -1.0
    for name, p in pts:
        if p["accuracy"] > best:
            out.append(name)
            best = p["accuracy"]
    return out


def goal_check(kind: str, policies: dict[str, dict[str, Any]], ref: str,
               candidates: list[str]) -> dict[str, Any]:
    """Each candidate against the goal's reference point, as booleans with the numbers."""
    factor = 0.5 if kind == "best_single" else 1.0
    r = policies[ref]
    limit = factor * r["cost_per_query"]
    out: dict[str, Any] = {"goal": f"accuracy >= {ref}'s at <= {factor:g}x its cost",
                           "reference": ref, "reference_accuracy": r["accuracy"],
                           "reference_cost_per_query": r["cost_per_query"],
                           "cost_limit": round(limit, 7)}
    for name in candidates:
        p = policies[name]
        acc_ok, cost_ok = p["accuracy"] >= r["accuracy"], p["cost_per_query"] <= limit
        out[name] = {"accuracy": p["accuracy"], "cost_per_query": p["cost_per_query"],
                     "cost_ratio_to_reference": round(p["cost_per_query"] / r["cost_per_query"], 3),
                     "accuracy_ok": acc_ok, "cost_ok": cost_ok, "met": acc_ok and cost_ok}
    return out


def test_outcomes(policies: dict[str, Any], names: list[str], data,
                  queries: list) -> dict[str, np.ndarray]:
    """Per test question (in `queries` order), whether each named policy is right, computed
    offline: a single worker's record, the kNN router's pick, the lite conductor's rollout
    over the recorded answers (what its live runs over the replay pool do, question for
    question). For paired comparisons, and a check of the judge's numbers."""
    from ray_conductor.eval.policies import KNNRouter, LitePolicy, SingleWorker
    from ray_conductor.lite.table import build_table
    from ray_conductor.lite.train import pool_table

    row = {q.query_id: i for i, q in enumerate(data.queries("test"))}
    at = np.array([row[q.query_id] for q in queries])
    # correct as the judge reads each recorded text (not the recorded `pred`, which misses
    # some answers the judge finds: gpt-4o 0.727 by `pred`, 0.744 judged on MMLU-Pro test)
    judged = build_table(data, "test", lambda texts: np.zeros((len(texts), 1), np.float32))
    correct, col = judged.correct[at], {w: i for i, w in enumerate(judged.workers)}
    out = {}
    for name in names:
        p = policies[name]
        if isinstance(p, SingleWorker):
            out[name] = correct[:, col[p.worker]]
        elif isinstance(p, KNNRouter):  # the judge's text list, so its cached embeddings
            picks = [col[p.models[i]] for i in p.choose(p.embed([q.query for q in queries]))]
            out[name] = correct[np.arange(len(queries)), picks]
        elif isinstance(p, LitePolicy):
            c = p.conductor
            out[name] = c.rollout(pool_table(data, "test", c.featurizer)).correct[at]
    return out


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """a's accuracy gain over b on the same questions, its standard error, and the
    questions only a (wins) or only b (losses) got right."""
    d = a.astype(float) - b.astype(float)
    return {"accuracy_gain": round(float(d.mean()), 4),
            "gain_se": round(float(d.std(ddof=1) / math.sqrt(len(d))), 4),
            "wins": int((a & ~b).sum()), "losses": int((~a & b).sum())}


def add_paired(goal: dict[str, Any], outcomes: dict[str, np.ndarray],
               judged: dict[str, dict[str, Any]], candidates: list[str]) -> None:
    """Each candidate's paired gain over the goal's reference, and whether the offline
    outcomes reproduce the judge's accuracy (they must: same records, same decisions)."""
    ref = goal["reference"]
    for name in [ref, *candidates]:
        same = abs(float(outcomes[name].mean()) - judged[name]["accuracy"]) < 1e-9
        goal.setdefault(name, {})["offline_matches_judge"] = same
    for name in candidates:
        goal[name]["paired_vs_reference"] = paired(outcomes[name], outcomes[ref])


# -- the LM conductor's last result ----------------------------------------------------------


def lm_conductor(path: Path) -> dict[str, Any] | None:
    """The trained LM conductor's last measured point, with where it was measured."""
    if not path.is_file():
        return None
    import json

    rep = json.loads(path.read_text())
    cfg, p = rep.get("config", {}), rep["summary"]["trained"]
    return {"accuracy": p["accuracy"], "cost_per_query": p["cost_per_query"],
            "calls_per_query": p["calls_per_query"], "n": p["n"],
            "pool": cfg.get("pool"), "split": cfg.get("eval_split", "test"),
            "iterations": cfg.get("iterations"), "source": str(path.relative_to(ROOT))
            if path.is_relative_to(ROOT) else str(path)}


def lm_questions(lm: dict[str, Any], data) -> list | None:
    """The LM conductor's test questions inside this pool, when every one of them is here
    (the demo pool is a slice of MMLU-Pro with the same ids, split and records): then the
    lite conductor can be judged on exactly those questions."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.errors import ConductorError

    try:
        theirs = {q.query_id for q in load_pool(lm["pool"]).queries(lm["split"])}
    except (ConductorError, OSError) as e:  # its pool is not here: no subset, said why
        print(f"the LM conductor's pool {lm['pool']!r} is not readable here: {e}", flush=True)
        return None
    mine = [q for q in data.queries("test") if q.query_id in theirs]
    return sorted(mine, key=lambda q: q.query_id) if len(mine) == len(theirs) else None


# -- one pool --------------------------------------------------------------------------------


def bench_pool(spec: str, args, overrides: list[str], ratio: float,
               lm: dict[str, Any] | None) -> dict[str, Any]:
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.eval.policies import make_policies

    t0 = time.perf_counter()
    tag, kind = pool_tag(spec), goal_kind(spec)
    data = load_pool(spec, data_dir=args.data_dir)
    stats = train_singles(data)
    ref_single = best_single(stats)
    ref_cost = stats[ref_single]["cost_per_query"]
    runs = Path(args.runs_dir) / tag
    print(f"[{tag}] main run: budget {ratio:.3f}x of {ref_single}'s train $/query", flush=True)
    main = train_point(spec, runs / "main", ratio * ref_cost, overrides)
    short = [f"iterations={args.sweep_iterations}", f"time_budget_s={args.sweep_time_s}"]
    sweep = []
    for x in args.sweep:
        print(f"[{tag}] sweep point {x:g}x", flush=True)
        sweep.append({"ratio": x, **train_point(spec, runs / f"sweep_{x:g}x", x * ref_cost,
                                                overrides, short)})
    t_train = time.perf_counter() - t0

    workers = data.worker_infos()
    queries = select_queries(data, "test")
    policies = make_policies(BASELINES, data, workers, seed=0, knn_k=40)
    policies += lite_policies(runs / "main", workers)
    for pt in sweep:
        policies += lite_policies(Path(pt["run_dir"]), workers, f"@{pt['ratio']:g}x")
    print(f"[{tag}] judging {len(policies)} policies on {len(queries)} test questions",
          flush=True)
    full = judge(policies, data, queries)
    table = {name: brief(p) for name, p in full.items()}
    ref = "knn" if kind == "knn" else f"single:{ref_single}"
    mains = ["lite:policy", "lite:selector"]
    goal = goal_check(kind, table, ref, mains)
    outcomes = test_outcomes({p.name: p for p in policies}, [ref, *mains], data, queries)
    add_paired(goal, outcomes, full, mains)
    sweep_names = [n for n in table if "@" in n]
    crossing = goal_check(kind, table, ref, sweep_names)
    goal["sweep_points_meeting_it"] = [n for n in sweep_names if crossing[n]["met"]]
    goal["note"] = ("lite:policy and lite:selector are the shipped settings, chosen on train "
                    "only; sweep points meeting it were seen after the test run (where the "
                    "frontier crosses the goal, not a claim)")
    frontier_pool = {k: v for k, v in table.items() if k not in NOT_ON_FRONTIER}
    result = {"pool": spec, "tag": tag, "n_train": len(data.queries("train")),
              "n_test": len(queries), "train_singles": stats,
              "budget_reference": {"worker": ref_single, "train_cost_per_query": ref_cost},
              "policies": table, "goal": goal,
              "pareto_frontier": pareto_frontier(frontier_pool),
              "frontier_leaves_out": NOT_ON_FRONTIER, "main": main, "sweep": sweep,
              "final_workers": {k: full[k]["final_workers"] for k in table
                                if k.startswith("lite:")},
              "failed_call_rate": {k: full[k]["failures"]["rate"] for k in table}}
    if lm is not None and kind == "best_single":
        result["lm_conductor"] = _lm_block(lm, spec, data, workers, runs, ref)
    result["wall_s"] = {"train": round(t_train, 1),
                        "total": round(time.perf_counter() - t0, 1)}
    return result


def _lm_block(lm: dict[str, Any], spec: str, data, workers, runs: Path, ref: str
              ) -> dict[str, Any]:
    """The LM conductor's point, and, where its questions are all in this pool's test split,
    the lite conductor and the reference judged on exactly those questions."""
    from ray_conductor.eval.policies import make_policies

    same_pool = lm["pool"] == spec
    block = {**lm, "same_questions_as_this_table": same_pool}
    subset = None if same_pool else lm_questions(lm, data)
    if subset is None:
        if not same_pool:
            block["note"] = "measured on other questions: not comparable question for question"
        return block
    block["note"] = (f"measured on the {lm['pool']} pool's {lm['split']} split ({lm['n']} "
                     f"questions), trained on that pool's train split; the table above is on "
                     f"this pool's whole test split, so compare with `on_its_questions`")
    names = [ref, "knn", "oracle"]
    policies = make_policies(names, data, workers, seed=0, knn_k=40)
    policies += lite_policies(runs / "main", workers)
    block["on_its_questions"] = {k: brief(v) for k, v in judge(policies, data, subset).items()}
    return block


# -- the plot --------------------------------------------------------------------------------


def plot_pool(res: dict[str, Any], path: Path) -> Path:
    """Cost (log x) against accuracy: baselines, the lite runs, the lite sweep as lines,
    the Pareto frontier, the goal's region, and the LM conductor's point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pol = res["policies"]
    fig, ax = plt.subplots(figsize=(10, 6.5))

    def x(p: dict[str, Any]) -> float:
        return max(p["cost_per_query"], 1e-9)

    front = [pol[n] for n in res["pareto_frontier"]]
    ax.step([x(p) for p in front], [p["accuracy"] for p in front], where="post",
            color="gold", lw=6, alpha=0.45, label="Pareto frontier (oracle left out)", zorder=1)
    for name, p in pol.items():
        if "@" in name or name.startswith("lite:"):
            continue
        single = name.startswith("single:")
        ax.scatter([x(p)], [p["accuracy"]], marker="o" if single else "s",
                   color="tab:gray" if single else "tab:blue", s=40, zorder=3)
        ax.annotate(name.replace("single:", ""), (x(p), p["accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    for kind, color in (("policy", "tab:red"), ("selector", "tab:green")):
        pts = sorted([pol[n] for n in pol if n.startswith(f"lite:{kind}")], key=x)
        ax.plot([x(p) for p in pts], [p["accuracy"] for p in pts], "-o", color=color, ms=4,
                lw=1.2, label=f"lite {kind}: budget sweep", zorder=4)
        main = pol[f"lite:{kind}"]
        ax.scatter([x(main)], [main["accuracy"]], marker="*", s=260, color=color, zorder=5,
                   edgecolor="black", label=f"lite:{kind} (shipped settings)")
    lm = res.get("lm_conductor")
    costs = [x(p) for p in pol.values()] + ([lm["cost_per_query"]] if lm else [])
    _goal_region(ax, res["goal"], min(costs) / 2, max(costs) * 2)
    if lm:
        ax.scatter([lm["cost_per_query"]], [lm["accuracy"]], marker="D", s=70,
                   facecolor="none", edgecolor="purple", zorder=5,
                   label=f"LM conductor ({lm['pool']} {lm['split']}, n={lm['n']}: "
                         f"{'same' if lm['same_questions_as_this_table'] else 'other'} questions)")
    ax.set_xlabel("dollars per query (log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{res['tag']}: test split, n={res['n_test']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _goal_region(ax, goal: dict[str, Any], lo: float, hi: float) -> None:
    """Shade where a policy meets the goal (cheap enough and accurate enough)."""
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.fill_between([lo, goal["cost_limit"]], goal["reference_accuracy"],
                    max(ax.get_ylim()[1], goal["reference_accuracy"] + 0.01),
                    color="tab:green", alpha=0.08, label=f"goal: {goal['goal']}", zorder=0)


# -- main ------------------------------------------------------------------------------------


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    g = res["goal"]
    return {"n_test": res["n_test"],
            "policies": {k: {m: v[m] for m in ("accuracy", "cost_per_query", "calls_per_query")}
                         for k, v in res["policies"].items()},
            "goal": {"goal": g["goal"], "lite:policy_met": g["lite:policy"]["met"],
                     "lite:selector_met": g["lite:selector"]["met"]},
            "pareto_frontier": res["pareto_frontier"]}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", nargs="*", default=None,
                    help="pool specs (default: MMLU-Pro and every RouterBench task in "
                         "--data-dir)")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/lite_quality.json"))
    ap.add_argument("--runs-dir", default=str(ROOT / "runs/lite_quality"))
    ap.add_argument("--sweep", default=",".join(f"{x:g}" for x in SWEEP),
                    help="budgets as fractions of the best single model's train $/query")
    ap.add_argument("--sweep-iterations", type=int, default=12)
    ap.add_argument("--sweep-time-s", type=float, default=150.0)
    ap.add_argument("--main-ratio", type=float, default=None,
                    help="the main run's budget fraction (default: configs/lite.yaml's)")
    ap.add_argument("--lm-result", default=str(LM_RESULT))
    args, overrides = ap.parse_known_args(argv)
    args.sweep = [float(x) for x in args.sweep.split(",") if x.strip()]
    return args, overrides


def _from_root(spec: str) -> str:
    """A pool spec with its paths relative to the project root (where the run works)."""
    fmt, sep, rest = spec.partition(":")
    if not rest:
        return spec
    paths = [os.path.relpath(Path(p).expanduser().resolve(), ROOT) for p in rest.split(",")]
    return f"{fmt}{sep}{','.join(paths)}"


def main(argv: list[str]) -> int:
    args, overrides = parse_args(argv)
    for key in ("data_dir", "out", "runs_dir", "lm_result"):  # as given, from here
        setattr(args, key, str(Path(getattr(args, key)).expanduser().resolve()))
    args.pools = [_from_root(s) for s in args.pools or discover_pools(Path(args.data_dir))]
    with contextlib.chdir(ROOT):  # the pool import cache (.cache/pools) is relative to it
        return _run(args, overrides)


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
    import ray

    t0 = time.perf_counter()
    pools = args.pools
    ratio = args.main_ratio or shipped_ratio(overrides)
    lm = lm_conductor(Path(args.lm_result))
    with local_ray(num_cpus=2) if not ray.is_initialized() else contextlib.nullcontext():
        results = {pool_tag(s): bench_pool(s, args, overrides, ratio, lm) for s in pools}
    out = Path(args.out)
    for tag, res in results.items():
        res["plot"] = str(plot_pool(res, out.with_name(f"{out.stem}_{tag}.png")))
    report = {"summary": {tag: summarize(r) for tag, r in results.items()},
              "pools": results, "main_budget_ratio": round(ratio, 4),
              "sweep": {"ratios": args.sweep, "iterations": args.sweep_iterations,
                        "time_budget_s": args.sweep_time_s},
              "overrides": overrides, "lm_conductor": lm,
              "wall_s": round(time.perf_counter() - t0, 1), "environment": environment(1)}
    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
