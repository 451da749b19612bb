"""Judge policies by running their plans through the executor: accuracy, dollars, calls and
latency per query. The same loop scores baselines and the trained conductor."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from ray_conductor.eval.policies import Plan, Policy
from ray_conductor.workers.base import WorkerInfo, WorkerPool
from ray_conductor.workflow import execute


@dataclass
class QueryResult:
    query_id: str
    correct: bool
    cost: float
    calls: int
    latency_s: float
    parsed: bool
    final_worker: str | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class PolicyReport:
    name: str
    n: int
    accuracy: float
    cost_per_query: float
    calls_per_query: float
    latency_mean_s: float
    parse_rate: float
    step_error_rate: float
    final_workers: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(name: str, results: Sequence[QueryResult]) -> PolicyReport:
    n = max(len(results), 1)
    calls = sum(r.calls for r in results)
    counts: dict[str, int] = {}
    for r in results:
        if r.final_worker:
            counts[r.final_worker] = counts.get(r.final_worker, 0) + 1
    return PolicyReport(
        name=name,
        n=len(results),
        accuracy=sum(r.correct for r in results) / n,
        cost_per_query=sum(r.cost for r in results) / n,
        calls_per_query=calls / n,
        latency_mean_s=sum(r.latency_s for r in results) / n,
        parse_rate=sum(r.parsed for r in results) / n,
        step_error_rate=sum(len(r.errors) for r in results) / max(calls, 1),
        final_workers=dict(sorted(counts.items(), key=lambda kv: -kv[1])),
    )


def _result(q, plan: Plan, trace, judge: Callable[[str, str], bool]) -> QueryResult:
    if trace is None:
        return QueryResult(q.query_id, False, 0.0, 0, 0.0, plan.parsed)
    return QueryResult(q.query_id, judge(q.query_id, trace.answer), trace.cost, trace.calls,
                       trace.wall_s, plan.parsed, trace.final_worker, trace.errors)


async def run_plans(plans: Sequence[Plan], queries: Sequence, pool: WorkerPool,
                    judge: Callable[[str, str], bool], *, concurrency: int = 64,
                    progress: str | None = None, params: dict | None = None) -> list[QueryResult]:
    """Execute one plan per query (at most `concurrency` at once) and judge the answers."""
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(queries), desc=progress, disable=progress is None, leave=False)

    async def one(plan: Plan, q) -> QueryResult:
        trace = None
        if plan.workflow is not None and len(plan.workflow):
            async with sem:
                trace = await execute(plan.workflow, q.query, pool, query_id=q.query_id,
                                      params=params,
                                      answer_format=getattr(q, "answer_format", None))
        bar.update()
        return _result(q, plan, trace, judge)

    try:
        return list(await asyncio.gather(*(one(p, q) for p, q in zip(plans, queries))))
    finally:
        bar.close()


async def evaluate_policies(policies: Sequence[Policy], queries: Sequence, pool: WorkerPool,
                            judge: Callable[[str, str], bool], workers: Sequence[WorkerInfo],
                            *, concurrency: int = 64, progress: bool = True,
                            params: dict | None = None) -> dict[str, PolicyReport]:
    """Every policy on the same queries and pool. Planners (`plan_batch`) have their plans
    executed here; policies that run their own workflows (`run_batch`: the LM conductor with
    recursion, the lite conductor deciding turn by turn) hand back (plan, trace) pairs."""
    params = {"temperature": 0.0, **(params or {})}
    reports = {}
    for policy in policies:
        if hasattr(policy, "run_batch"):
            episodes = await policy.run_batch(list(queries), pool, params)
            results = [_result(q, plan, trace, judge) for q, (plan, trace) in zip(queries, episodes)]
        else:
            plans = policy.plan_batch(queries, workers)
            results = await run_plans(plans, queries, pool, judge, concurrency=concurrency,
                                      progress=policy.name if progress else None, params=params)
        reports[policy.name] = summarize(policy.name, results)
    return reports
