"""Importer for a team's own recordings (`records:PATH[,PATH...]`): JSONL, CSV or Parquet
files (by extension, or directories of them), one row per (question, model).

Columns (README "Your own workload"):
- required: `query` (the question as a worker saw it), `model`, `response` (null: no answer
  recorded, a hole; in CSV an empty cell), `answer_format` (mc | number | math | code |
  label), `reference` (the gold answer: a letter, a number, a MATH expression; for code the
  tests, which a `tests` column may carry instead; unused for label);
- optional: `query_id` (default `records/` + a hash of `query`), `task` (default `records`),
  `answer` (the extracted answer; default `verify.answers.extract_answer`), `correct`
  (default: `answer` judged against `reference`; label and code rows must carry it, code is
  judged when it is recorded: `ray-conductor record` runs the tests in the sandbox),
  `input_tokens` / `output_tokens` (default: counted, see `pricing`), `cost` (recorded dollars;
  default tokens x litellm's price map, then configs/prices.yaml).

Every question gets one row per model: the (question, model) pairs no file has are holes.
A row the importer cannot use is a one-line `DataError` naming the file, line (Parquet: row)
and column; what it can skip or settle is counted in the report: identical duplicate rows,
rows whose recorded `correct` the verifier would not give, questions whose rows disagree on
the gold answer (the judge takes the most common), columns it does not know.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ray_conductor.data import pricing
from ray_conductor.data.checks import check_columns, plain_id
from ray_conductor.data.files import brief
from ray_conductor.data.table import ImportReport, TableBuilder, files_under
from ray_conductor.errors import DataError
from ray_conductor.verify.answers import answers_match, extract_answer, reference_answer

SOURCE = "records"
SUFFIXES = (".jsonl", ".csv", ".parquet")
FORMATS = ("mc", "number", "math", "code", "label")
REQUIRED = ("query", "model", "response", "answer_format", "reference")
OPTIONAL = ("query_id", "task", "answer", "correct", "input_tokens", "output_tokens", "cost",
            "tests",
            # written by `record`, kept in the files, not imported: why a hole is one, and how
            # a code question's tests call the answer
            "error", "entry_point", "prompt")
WHAT = ("records files (.jsonl, .csv or .parquet) with the columns query, model, response, "
        "answer_format and reference (README: Your own workload)")
_TRUE, _FALSE = ("true", "1", "yes", "1.0"), ("false", "0", "no", "0.0")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # answers are single cells of many KB


@dataclass
class RecordRow:
    """One usable row, typed; `where` is "file:line" for messages."""

    where: str
    query_id: str
    query: str
    task: str
    answer_format: str
    reference: str
    model: str
    response: str | None
    answer: str | None
    correct: bool | None
    input_tokens: int | None
    output_tokens: int | None
    cost: float | None

    def same_as(self, other: "RecordRow") -> bool:
        return all(getattr(self, f) == getattr(other, f) for f in (
            "query", "task", "answer_format", "reference", "response", "answer", "correct",
            "input_tokens", "output_tokens", "cost"))


def default_query_id(query: str) -> str:
    return f"{SOURCE}/{hashlib.sha256(query.encode()).hexdigest()[:16]}"


# -- reading the three file types ------------------------------------------------------------


def read_rows(f: Path, required: Sequence[str] = REQUIRED, what: str = WHAT
              ) -> Iterator[tuple[str, dict[str, Any]]]:
    """("file:line", {column: value}) for every row of one file, by its extension; empty
    CSV cells are None. CSV and Parquet files must have the `required` columns (`reference`
    may be `tests`); a JSONL row's keys are checked by whoever reads the row."""
    if f.suffix == ".jsonl":
        yield from _jsonl(f)
    elif f.suffix == ".csv":
        yield from _csv(f, required, what)
    elif f.suffix == ".parquet":
        yield from _parquet(f, required, what)
    else:
        raise DataError(f"{f}: unknown file type {f.suffix or '(none)'!r}: give .jsonl, .csv "
                        f"or .parquet files ({what})")


@contextmanager
def _readable(f: Path) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError as e:
        raise DataError(f"{f}: not UTF-8 text ({brief(e)}); re-save it as UTF-8") from None
    except csv.Error as e:
        raise DataError(f"{f}: not a readable CSV ({brief(e)})") from None
    except OSError as e:
        raise DataError(f"{f}: cannot read this file ({e.strerror or brief(e)}); check the path "
                        f"and its permissions") from None


def _jsonl(f: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with _readable(f), open(f, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise DataError(f"{f}:{n}: not a JSON object ({brief(e)}); each line of a "
                                f".jsonl records file is one row") from None
            if not isinstance(row, dict):
                raise DataError(f"{f}:{n}: expected a JSON object (one row), found "
                                f"{type(row).__name__}")
            yield f"{f}:{n}", row


def _csv(f: Path, required: Sequence[str], what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with _readable(f), open(f, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{f}: empty file; expected a header row and {what}")
        header = [h.strip() for h in header]
        check_columns(header, str(f))
        _check_columns(f, header, required)
        line = reader.line_num + 1
        for cells in reader:
            where, line = f"{f}:{line}", reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DataError(f"{where}: {len(cells)} cells where the header has "
                                f"{len(header)}; a cell lost its quotes or the file is cut short")
            yield where, {h: (c if c.strip() else None) for h, c in zip(header, cells)}


def _parquet(f: Path, required: Sequence[str], what: str
             ) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{f}: not a readable Parquet file ({brief(e)}); expected {what}") from None
    check_columns(names, str(f))
    _check_columns(f, names, required)
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                n += 1
                yield f"{f}: row {n}", row
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{f}: damaged Parquet file after row {n} ({brief(e)}); re-write "
                        f"it") from None


def _check_columns(f: Path, names: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in names and not (c == "reference" and "tests"
                                                                  in names)]
    if missing:
        raise DataError(f"{f}: missing the required column{'s' * (len(missing) > 1)} "
                        f"{missing}; this file needs {list(required)} (README: Your own "
                        f"workload)")


# -- one row ----------------------------------------------------------------------------------


def cell_text(row: dict[str, Any], col: str, where: str, *, allow_number: bool = False
              ) -> str | None:
    """A text cell (None when empty); a number only where `allow_number` (ids, answers)."""
    v = row.get(col)
    if v is None or isinstance(v, str):
        return v
    if allow_number and isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise DataError(f"{where}, column {col!r}: expected text, found {type(v).__name__} "
                    f"{str(v)[:40]!r}")


def _flag(row: dict[str, Any], where: str) -> bool | None:
    v = row.get("correct")
    if v is None or isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if isinstance(v, (int, float, str)) and s in _TRUE + _FALSE:
        return s in _TRUE
    raise DataError(f"{where}, column 'correct': expected true/false (or 1/0, empty for none), "
                    f"found {str(v)[:40]!r}")


def _number(row: dict[str, Any], col: str, where: str, *, whole: bool) -> float | None:
    """A count (`whole`) or dollars: a finite number >= 0, None when empty."""
    v = row.get(col)
    if v is None:
        return None
    try:
        x = float(v) if not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or x < 0 or (whole and x != int(x)):
        what = "a whole number" if whole else "dollars"
        raise DataError(f"{where}, column {col!r}: expected {what} >= 0 (or empty), found "
                        f"{str(v)[:40]!r}")
    return x


def _count(row: dict[str, Any], col: str, where: str) -> int | None:
    n = _number(row, col, where, whole=True)
    return None if n is None else int(n)


def row_id(row: dict[str, Any], where: str) -> str | None:
    """A given `query_id` (text or an integer: `checks.plain_id`), None when absent or
    empty (the default is then a hash of the query)."""
    v = row.get("query_id")
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    return plain_id(v, f"{where}, column 'query_id'", "query_id").strip()


def parse_row(where: str, row: dict[str, Any]) -> RecordRow:
    """A typed `RecordRow`, or a `DataError` naming the row and column."""
    for col in REQUIRED:
        if col not in row and not (col == "reference" and "tests" in row):
            raise DataError(f"{where}: no column {col!r}; records need {list(REQUIRED)}")
    query = cell_text(row, "query", where)
    model = cell_text(row, "model", where)
    for col, v in (("query", query), ("model", model)):
        if not v or not v.strip():
            raise DataError(f"{where}, column {col!r}: empty; every row needs its {col}")
    assert query is not None and model is not None
    fmt = (cell_text(row, "answer_format", where) or "").strip()
    if fmt not in FORMATS:
        raise DataError(f"{where}, column 'answer_format': unknown answer format {fmt!r}; use "
                        f"one of {', '.join(FORMATS)}")
    ref = cell_text(row, "reference", where, allow_number=True)
    tests = cell_text(row, "tests", where)
    if fmt == "code" and not (ref or "").strip():
        ref = tests
    qid = row_id(row, where)
    task = cell_text(row, "task", where)
    return RecordRow(where, qid or default_query_id(query), query,
               task.strip() if task and task.strip() else SOURCE, fmt, (ref or "").strip(),
               model.strip(), cell_text(row, "response", where), cell_text(row, "answer", where,
                                                                   allow_number=True),
               _flag(row, where), _count(row, "input_tokens", where),
               _count(row, "output_tokens", where), _number(row, "cost", where, whole=False))


# -- the import -------------------------------------------------------------------------------


@dataclass
class _Question:
    where: str
    query: str
    task: str
    answer_format: str
    references: Counter[str]


class _Collector:
    """Rows by (query id, model), with the per-question and per-file checks."""

    def __init__(self, report: ImportReport):
        self.report = report
        self.questions: dict[str, _Question] = {}
        self.rows: dict[tuple[str, str], RecordRow] = {}
        self.unknown: Counter[str] = Counter()

    def add(self, where: str, raw: dict[str, Any]) -> None:
        self.unknown.update(k for k in raw if k not in REQUIRED and k not in OPTIONAL)
        r = parse_row(where, raw)
        q = self.questions.get(r.query_id)
        if q is None:
            q = self.questions[r.query_id] = _Question(where, r.query, r.task, r.answer_format,
                                                       Counter())
        else:
            self._agrees(q, r)
        key = (r.query_id, r.model)
        first = self.rows.get(key)
        if first is not None:
            if not r.same_as(first):
                raise DataError(f"{where}: a second, different row for query_id "
                                f"{r.query_id!r} and model {r.model!r} (the first is at "
                                f"{first.where}); keep one row per question and model")
            self.report.model(r.model).duplicates += 1
            return
        _check_judgeable(r)
        if r.response is not None:
            q.references[r.reference] += 1
        self.rows[key] = r

    @staticmethod
    def _agrees(q: _Question, r: RecordRow) -> None:
        for col, have, got in (("query", q.query, r.query), ("task", q.task, r.task),
                               ("answer_format", q.answer_format, r.answer_format)):
            if have != got:
                raise DataError(f"{r.where}, column {col!r}: query_id {r.query_id!r} has "
                                f"{col} {str(have)[:40]!r} at {q.where} but {str(got)[:40]!r} "
                                f"here; one question has one {col}")


def _check_judgeable(r: RecordRow) -> None:
    """A row the replay judge could never score is refused (holes never need judging)."""
    if r.response is None:
        return
    if r.answer_format in ("label", "code") and r.correct is None:
        how = ("`ray-conductor record` judges code answers by running their tests in the "
               "sandbox" if r.answer_format == "code" else "label rows carry their verdict")
        raise DataError(f"{r.where}, column 'correct': a {r.answer_format} row needs "
                        f"`correct` (true/false); {how}")
    if r.answer_format in ("mc", "number", "math") and \
            reference_answer(r.reference, r.answer_format) is None:
        raise DataError(f"{r.where}, column 'reference': {r.reference[:40]!r} is not a "
                        f"{r.answer_format} answer, so the row cannot be judged; give the gold "
                        f"answer ({_EXAMPLES[r.answer_format]})")


_EXAMPLES = {"mc": "a letter, e.g. B", "number": "a number, e.g. 42 or 0.5",
             "math": "a MATH answer, e.g. \\frac{1}{2}"}


def import_records(paths: Sequence[str | Path], prices: dict[str, Any] | None = None,
                   ) -> tuple[pa.Table, ImportReport]:
    """Import records files into the canonical table (every model x every question seen).
    `prices`: a price config (default configs/prices.yaml)."""
    report = ImportReport(source=SOURCE)
    got = _Collector(report)
    for f in files_under(paths, SUFFIXES, WHAT):
        report.files.append(str(f))
        for where, raw in read_rows(f):
            got.add(where, raw)
    if not got.questions:
        raise DataError(f"{', '.join(map(str, paths))}: no rows ({WHAT})")
    models = sorted({m for _, m in got.rows}, key=str.casefold)
    price_of = _prices(got, models, report, prices)
    q_tokens: dict[str, int] = {}
    out, disagree = TableBuilder(), 0
    for m in models:
        report.model(m)
    for qid, q in got.questions.items():
        for m in models:
            disagree += _add_row(out, qid, q, m, got.rows.get((qid, m)), q_tokens,
                                 price_of.get(m), report)
    report.models = {m: report.models[m] for m in models}
    report.queries = len(got.questions)
    report.reference_conflicts = sum(len(q.references) > 1 for q in got.questions.values())
    counted = any(r.response is not None and None in (r.input_tokens, r.output_tokens)
                  for r in got.rows.values())
    report.token_counter = pricing.token_counter_name() if counted else \
        "none: every answered row carries input_tokens and output_tokens"
    _notes(report, got, disagree)
    return out.table(report.where(), report), report


def _prices(got: _Collector, models: list[str], report: ImportReport,
            config: dict[str, Any] | None) -> dict[str, pricing.Price]:
    """A price for each model with answered rows that carry no recorded cost."""
    need = sorted({r.model for r in got.rows.values() if r.response is not None
                   and r.cost is None}, key=str.casefold)
    config = config if config is not None else pricing.load_price_config()
    out, unpriced = {}, []
    for m in need:
        try:
            out[m] = pricing.price_for(m, config)
        except DataError:
            unpriced.append(m)
    if unpriced:
        raise DataError(f"no recorded cost and no price for models {unpriced}: give a `cost` "
                        f"column, or map each model to a litellm.model_cost key under litellm:,"
                        f" or give {{input: $, output: $}} per 1M tokens under table:, in "
                        f"{pricing.PRICES_FILE}")
    for m in models:
        r, p = report.model(m), out.get(m)
        recorded = any(x.cost is not None for (_, mm), x in got.rows.items() if mm == m)
        r.price_source = "+".join(s for s, use in (("recorded", recorded),
                                                   (p.source if p else "", p is not None)) if use)
        r.price_source = r.price_source or "recorded"
        if p is not None:
            r.price_key = p.key
            r.input_price_per_mtok, r.output_price_per_mtok = p.input_per_mtok, p.output_per_mtok
    return out


def _add_row(out: TableBuilder, qid: str, q: _Question, model: str, r: RecordRow | None,
             q_tokens: dict[str, int], price: pricing.Price | None, report: ImportReport
             ) -> bool:
    """Append the (question, model) row (a hole when `r` is None); True when a recorded
    `correct` differs from what the verifier says. A row is judged against its own
    `reference` (as MMLU-Pro's rows are against their file's answer key)."""
    mrep = report.model(model)
    mrep.rows += 1
    fmt = q.answer_format
    ref = r.reference if r is not None else (q.references.most_common(1)[0][0]
                                             if q.references else "")
    if r is None or r.response is None:
        mrep.holes += 1
        out.add(query_id=qid, query=q.query, task=q.task, answer_format=fmt, reference=ref,
                model=model, response=None, answer=None, correct=None, input_tokens=0,
                output_tokens=0, cost=0.0, cost_source=mrep.price_source.split("+")[-1])
        return False
    mrep.answered += 1
    answer = extract_answer(r.response, fmt) if r.answer is None else (
        reference_answer(r.answer, fmt) if fmt in ("mc", "number", "math")
        else r.answer.strip() or None)
    mrep.null_preds += answer is None and fmt in ("mc", "number", "math")
    verdict = answers_match(answer, reference_answer(r.reference, fmt), fmt) \
        if fmt in ("mc", "number", "math") else None
    correct = r.correct if r.correct is not None else verdict
    if r.input_tokens is None and qid not in q_tokens:
        q_tokens[qid] = pricing.count_tokens(q.query)
    tin = r.input_tokens if r.input_tokens is not None else q_tokens[qid]
    tout = r.output_tokens if r.output_tokens is not None else pricing.count_tokens(r.response)
    if r.cost is not None:
        cost, source = r.cost, "recorded"
    else:
        assert price is not None
        cost, source = price.cost(tin, tout), price.source
    out.add(query_id=qid, query=q.query, task=q.task, answer_format=fmt, reference=ref,
            model=model, response=r.response, answer=answer, correct=correct,
            input_tokens=tin, output_tokens=tout, cost=cost, cost_source=source)
    return verdict is not None and r.correct is not None and r.correct != verdict


def _notes(report: ImportReport, got: _Collector, disagree: int) -> None:
    formats = Counter(q.answer_format for q in got.questions.values())
    report.notes.append("answer formats: " + ", ".join(f"{f} {n}" for f, n in sorted(
        formats.items())) + " questions")
    if report.reference_conflicts:
        report.notes.append(f"{report.reference_conflicts} questions have rows that disagree "
                            f"on `reference`: each row's `correct` uses its own, the replay "
                            f"judge the most common")
    if disagree:
        report.notes.append(f"{disagree} rows carry a `correct` the verifier would not give: "
                            f"the table keeps them; `eval` judges answers with the verifier")
    dups = sum(m.duplicates for m in report.models.values())
    if dups:
        report.notes.append(f"{dups} identical duplicate rows skipped")
    if got.unknown:
        report.notes.append(f"ignored columns (not records columns): {sorted(got.unknown)}")
