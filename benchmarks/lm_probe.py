"""Can the conductor LM's own view of a question carry the routing decision? A linear probe,
on the demo pool's train split only (the test split is never read).

The LM conductor imitates the lite tier's programs and stays below gpt-4o (lm_quality.py).
Two questions decide what to train it on next:

1. How predictable is the teacher's program from the question? `teacher_knn`: the majority
   program of the k nearest train questions (the lite tier's own MiniLM embedding) against
   the share of the teacher's most common program, on a hashed fifth of train.
2. Is the signal for a correctness-driven choice in the LM's representation? For each
   feature set (`minilm`: the lite tier's sentence embedding; `smollm2`: the conductor LM's
   mean-pooled last hidden state over the question as the conductor sees it), ridge
   regressions predict, per question, each candidate program's correctness and cost
   (singles and two-agree-else-vote cascades over the six best workers, from the recorded
   answers), and the probe picks argmax(correct - lambda * cost). Nested over 5 hashed folds
   of train: on each outer fold, the ridge penalty and lambda are those with the best inner
   out-of-fold accuracy at <= 0.5x gpt-4o's cost on the other four folds.

Summary: per feature set, the probe's accuracy and cost against gpt-4o's on the same
questions (`probe_minilm`, `probe_smollm2`), beside gpt-4o, gemini-1.5-pro alone and the
best fixed program under 0.5x its cost; `teacher_knn`. A probe of what the features carry,
not a policy: a linear read-out of recorded outcomes, no plan is written.

    python benchmarks/lm_probe.py --out benchmarks/results/lm_probe.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ray_conductor.policy.program_head import ALPHAS  # noqa: E402


def judged(correct: np.ndarray, cost: np.ndarray, k: np.ndarray, g_cost: float) -> dict:
    from ray_conductor.policy.program_head import judged as outcome

    acc, dollars = outcome(correct, cost, k)
    return {"accuracy": round(acc, 4), "cost_vs_gpt4o": round(dollars / g_cost, 4)}


def nested(x: np.ndarray, correct: np.ndarray, cost: np.ndarray, folds: np.ndarray,
           g_cost: float, alphas: list[float], limit: float = 0.5) -> dict:
    """The probe as a policy, judged honestly: for each outer fold, the program head's own
    choice of settings (`program_head.select`: the best inner out-of-fold accuracy at <=
    `limit` x gpt-4o's cost on the other folds), refit on them, choosing a program for every
    question of the outer fold. So this is a cross-validated estimate of `fit-head`."""
    from ray_conductor.policy.program_head import choose, ridge, select

    picks = np.zeros(len(x), np.int64)
    chosen = []
    for f in np.unique(folds):
        inner, outer = folds != f, folds == f
        best = select(x[inner], correct[inner], cost[inner], folds[inner], limit * g_cost,
                      alphas=alphas)
        alpha, lam = best["alpha"], best["lam"]
        pc = ridge(x[inner], correct[inner], x[outer], alpha)
        pk = ridge(x[inner], cost[inner], x[outer], alpha)
        picks[outer] = choose(pc, pk, lam)
        chosen.append({"fold": int(f), "alpha": alpha, "lambda": lam})
    return {**judged(correct, cost, picks, g_cost), "chosen": chosen}


def lm_features(texts: list[str], batch: int = 16) -> np.ndarray:
    """SmolLM2-135M's mean-pooled last hidden state per text (bf16 autocast on CPU), as the
    program head reads it (`TransformersEngine.embed`)."""
    from ray_conductor.policy.hf_engine import TransformersEngine

    return TransformersEngine("smollm2", batch_size=batch, autocast="bfloat16").embed(texts)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lm_probe.json"))
    ap.add_argument("--question-chars", type=int, default=400,
                    help="the conductor's view of a question (its max_question_chars)")
    ap.add_argument("--features", default="minilm,smollm2",
                    help="comma-separated: minilm (the lite tier's), smollm2 (the LM's)")
    args = ap.parse_args(argv)
    wanted = [f.strip() for f in args.features.split(",") if f.strip()]
    unknown = sorted(set(wanted) - {"minilm", "smollm2"})
    if unknown or not wanted:
        ap.error(f"--features {args.features!r}: use minilm, smollm2 or both")

    from _bench import environment, write_report
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.splits import unit_hash
    from ray_conductor.lite import default_policy_dir
    from ray_conductor.lite.conductor import LiteConductor
    from ray_conductor.lite.programs import Program, outcomes
    from ray_conductor.lite.train import pool_table
    from ray_conductor.rl.program_head import candidate_programs
    from ray_conductor.rl.warm_start import lite_programs, program_key

    t0 = time.perf_counter()
    data = load_pool("demo")
    lite = LiteConductor.load(default_policy_dir(), data.worker_infos())
    table = pool_table(data, "train", lite.featurizer).reorder(lite.workers)
    n, names = len(table), lite.workers
    g = names.index("gpt-4o")
    g_cost = float(table.cost[:, g].mean())
    programs = [Program(p) for p in candidate_programs(table, 6)]
    correct, cost = outcomes(table, programs)
    correct = correct.astype(np.float64)
    folds = np.array([int(unit_hash(f"probe/{q}") * 5) for q in table.query_ids])

    # 1. the teacher's program from the nearest train questions
    progs = lite_programs("lite:default", data, "train")
    keys = np.array([program_key(progs[q]) for q in table.query_ids])
    e = table.features / np.linalg.norm(table.features, axis=1, keepdims=True)
    held, fit = folds == 0, folds != 0
    sims = e[held] @ e[fit].T
    knn = {}
    for k in (1, 5, 15, 31):
        nn = np.argsort(-sims, axis=1)[:, :k]
        pred = np.array([Counter(keys[fit][r]).most_common(1)[0][0] for r in nn])
        knn[f"k{k}"] = round(float((pred == keys[held]).mean()), 4)
    majority = Counter(keys[fit]).most_common(1)[0][0]
    knn["majority_program"] = str(majority)
    knn["majority_share"] = round(float((keys[held] == majority).mean()), 4)
    knn["n"] = int(held.sum())

    # 2. the probes
    by_q = {q.query_id: q.query for q in data.queries("train")}
    texts = [by_q[q][:args.question_chars] for q in table.query_ids]
    feats = {}
    if "minilm" in wanted:
        feats["minilm"] = np.asarray(table.features, np.float64)
    t_lm = time.perf_counter()
    if "smollm2" in wanted:
        feats["smollm2"] = lm_features(texts).astype(np.float64)
    lm_s = time.perf_counter() - t_lm
    probes = {}
    for name, x in feats.items():
        probes[name] = {"dim": int(x.shape[1]),
                        **nested(x, correct, cost, folds, g_cost, list(ALPHAS))}
    fixed = [{"program": p.describe(names), **judged(correct, cost, np.full(n, j), g_cost)}
             for j, p in enumerate(programs)]
    under = [f for f in fixed if f["cost_vs_gpt4o"] <= 0.5]
    pro = names.index("gemini-1.5-pro-002")
    summary = {
        "n": n,
        "gpt4o": {"accuracy": round(float(table.correct[:, g].mean()), 4), "cost_vs_gpt4o": 1.0},
        "pro_alone": {"accuracy": round(float(table.correct[:, pro].mean()), 4),
                      "cost_vs_gpt4o": round(float(table.cost[:, pro].mean() / g_cost), 4)},
        "best_fixed_at_half_cost": max(under, key=lambda f: f["accuracy"]),
        **{f"probe_{k}": {m: v[m] for m in ("accuracy", "cost_vs_gpt4o")}
           for k, v in probes.items()},
        "teacher_knn": knn,
    }
    report = {"summary": summary, "probes": probes, "programs": len(programs),
              "config": vars(args), "lm_features_s": round(lm_s, 1),
              "wall_s": round(time.perf_counter() - t0, 1), "environment": environment(1),
              "split": "demo train only (5 hashed folds; the test split is not read)"}
    write_report(report, args.out)
    for k, v in summary.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
