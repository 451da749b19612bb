"""The one evaluation every caller shares (`ray-conductor eval`, the trainer's evaluation
of its conductor, `benchmarks/eval_checkpoint.py`): judge policies on the same questions
through the same pool, then write the JSON report and the cost-vs-accuracy plot and print
the table."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Sequence

from ray_conductor.eval.evaluate import evaluate_policies
from ray_conductor.eval.report import format_table, scatter_plot, write_json


def judge_policies(policies: Sequence[Any], data: Any, queries: Sequence[Any], pool: Any, *,
                   out: str | Path | None, title: str = "", plot: str | Path | None = None,
                   concurrency: int = 64, progress: bool = True,
                   meta: dict[str, Any] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Evaluate `policies` on `queries` over `pool` (judged by `data.judge`); the report is
    `meta` plus `n_queries`, `policies` (per policy: accuracy, $/query, calls, ...) and
    `wall_s`, written to `out` (and its plot beside it) when `out` is given."""
    t0 = time.perf_counter()
    workers = list(pool.workers())
    reports = asyncio.run(evaluate_policies(policies, queries, pool, data.judge, workers,
                                            concurrency=concurrency, progress=progress))
    report = {**(meta or {}), "n_queries": len(queries),
              "policies": {name: r.to_dict() for name, r in reports.items()},
              "wall_s": round(time.perf_counter() - t0, 2)}
    if out is not None:
        pic = Path(plot) if plot else Path(out).with_suffix(".png")
        report["files"] = {"report": str(out), "plot": str(pic)}
        write_json(report, out)
        scatter_plot(report["policies"], pic, title=title or f"n={len(queries)}")
    if not quiet:
        print(format_table(report["policies"]))
        if out is not None:
            print(f"\nreport: {report['files']['report']}\nplot:   {report['files']['plot']}")
    return report
