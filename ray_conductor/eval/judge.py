"""The one evaluation every caller shares (`ray-conductor eval`, the trainer's evaluation
of its conductor, `benchmarks/eval_checkpoint.py`): judge policies on the same questions
through the same pool, then write the JSON report and the cost-vs-accuracy plot and print
the table.

Failed worker calls are counted per policy, by error code and message, so a run that only
looks bad (accuracy 0.0000 because no API key was set) says why: the report carries a
`failures` block, the table a failure-rate column, and a run whose every call failed raises
`RunFailed` naming the most common causes instead of reporting zeros."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ray_conductor.errors import RunFailed
from ray_conductor.eval.evaluate import evaluate_policies
from ray_conductor.eval.report import (
    failure_line,
    format_table,
    scatter_plot,
    top_errors,
    write_json,
)


class FailureTally:
    """A `WorkerPool` that passes every call through and counts how each one ended."""

    def __init__(self, pool: Any):
        self.pool = pool
        self.calls, self.failed = 0, 0
        self.errors: Counter[tuple[str, str]] = Counter()

    def __getattr__(self, name: str) -> Any:  # stats(), handle(), priority, ...
        if name == "pool":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.pool, name)

    def workers(self) -> Any:
        return self.pool.workers()

    def _fail(self, code: str, message: str) -> None:
        self.failed += 1
        self.errors[(str(code), " ".join(str(message).split())[:300])] += 1

    async def complete(self, worker: str, messages: list, **params: Any) -> Any:
        self.calls += 1
        try:
            c = await self.pool.complete(worker, messages, **params)
        except asyncio.CancelledError:  # the executor's step deadline cut the call off
            self._fail("timeout", f"{worker}: the step's deadline passed")
            raise
        except Exception as e:  # the executor records it too; we only count it
            self._fail(getattr(e, "code", type(e).__name__), f"{worker}: {e}")
            raise
        if c.error is not None:
            self._fail(c.error_code or "worker_failed", c.error)
        return c

    def summary(self, fallback: dict[str, Any] | None = None) -> dict[str, Any]:
        """calls, failed, rate and the most common errors. `fallback` (a policy report) is
        used for policies whose calls ran elsewhere (the trainer's rollout actors)."""
        calls, failed = self.calls, self.failed
        if calls == 0 and fallback:
            calls = round(fallback["calls_per_query"] * fallback["n"])
            failed = round(fallback["step_error_rate"] * calls)
        return {"calls": calls, "failed": failed, "rate": failed / calls if calls else 0.0,
                "errors": top_errors(self.errors)}


def judge_policies(policies: Sequence[Any], data: Any, queries: Sequence[Any], pool: Any, *,
                   out: str | Path | None, title: str = "", plot: str | Path | None = None,
                   concurrency: int = 64, progress: bool = True,
                   meta: dict[str, Any] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Evaluate `policies` on `queries` over `pool` (judged by `data.judge`); the report is
    `meta` plus `n_queries`, `policies` (per policy: accuracy, $/query, calls, failures, ...),
    `failures` (all policies) and `wall_s`, written to `out` (and its plot beside it) when
    `out` is given. Raises `RunFailed` (nothing written) when every worker call failed."""
    t0 = time.perf_counter()
    workers = list(pool.workers())
    reports: dict[str, dict[str, Any]] = {}
    errors: Counter[tuple[str, str]] = Counter()
    for policy in policies:
        tally = FailureTally(pool)
        got = asyncio.run(evaluate_policies([policy], queries, tally, data.judge, workers,
                                            concurrency=concurrency, progress=progress))
        for name, r in got.items():
            reports[name] = {**r.to_dict()}
            reports[name]["failures"] = tally.summary(reports[name])
        errors.update(tally.errors)
    calls = sum(r["failures"]["calls"] for r in reports.values())
    failed = sum(r["failures"]["failed"] for r in reports.values())
    summary = {"calls": calls, "failed": failed, "rate": failed / calls if calls else 0.0,
               "errors": top_errors(errors)}
    if calls and failed == calls:
        raise RunFailed(f"every worker call failed ({failed} of {calls}), so nothing was "
                        f"measured and no report was written: {failure_line(summary)}")
    report = {**(meta or {}), "n_queries": len(queries), "policies": reports,
              "failures": summary, "wall_s": round(time.perf_counter() - t0, 2)}
    if out is not None:
        pic = Path(plot) if plot else Path(out).with_suffix(".png")
        report["files"] = {"report": str(out), "plot": str(pic)}
        write_json(report, out)
        scatter_plot(report["policies"], pic, title=title or f"n={len(queries)}")
    if not quiet:
        print(format_table(report["policies"]))
        if failed:
            print(f"\nfailed worker calls: {failure_line(summary)}")
        if out is not None:
            print(f"\nreport: {report['files']['report']}\nplot:   {report['files']['plot']}")
    return report
