"""The records `record` writes: one row per (question, worker) in the records format (README
"Your own workload"), judged, as JSONL, CSV or Parquet by the output's extension.

Multiple choice, number and math answers are judged like the replay judge judges them
(`verify.answers`: the canonical answer against the canonical reference). Code answers are
run against their tests by the hardened checkers (`verify.code.mbpp_correct` for assert
lines, `humaneval_correct` with an entry point: the program and the tests in two sandboxes,
only plain values between them), once per answer and test script: the verdict is stored with
the answer, so a re-run does not run it again. A call that failed is a hole (`response` null)
with its `error`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ray_conductor.data.files import atomic_path
from ray_conductor.record.questions import RecordQuestion
from ray_conductor.record.store import AnswerStore, RecordedAnswer
from ray_conductor.verify.answers import answers_match, extract_answer, reference_answer

COLUMNS = ("query_id", "query", "task", "model", "response", "answer_format", "reference",
           "answer", "correct", "input_tokens", "output_tokens", "cost", "error", "entry_point",
           "prompt")
SCHEMA = pa.schema([(c, pa.string()) for c in COLUMNS[:8]] + [
    ("correct", pa.bool_()), ("input_tokens", pa.int64()), ("output_tokens", pa.int64()),
    ("cost", pa.float64())] + [(c, pa.string()) for c in COLUMNS[12:]])
SUFFIXES = (".jsonl", ".csv", ".parquet")

Key = Callable[[RecordQuestion, str], str]


def _tests_key(q: RecordQuestion) -> str:
    """What a code verdict depends on besides the answer: the tests and how they call it."""
    return hashlib.sha256(json.dumps([q.reference, q.entry_point, q.prompt]).encode()
                          ).hexdigest()[:16]


def code_correct(q: RecordQuestion, text: str, timeout_s: float = 10.0) -> bool:
    """A code answer against its question's tests, by the hardened checkers."""
    from ray_conductor.verify.code import humaneval_correct, mbpp_correct

    if q.entry_point:
        problem = {"prompt": q.prompt or q.query, "test": q.reference,
                   "entry_point": q.entry_point}
        return humaneval_correct(text, problem, timeout_s=timeout_s)
    return mbpp_correct(text, q.reference, timeout_s=timeout_s)


def judge_code(questions: Sequence[RecordQuestion], workers: Sequence[str], store: AnswerStore,
               key: Key, *, timeout_s: float = 10.0, parallel: int = 2,
               on_done: Callable[[], None] | None = None) -> int:
    """Judge every stored code answer without a verdict for its question's tests
    (`code_correct`), `parallel` at a time, and store the verdicts; how many ran."""
    todo = []
    for q in questions:
        if q.answer_format != "code":
            continue
        for w in workers:
            a = store.get(key(q, w))
            if a is not None and a.text is not None and \
                    (a.verdict or {}).get("tests") != _tests_key(q):
                todo.append((q, w, a))

    def run(item: tuple[RecordQuestion, str, RecordedAnswer]) -> None:
        q, w, a = item
        ok = code_correct(q, a.text or "", timeout_s)
        a.verdict = {"tests": _tests_key(q), "correct": bool(ok)}
        store.put(key(q, w), a)
        if on_done is not None:
            on_done()

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        list(pool.map(run, todo))
    return len(todo)


def record_rows(questions: Sequence[RecordQuestion], workers: Sequence[str], store: AnswerStore,
                key: Key, failures: Mapping[str, RecordedAnswer] | None = None
                ) -> list[dict[str, Any]]:
    """Every (question, worker) as a records row, questions in order; a pair with neither a
    stored answer nor a failure of this run is a hole saying it was not asked."""
    failures = failures or {}
    out = []
    for q in questions:
        gold = reference_answer(q.reference, q.answer_format)
        for w in workers:
            k = key(q, w)
            a = store.get(k) or failures.get(k)
            out.append(_row(q, w, a, gold))
    return out


def _row(q: RecordQuestion, worker: str, a: RecordedAnswer | None, gold: str | None
         ) -> dict[str, Any]:
    row: dict[str, Any] = {"query_id": q.query_id, "query": q.query, "task": q.task,
                           "model": worker, "response": None, "answer_format": q.answer_format,
                           "reference": q.reference, "answer": None, "correct": None,
                           "input_tokens": 0, "output_tokens": 0, "cost": 0.0, "error": None,
                           "entry_point": q.entry_point or None, "prompt": q.prompt or None}
    if a is None:
        row["error"] = "not asked (the run stopped before this call)"
        return row
    row.update(input_tokens=a.input_tokens, output_tokens=a.output_tokens, cost=a.cost)
    if a.text is None:
        row["error"] = f"{a.error_code or 'failed'}: {a.error or ''}".strip()[:500]
        return row
    row["response"] = a.text
    if q.answer_format == "code":  # a verdict for other tests is no verdict
        v = a.verdict or {}
        row["correct"] = v.get("correct") if v.get("tests") == _tests_key(q) else None
    else:
        row["answer"] = extract_answer(a.text, q.answer_format)
        row["correct"] = answers_match(row["answer"], gold, q.answer_format)
    return row


def write_records(rows: Sequence[dict[str, Any]], out: str | Path, overwrite: bool = False
                  ) -> Path:
    """Write the rows atomically, by `out`'s extension; an existing `out` is replaced only
    with `overwrite`."""
    out = Path(out)
    with atomic_path(out, overwrite=overwrite) as tmp:
        if out.suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist(list(rows), schema=SCHEMA), tmp,
                           compression="zstd")
        elif out.suffix == ".csv":
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(COLUMNS)
                w.writerows([_cell(r[c]) for c in COLUMNS] for r in rows)
        else:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps({c: r[c] for c in COLUMNS}) + "\n" for r in rows)
    return out


def _cell(v: Any) -> Any:
    """CSV: empty for null; booleans as true/false (what the records importer reads)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v
