"""The questions file of `ray-conductor record`: JSONL, CSV or Parquet (by extension), one
row per question with `query`, `answer_format` (mc | number | math | code) and `reference`
(the gold answer; for code the tests, or a `tests` column), and optionally `query_id`
(default: a hash of `query`, as for records) and `task`. Code tests come in two shapes:
assert lines (MBPP) or, with `entry_point`, a `check(candidate)` function (HumanEval) whose
`prompt` (the code the answer completes: imports, helpers, the signature) is the query unless
a `prompt` column gives it.

Every question must be judgeable when its answers arrive, so a `label` question (nothing
can judge a new answer to it) or a gold answer that is not of its format is refused here,
before any call, with the file, line and column.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ray_conductor.data.records import (
    SUFFIXES, cell_text, default_query_id, read_rows, row_id)
from ray_conductor.data.table import files_under
from ray_conductor.errors import DataError
from ray_conductor.verify.answers import reference_answer

FORMATS = ("mc", "number", "math", "code")
REQUIRED = ("query", "answer_format", "reference")
WHAT = ("a questions file (.jsonl, .csv or .parquet) with the columns query, answer_format and "
        "reference (or tests)")


@dataclass(frozen=True)
class RecordQuestion:
    """One question to ask; `reference` is the gold answer, for code the tests (HumanEval:
    with `entry_point` and the `prompt` they run against, "" for the query)."""

    query_id: str
    query: str
    task: str
    answer_format: str
    reference: str
    entry_point: str = ""
    prompt: str = ""

    @property
    def key(self) -> str:
        """What the workers see, hashed: the answer store's question key (an edited question
        is a new question)."""
        return hashlib.sha256(self.query.encode()).hexdigest()[:20]


def _code(row: dict[str, Any], where: str) -> tuple[str, str, str]:
    """(tests, entry point, prompt) of a code question."""
    tests = (cell_text(row, "tests", where) or cell_text(row, "reference", where) or "").strip()
    if not tests:
        raise DataError(f"{where}, column 'reference': a code question needs its tests (in "
                        f"`reference` or a `tests` column), so its answers can be run")
    ep = (cell_text(row, "entry_point", where) or "").strip()
    if ep and not ep.isidentifier():
        raise DataError(f"{where}, column 'entry_point': {ep[:40]!r} is not a Python name")
    if ep and "def check(" not in tests:
        raise DataError(f"{where}, column 'tests': with an entry_point the tests define "
                        f"check(candidate) (HumanEval); give assert lines without entry_point")
    return tests, ep, (cell_text(row, "prompt", where) or "") if ep else ""


def parse_question(where: str, row: dict[str, Any]) -> RecordQuestion:
    for col in REQUIRED:
        if col not in row and not (col == "reference" and "tests" in row):
            raise DataError(f"{where}: no column {col!r}; a questions file needs "
                            f"{list(REQUIRED)}")
    query = cell_text(row, "query", where)
    if not query or not query.strip():
        raise DataError(f"{where}, column 'query': empty; every question needs its text")
    fmt = (cell_text(row, "answer_format", where) or "").strip()
    if fmt not in FORMATS:
        why = (": no verifier can judge a new answer to a label question"
               if fmt == "label" else "")
        raise DataError(f"{where}, column 'answer_format': cannot record format {fmt!r}{why}; "
                        f"use one of {', '.join(FORMATS)}")
    ep = prompt = ""
    if fmt == "code":
        ref, ep, prompt = _code(row, where)
    else:
        ref = (cell_text(row, "reference", where, allow_number=True) or "").strip()
        if reference_answer(ref, fmt) is None:
            raise DataError(f"{where}, column 'reference': {ref[:40]!r} is not a {fmt} answer, "
                            f"so no answer to it could be judged; give the gold answer")
    qid = row_id(row, where)
    task = (cell_text(row, "task", where) or "").strip()
    return RecordQuestion(qid or default_query_id(query), query, task or "records", fmt, ref,
                          ep, prompt)


def read_questions(paths: Sequence[str | Path]) -> tuple[list[RecordQuestion], int]:
    """The questions in file order, and how many identical repeats were skipped; a query_id
    used twice for different questions is a `DataError` naming both rows."""
    out: dict[str, tuple[str, RecordQuestion]] = {}
    repeats = 0
    for f in files_under(paths, SUFFIXES, WHAT):
        for where, row in read_rows(f, REQUIRED, WHAT):
            q = parse_question(where, row)
            first = out.get(q.query_id)
            if first is None:
                out[q.query_id] = (where, q)
            elif first[1] == q:
                repeats += 1
            else:
                raise DataError(f"{where}: query_id {q.query_id!r} names another question at "
                                f"{first[0]}; give each question its own query_id")
    if not out:
        raise DataError(f"{', '.join(map(str, paths))}: no questions ({WHAT})")
    return [q for _, q in out.values()], repeats
