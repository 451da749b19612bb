"""`ray-conductor record questions=FILE workers=YAML out=records.parquet`: ask live workers
every question, through the shared worker proxies at `rollout` priority, and write a records
table that `pool=records:out` reads.

Order of work: every check that needs no call (the config's ranges, `out` and its extension,
the questions file row by row, the worker YAML and `models=`, the sandbox when there are code
questions); then the estimate, printed, and a refusal when it is over `max_dollars` (or when
some worker's price is unknown and there is a budget); then Ray, the proxies and the calls,
with a progress bar; then code answers run in the sandbox; then the table, written
atomically. An interrupted run (Ctrl-C: the calls in flight finish and are stored; or the
budget reached) writes nothing: the same command again asks only what is missing.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_conductor.config import (
    RayConfig, check, opt, read_yaml, resolve_config_file, storage_opt)
from ray_conductor.errors import ConfigError, DataError, RunFailed
from ray_conductor.graph import GraphConfig
from ray_conductor.record.output import SUFFIXES, judge_code, record_rows, write_records
from ray_conductor.record.questions import RecordQuestion, read_questions
from ray_conductor.record.recorder import RecordStats, Recorder, messages_for
from ray_conductor.record.store import (
    AnswerStore, Pricer, RecordedAnswer, answer_key, call_fingerprint)


@dataclass
class RecordConfig:
    """Ask live workers every question of a questions file; write a records table."""

    questions: str | None = opt(None, "the questions, PATH[,PATH]: JSONL, CSV or Parquet with "
                                "query, answer_format: mc|number|math|code, reference or tests")
    workers: str | None = opt(None, "worker-pool YAML of the workers to ask: a path, or a name "
                              "under configs/")
    models: list[str] | None = opt(None, "ask only these workers; null: all of workers=")
    out: str = opt("data/records.parquet", "the records table written: .parquet, .jsonl or "
                   ".csv", nonempty=True)
    overwrite: bool = opt(False, "replace an existing out=")
    storage: str | None = storage_opt()
    cache: str | None = opt(None, "the answer store that makes runs resumable; null: "
                            "OUT.answers beside out=")
    limit: int | None = opt(None, "only the first N questions; null: all", min=1)
    max_dollars: float | None = opt(None, "refuse to start above this estimate, and stop "
                                    "before spending more; null: no limit", min=0)
    max_tokens: int = opt(1024, "output tokens per answer at most", min=1)
    output_tokens: int | None = opt(None, "output tokens per answer the estimate assumes; "
                                    "null: max_tokens, an upper bound", min=0)
    temperature: float = opt(0.0, "sampling temperature", min=0)
    concurrency: int = opt(16, "calls in flight at once", min=1)
    timeout_s: float = opt(600.0, "deadline of one call, queueing and retries included", gt=0)
    code_timeout_s: float = opt(10.0, "time one code answer's tests may run in the sandbox",
                                gt=0)
    code_parallel: int = opt(2, "code answers tested at once", min=1)
    progress: bool = opt(True, "a progress bar on stderr")
    ray: RayConfig = opt(factory=RayConfig, help="how to reach or start Ray")
    graph: GraphConfig = opt(factory=GraphConfig, help="the worker proxies' role")


@dataclass
class RecordPlan:
    """Everything checked before any call: what to ask, of whom, and where it goes."""

    out: Path
    questions: list[RecordQuestion]
    repeats: int
    pool: Any  # the WorkerPoolConfig the proxies are built from
    workers: list[str]  # the workers asked
    store: AnswerStore
    keys: dict[str, str]  # worker -> call fingerprint
    params: dict[str, Any]

    def key(self, q: RecordQuestion, worker: str) -> str:
        return answer_key(q, worker, self.keys[worker])

    def todo(self) -> list[tuple[RecordQuestion, str]]:
        return [(q, w) for q in self.questions for w in self.workers
                if self.store.get(self.key(q, w)) is None]


def _paths(spec: str) -> list[Path]:
    return [Path(p.strip()).expanduser() for p in str(spec).split(",") if p.strip()]


def plan_record(cfg: Any) -> RecordPlan:
    """Every check that needs no call, in order; the `RecordPlan` of the run."""
    from ray_conductor.data.files import check_output, check_readable
    from ray_conductor.data.table import files_under
    from ray_conductor.record.questions import WHAT
    from ray_conductor.workers.config import as_pool_config, fingerprint

    check(cfg, RecordConfig)
    for key, what in (("questions", "a questions file: JSONL, CSV or Parquet with query, "
                                    "answer_format and reference"),
                      ("workers", "a worker-pool YAML of the workers to ask")):
        if not str(getattr(cfg, key) or "").strip():
            raise ConfigError(f"{key}= is required: give {what} (README: Your own workload)")
    if not str(cfg.out).endswith(SUFFIXES):
        raise ConfigError(f"out={cfg.out}: give a .parquet, .jsonl or .csv file name (the "
                          f"records table's format is its extension)")
    qpaths = _paths(cfg.questions)
    inputs = files_under(qpaths, SUFFIXES, WHAT)
    check_readable(inputs)
    workers_file = resolve_config_file(cfg.workers).resolve()
    out = check_output(cfg.out, [*inputs, workers_file], [p for p in qpaths if p.is_dir()],
                       SUFFIXES, bool(cfg.overwrite))
    questions, repeats = read_questions(qpaths)
    questions = questions[:cfg.limit] if cfg.limit else questions
    pool = as_pool_config(read_yaml(cfg.workers, "workers"))
    names = [w.name for w in pool.workers]
    asked = list(cfg.models) if cfg.models else names
    unknown = [m for m in asked if m not in names]
    if unknown or not asked:
        raise ConfigError(f"models={unknown or asked}: not workers of {cfg.workers}; its "
                          f"workers are {names}")
    params = {"temperature": float(cfg.temperature), "max_tokens": int(cfg.max_tokens)}
    prints = {w.name: fingerprint(w, pool.replay, pool.queue_timeout_s) for w in pool.workers}
    keys = {w: call_fingerprint(prints[w], params) for w in asked}
    cache = Path(cfg.cache).expanduser() if cfg.cache else \
        out.with_name(f"{out.name}.answers")
    if cache.resolve() == out.resolve() or cache.resolve() in {p.resolve() for p in inputs}:
        raise ConfigError(f"cache={cache} is the output or an input: give another cache=")
    return RecordPlan(out, questions, repeats, pool, list(dict.fromkeys(asked)),
                      AnswerStore(cache), keys, params)


def _prices(plan: RecordPlan) -> dict[str, tuple[float | None, float | None]]:
    from ray_conductor.workers.proxy import list_price

    return {w.name: list_price(w) for w in plan.pool.workers if w.name in plan.workers}


def check_budget(est: Any, max_dollars: float | None) -> None:
    """Refuse, before any call, an estimate over the budget or a budget nobody can keep."""
    if max_dollars is None:
        return
    if est.unpriced:
        raise ConfigError(f"max_dollars={max_dollars:g}, but no price is known for workers "
                          f"{est.unpriced}: set their input_price_per_mtok and "
                          f"output_price_per_mtok in the worker YAML")
    if est.dollars > max_dollars:
        raise ConfigError(f"the estimate ${est.dollars:.4f} for {est.calls} calls is over "
                          f"max_dollars={max_dollars:g}; nothing was asked: raise max_dollars, "
                          f"or ask fewer questions (limit=) or workers (models=), or lower "
                          f"max_tokens")


def _sandbox_ready(plan: RecordPlan) -> None:
    """With code questions, judge one tiny program both ways code is judged (across the
    value boundary, and in one process) before any call: a machine without a working
    sandbox fails here with the sandbox's one-line `SandboxError`."""
    if any(q.answer_format == "code" for q in plan.questions):
        from ray_conductor.verify.code import humaneval_correct, mbpp_correct

        mbpp_correct("def f():\n    return 1\n", "assert f() == 1")
        humaneval_correct("    return 1\n", {"prompt": "def f():\n", "entry_point": "f",
                                               "test": "def check(c):\n    assert c() == 1\n"})


def run_record(cfg: RecordConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    plan = plan_record(cfg)
    _sandbox_ready(plan)
    todo = plan.todo()
    pricer = Pricer(_prices(plan), cfg.max_tokens if cfg.output_tokens is None
                    else cfg.output_tokens)
    est = pricer.estimate(((q, w, messages_for(q)) for q, w in todo),
                          len(plan.questions) * len(plan.workers) - len(todo))
    print(f"{len(plan.questions)} questions x {len(plan.workers)} workers {plan.workers}; "
          f"answers stored in {plan.store.path}")
    print(est.line(), flush=True)
    check_budget(est, cfg.max_dollars)
    stats, failures = _ask(cfg, plan, todo, pricer) if todo else (RecordStats(), {})
    if stats.stopped:
        _stopped(plan, stats)
    ran = judge_code(plan.questions, plan.workers, plan.store, plan.key,
                     timeout_s=cfg.code_timeout_s, parallel=cfg.code_parallel)
    rows = record_rows(plan.questions, plan.workers, plan.store, plan.key, failures)
    out = write_records(rows, plan.out, overwrite=bool(cfg.overwrite))
    return _report(plan, out, stats, ran, est, time.perf_counter() - t0)


def _ask(cfg: RecordConfig, plan: RecordPlan, todo: list[tuple[RecordQuestion, str]],
         pricer: Pricer) -> tuple[RecordStats, dict[str, RecordedAnswer]]:
    """The calls, through the proxies at rollout priority, with Ctrl-C as a clean stop."""
    from tqdm.auto import tqdm

    from ray_conductor.graph import GraphSpec, worker_pool
    from ray_conductor.runtime import init_ray

    spec = GraphSpec.from_config(cfg.graph, cfg.ray.namespace)
    init_ray(cfg.ray)
    pool = worker_pool(cfg, None, "rollout", spec=spec, pool_cfg=plan.pool)
    bar = tqdm(total=len(todo), desc="record", unit="call", disable=not cfg.progress,
               file=sys.stderr)

    def shown(s: Any) -> None:
        bar.update()
        bar.set_postfix(spent=f"${s.spent:.4f}", failed=s.failed, refresh=False)

    recorder = Recorder(pool, plan.store, plan.key, params={**plan.params,
                                                             "timeout_s": cfg.timeout_s},
                        price=lambda q, w: pricer.call(q, w, messages_for(q)),
                        max_dollars=cfg.max_dollars, concurrency=cfg.concurrency,
                        timeout_s=cfg.timeout_s + 30.0, on_answer=shown)
    try:
        stats = asyncio.run(_run_with_sigint(recorder, todo))
    finally:
        bar.close()
    return stats, recorder.failures


async def _run_with_sigint(recorder: Recorder, todo: list[tuple[RecordQuestion, str]]
                           ) -> RecordStats:
    """The first Ctrl-C stops cleanly (calls in flight are stored); a second one aborts."""
    loop = asyncio.get_running_loop()

    def first() -> None:
        print("\nstopping: no new calls; waiting for the calls in flight (Ctrl-C again to "
              "abandon them)", file=sys.stderr)
        recorder.stop()
        loop.remove_signal_handler(signal.SIGINT)

    try:
        loop.add_signal_handler(signal.SIGINT, first)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        pass
    try:
        return await recorder.run(todo)
    finally:
        try:
            loop.remove_signal_handler(signal.SIGINT)
        except (NotImplementedError, RuntimeError, ValueError):
            pass


def _stopped(plan: RecordPlan, stats: RecordStats) -> None:
    why = {"interrupted": "interrupted", "budget": "stopped at max_dollars"}[stats.stopped]
    raise RunFailed(f"{why} after {stats.calls} calls (${stats.spent:.4f}); {stats.left} calls "
                    f"not made, nothing written to {plan.out}; the {len(plan.store)} answers "
                    f"stored in {plan.store.path} are kept: run the same command again to ask "
                    f"only the rest")


def _report(plan: RecordPlan, out: Path, stats: RecordStats, judged: int, est: Any,
            wall_s: float) -> dict[str, Any]:
    """Read the table back as a pool would (the records importer), print it, return it."""
    from ray_conductor.data.commands import format_report
    from ray_conductor.data.records import import_records
    from ray_conductor.data.table import summarize

    try:
        table, report = import_records([out])
    except DataError as e:  # would be our bug: say so, the table is written
        raise RunFailed(f"{out} was written but does not read back as records: {e}") from None
    summary = summarize(table)
    print(format_report(summary, report.to_dict()))
    result = {"out": str(out), "cache": str(plan.store.path), "questions": len(plan.questions),
              "workers": plan.workers, "calls": stats.calls, "spent": stats.spent,
              "retry": stats.retry, "estimate": est.dollars, "code_judged": judged,
              "repeats_skipped": plan.repeats, "summary": summary, "wall_s": round(wall_s, 2)}
    print(f"\n{stats.calls} calls made (${stats.spent:.4f}), "
          f"{est.cached} answers from the store, {judged} code answers run in the sandbox")
    if result["retry"]:
        print(f"{result['retry']} calls failed for a passing reason and are holes in this "
              f"table: run again with overwrite=true to ask them again")
    print(f"table: {out}  (use it as pool=records:{out})")
    return result

