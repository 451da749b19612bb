"""Importer for RouterBench CSVs (Hu et al., 2024; also as repackaged by RouterDC).

Any CSV of that schema works, not only the MBPP part: one row per query with `sample_id`,
`prompt` (a Python-literal list of turns), `eval_name`, and per model a correctness column named
by the model, `<model>|model_response` and `<model>|total_cost` (real dollars). Models are found
from those suffixed columns. Costs are the recorded ones; tokens are counted (see `pricing`).
An empty label cell leaves `correct` null and is counted; an empty response is a hole.
"""

from __future__ import annotations

import ast
import csv
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa

from ray_conductor.data import pricing
from ray_conductor.data.checks import check_columns
from ray_conductor.data.files import brief
from ray_conductor.data.table import ImportReport, ModelReport, TableBuilder, files_under
from ray_conductor.errors import DataError

SOURCE = "routerbench"
COST, RESPONSE = "|total_cost", "|model_response"
WHAT = "a RouterBench CSV with '<model>|total_cost' columns"

Recorded = tuple[str | None, float | None, float | None]  # response, label, cost

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # responses are single cells of many KB


def detect_models(header: Sequence[str], where: str) -> list[str]:
    """Models named by `<model>|total_cost` / `<model>|model_response` columns, in header order;
    each must also have its correctness column."""
    models: list[str] = []
    for col in header:
        for suffix in (COST, RESPONSE):
            if col.endswith(suffix) and col[: -len(suffix)] not in models:
                models.append(col[: -len(suffix)])
    if not models or "sample_id" not in header or "prompt" not in header:
        raise DataError(f"{where}: expected {WHAT}, 'sample_id' and 'prompt', "
                        f"found columns {list(header)[:12]}")
    for m in models:
        lacking = [c for c in (m, m + RESPONSE, m + COST) if c not in header]
        if lacking:
            raise DataError(f"{where}: model {m!r} lacks the columns {lacking} ({WHAT})")
    return models


def literal_text(cell: str, where: str = "", what: str = "cell") -> str:
    """A Python-literal list of turns joined by blank lines; any other cell as it is. A list
    whose turns are not all text is refused: its text would be a Python repr, not an answer."""
    if cell.startswith("["):
        try:
            turns = ast.literal_eval(cell)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return cell
        if isinstance(turns, list):
            bad = [type(t).__name__ for t in turns if not isinstance(t, str)]
            if bad:
                raise DataError(f"{where}: {what} must be text or a list of texts, found a list "
                                f"holding {bad[0]}; fix the cell ({WHAT})")
            return "\n\n".join(turns)
    return cell


def _number(cell: str, where: str, what: str) -> float | None:
    if cell.strip() == "":
        return None
    try:
        x = float(cell)
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        raise DataError(f"{where}: {what} must be a number or empty, found {cell[:40]!r}")
    return x


@contextmanager
def _readable(f: Path) -> Iterator[None]:
    """Undecodable bytes, broken quoting and I/O failures as one-line `DataError`s."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise DataError(f"{f}: not UTF-8 text ({brief(e)}); re-save it as UTF-8 "
                        f"(expected {WHAT})") from None
    except csv.Error as e:
        raise DataError(f"{f}: not a readable CSV ({brief(e)}) (expected {WHAT})") from None
    except OSError as e:
        raise DataError(f"{f}: cannot read this file ({e.strerror or brief(e)}); check the path "
                        f"and its permissions") from None


def _read(f: Path, report: ImportReport, queries: dict[str, tuple[str, str]],
          answers: dict[str, dict[str, Recorded]]) -> None:
    with _readable(f), open(f, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{f}: empty file (expected {WHAT})")
        check_columns(header, str(f))
        models = detect_models(header, str(f))
        line = reader.line_num + 1
        for row in reader:
            where, line = f"{f}:{line}", reader.line_num + 1
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} cells where the header has {len(header)}; "
                                f"the file is cut short or a cell lost its quotes ({WHAT})")
            _add_answers(dict(zip(header, row, strict=True)), where, models, report, queries, answers)


def _add_answers(row: dict[str, str], where: str, models: list[str], report: ImportReport,
                 queries: dict[str, tuple[str, str]],
                 answers: dict[str, dict[str, Recorded]]) -> None:
    sid = (row.get("sample_id") or "").strip()
    if not sid:
        raise DataError(f"{where}: empty sample_id ({WHAT})")
    qid = f"{SOURCE}/{sid}"
    eval_name = (row.get("eval_name") or "").strip()
    queries.setdefault(qid, (literal_text(row["prompt"], where, "prompt"),
                             f"{SOURCE}/{eval_name}" if eval_name else SOURCE))
    for m in models:
        mine = answers.setdefault(m, {})
        if qid in mine:
            report.model(m).duplicates += 1
            continue
        resp = row[m + RESPONSE]
        mine[qid] = (literal_text(resp, where, f"'{m}{RESPONSE}'") if resp.strip() else None,
                     _number(row[m], where, f"label {m!r}"),
                     _number(row[m + COST], where, f"'{m}{COST}'"))


def import_routerbench(paths: Sequence[str | Path]) -> tuple[pa.Table, ImportReport]:
    """Import RouterBench CSVs into the canonical table (all models x all queries seen)."""
    report = ImportReport(source=SOURCE, token_counter=pricing.token_counter_name())
    queries: dict[str, tuple[str, str]] = {}
    answers: dict[str, dict[str, Recorded]] = {}
    for f in files_under(paths, (".csv",), WHAT):
        report.files.append(str(f))
        _read(f, report, queries, answers)
    if not queries:
        raise DataError(f"{', '.join(map(str, paths))}: no rows ({WHAT})")
    q_tokens = {q: pricing.count_tokens(text) for q, (text, _) in queries.items()}
    out, models = TableBuilder(), sorted(answers, key=str.casefold)
    report.models = {m: report.model(m) for m in models}
    for m in models:
        mrep = report.model(m)
        mrep.price_source, mrep.price_key = "recorded", m + COST
        for qid, (text, task) in queries.items():
            _add_row(out, qid, text, task, m, answers[m].get(qid), q_tokens[qid], mrep)
    report.queries = len(queries)
    fractional = sum(lab not in (None, 0.0, 1.0) for mine in answers.values()
                     for _, lab, _ in mine.values())
    if fractional:
        report.notes.append(f"{fractional} labels were neither 0 nor 1: correct = label >= 0.5")
    return out.table(report.where(), report), report


def _add_row(out: TableBuilder, qid: str, text: str, task: str, model: str,
             a: Recorded | None, q_tokens: int, mrep: ModelReport) -> None:
    mrep.rows += 1
    resp, label, cost = a if a is not None else (None, None, None)
    if resp is None:
        mrep.holes += 1
    else:
        mrep.answered += 1
        mrep.unlabeled += label is None
        mrep.missing_cost += cost is None
    hole = resp is None
    out.add(query_id=qid, query=text, task=task, answer_format="label", reference="",
            model=model, response=resp, answer=None,  # code/labels: no comparable answer
            correct=None if hole or label is None else label >= 0.5,
            input_tokens=0 if hole else q_tokens,
            output_tokens=0 if hole else pricing.count_tokens(resp),
            cost=0.0 if hole or cost is None else cost, cost_source="recorded")
