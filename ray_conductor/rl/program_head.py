"""`ray-conductor fit-head`: fit the LM conductor's `ProgramHead` on a pool's recorded answers.

For every training question: the conductor LM's feature row (`TransformersEngine.embed` over
the question's first `question_chars` characters), and each candidate program's correctness
and cost from the recorded answers (every worker alone; cascades "a and b agree, else vote
with c" over the `top_workers` most accurate workers, the cheaper of a and b first). The
head's ridge penalty and price per dollar are chosen by `folds`-fold cross-validation on
those rows under the budget (by default half the reference worker's mean cost per question),
then it is refit on all of them and written to `out` with a report (`fit_report.json`).
Serve or judge it with `conductor.head=OUT` on the same model. Never fits on the test split.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ray_conductor.config import default_data_dir, opt
from ray_conductor.errors import ConfigError
from ray_conductor.policy.program_head import HEAD_JSON, ProgramHead, fit_head

REPORT = "fit_report.json"


@dataclass
class FitHeadConfig:
    conductor: str = opt("smollm2", "the conductor LM: a model name or directory, a training "
                                    "run directory or registry:DIR[@N]")
    pool: str = opt("demo", "demo | mmlu_pro:PATH | routerbench:CSV[,CSV] | records:PATH[,PATH] "
                            "| parquet:PATH")
    split: str = opt("train", "the rows to fit on (never test)", choices=("train", "all"))
    data_dir: str = opt(factory=default_data_dir, help="where bare pool names are looked up")
    out: str = opt("runs/program_head", "where the head and its report go")
    overwrite: bool = opt(False, "replace a head already in out")
    reference: str | None = opt("gpt-4o", "the worker the budget is a share of (null: the most "
                                          "accurate worker)")
    budget_share: float = opt(0.5, "mean cost per question at most this share of the "
                                   "reference worker's", gt=0)
    budget: float | None = opt(None, "mean $/question at most (overrides budget_share)", gt=0)
    top_workers: int = opt(6, "cascades over this many of the most accurate workers (0: "
                              "single workers only)", min=0)
    folds: int = opt(5, "cross-validation folds that choose the settings", min=2)
    question_chars: int = opt(400, "the head reads the question's first N characters", min=1)
    batch_size: int = opt(16, "questions per forward pass", min=1)
    dtype: str = opt("float32", "weights' dtype", choices=("float32", "bfloat16", "float16"))
    autocast: str | None = opt("bfloat16", "forward passes under autocast (null: none)",
                               choices=("bfloat16", "float16"))
    device: str = opt("cpu", "cpu, cuda or cuda:N")
    torch_threads: int = opt(2, "CPU threads for the forward passes", min=1)


def candidate_programs(table: Any, top_workers: int) -> list[tuple[int, ...]]:
    """Worker-index programs: every worker alone, then with comparable answers every cascade
    (a, b, c) over the `top_workers` most accurate workers (a the cheaper of a, b)."""
    from ray_conductor.lite.programs import library

    top = np.argsort(-table.correct.mean(0), kind="stable")[:top_workers]
    return [p.workers for p in library(table, 3 if top_workers >= 3 else 1, among=top)]


def head_budget(table: Any, cfg: FitHeadConfig) -> tuple[float, str | None]:
    """The budget in $/question, and the reference worker it is a share of."""
    if cfg.budget is not None:
        return float(cfg.budget), None
    names = list(table.workers)
    ref = cfg.reference or names[int(np.argmax(table.correct.mean(0)))]
    if ref not in names:
        raise ConfigError(f"reference={ref!r} is not a worker of this pool ({', '.join(names)}); "
                          "name one of them, reference=null for the most accurate, or budget=$")
    return cfg.budget_share * float(table.cost[:, names.index(ref)].mean()), ref


def fit_from_table(table: Any, x: np.ndarray, cfg: FitHeadConfig,
                   meta: dict[str, Any] | None = None) -> ProgramHead:
    """The head for a `LiteTable` (recorded outcomes) and the LM's feature rows `x`."""
    from ray_conductor.data.splits import unit_hash
    from ray_conductor.lite.programs import Program, outcomes

    progs = candidate_programs(table, cfg.top_workers)
    correct, cost = outcomes(table, [Program(p) for p in progs])
    folds = np.array([int(unit_hash(f"head/{q}") * cfg.folds) for q in table.query_ids])
    budget, ref = head_budget(table, cfg)
    names = list(table.workers)
    return fit_head(x, correct, cost, folds, names, [tuple(names[i] for i in p) for p in progs],
                    budget, question_chars=cfg.question_chars,
                    meta={**(meta or {}), "reference": ref})


def run_fit_head(cfg: FitHeadConfig) -> dict[str, Any]:
    import torch

    from ray_conductor.data.pools import load_pool
    from ray_conductor.lite.table import build_table
    from ray_conductor.policy.hf_engine import TransformersEngine
    from ray_conductor.policy.runner import locate_conductor

    if cfg.split == "test":
        raise ConfigError("fit-head fits on split=train (or all); never on test")
    out = Path(cfg.out)
    if (out / HEAD_JSON).exists() and not cfg.overwrite:
        raise ConfigError(f"{out} already holds a program head; choose another out or pass "
                          "overwrite=true")
    torch.set_num_threads(cfg.torch_threads)
    t0 = time.perf_counter()
    data = load_pool(cfg.pool, data_dir=cfg.data_dir)
    model, _, tag = locate_conductor(cfg.conductor)
    engine = TransformersEngine(model, device=cfg.device, dtype=cfg.dtype,
                                batch_size=cfg.batch_size, autocast=cfg.autocast)
    t1 = time.perf_counter()
    table = build_table(data, cfg.split,
                        lambda texts: engine.embed([t[:cfg.question_chars] for t in texts]))
    embed_s = time.perf_counter() - t1
    head = fit_from_table(table, table.features, cfg,
                          {"conductor": cfg.conductor, "model": model, "version": tag,
                           "pool": cfg.pool, "split": cfg.split, "autocast": cfg.autocast})
    head.save(out)
    sel = head.meta["selection"]
    picks = head.choose(table.features)
    counts = Counter(head.describe(int(k)) for k in picks)
    report = {"out": str(out), "rows": len(table), "programs": len(head.programs),
              "budget_per_query": round(head.meta["budget"], 8),
              "reference": head.meta["reference"], "alpha": sel["alpha"], "lam": sel["lam"],
              "cv_accuracy": sel["cv_accuracy"], "cv_cost_per_query": sel["cv_cost"],
              "over_budget": bool(sel.get("over_budget")),
              "train_programs": dict(counts.most_common(12)),
              "embed_s": round(embed_s, 1), "wall_s": round(time.perf_counter() - t0, 1)}
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report
