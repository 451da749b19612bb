"""Importer for MMLU-Pro's published model outputs (TIGER-AI-Lab/MMLU-Pro `eval_results/`).

Reads what the publisher ships: `model_outputs_<MODEL>_<N>shots.{zip,json}` (one JSON list) and
`<MODEL>_cot_results.zip` / `<MODEL>/<category>_result.json` (one list per subject), from files
or directories. Records may carry the answer under `response`, `generated_text` or
`model_outputs`, and `options` as a list or as a Python-literal string. Non-record entries are
counted and skipped. `correct` is the publisher's own judgment, `pred == answer`, taken against
each file's own answer key (MMLU-Pro revised a few keys between releases).
"""

from __future__ import annotations

import ast
import json
import re
import string
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

import pyarrow as pa

from ray_conductor.data import pricing
from ray_conductor.data.checks import plain_id
from ray_conductor.data.files import brief
from ray_conductor.data.table import ImportReport, ModelReport, TableBuilder, files_under
from ray_conductor.errors import DataError

SOURCE = "mmlu_pro"
TEXT_KEYS = ("response", "generated_text", "model_outputs")
REQUIRED = ("question_id", "question", "options", "answer", "category")
ALIASES = {"gpt4o": "gpt-4o"}  # folder/zip spellings of model names in eval_results
WHAT = "MMLU-Pro eval_results (model_outputs_<MODEL>_<N>shots.zip/.json or <MODEL>_cot_results.zip)"
_OUTPUTS = re.compile(r"model_outputs_(.+?)_\d+shots$")
_COT = re.compile(r"(.+?)_cot_results$")


@dataclass
class Answer:
    text: str | None
    pred: str | None
    answer: str


@dataclass
class Question:
    text: str  # question plus lettered options: what a worker sees
    category: str
    answer: str


def model_from_name(stem: str) -> str | None:
    """`model_outputs_X_5shots` -> X; `gpt4o_cot_results` -> gpt-4o; else None."""
    m = _OUTPUTS.match(stem) or _COT.match(stem)
    return ALIASES.get(m.group(1), m.group(1)) if m else None


def _member_model(container: Path, member: str) -> str:
    """The model of one JSON list: its own name, else its zip's name, else (for per-subject
    `<category>_result.json`) the folder it sits in."""
    inner = Path(member)
    model = model_from_name(inner.stem)
    if model is None and container.suffix == ".zip":
        model = model_from_name(container.stem)
    if model is None and inner.stem.endswith("_result") and inner.parent.name:
        model = ALIASES.get(inner.parent.name, inner.parent.name)
    if model is None:
        where = f"{container}!{member}" if container.suffix == ".zip" else str(container)
        raise DataError(f"{where}: cannot tell which model wrote it (expected {WHAT}, "
                        f"or <MODEL>/<category>_result.json)")
    return model


def iter_lists(paths: Sequence[str | Path]) -> Iterator[tuple[str, str, list[Any]]]:
    """(where, model, parsed JSON list) for every JSON list in the given files, one at a time,
    so a directory of large zips is never held in memory at once."""
    for f in files_under(paths, (".zip", ".json"), WHAT):
        if f.suffix == ".zip":
            yield from _zip_lists(f)
        elif f.suffix == ".json":
            yield str(f), _member_model(f, f.name), _read_json(f)
        else:
            raise DataError(f"{f}: expected a .zip or .json file of {WHAT}")


def _read_json(f: Path) -> list[Any]:
    try:
        with open(f, "rb") as fh:
            return _parse(fh, str(f))
    except OSError as e:
        raise DataError(f"{f}: cannot read this file ({e.strerror or brief(e)}); check the path "
                        f"and its permissions") from None


def _zip_lists(f: Path) -> Iterator[tuple[str, str, list[Any]]]:
    try:
        z = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise DataError(f"{f}: not a readable zip file ({brief(e)}); re-download it or give "
                        f"the unpacked .json (expected {WHAT})") from None
    with z:
        members = sorted(n for n in z.namelist()
                         if n.endswith(".json") and not n.startswith("__MACOSX/"))
        if not members:
            raise DataError(f"{f}: the zip holds no .json file (expected {WHAT})")
        for n in members:
            yield f"{f}!{n}", _member_model(f, n), _read_member(z, f, n)


def _read_member(z: zipfile.ZipFile, f: Path, name: str) -> list[Any]:
    """One member's JSON list; a damaged member (bad CRC, broken deflate stream, cut short,
    encrypted, unknown compression) is a one-line `DataError`."""
    try:
        with z.open(name) as fh:
            return _parse(fh, f"{f}!{name}")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
            NotImplementedError) as e:
        raise DataError(f"{f}!{name}: damaged zip member ({brief(e)}); re-download {f.name} "
                        f"(expected {WHAT})") from None


def _parse(fh: Any, where: str) -> list[Any]:
    try:
        data = json.load(fh)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({brief(e)}); the file may be cut short; "
                        f"expected a list of MMLU-Pro records") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not valid JSON: not UTF-8 text ({brief(e)}); re-save it as "
                        f"UTF-8 (expected a list of MMLU-Pro records)") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to be MMLU-Pro records") from None
    if not isinstance(data, list):
        raise DataError(f"{where}: expected a JSON list of MMLU-Pro records, "
                        f"found {type(data).__name__}")
    return data


def parse_options(options: Any, where: str) -> list[str]:
    """Options as the list it is, or the Python-literal list string some releases carry."""
    if isinstance(options, str):
        try:
            options = ast.literal_eval(options)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            options = None
    if not isinstance(options, list) or len(options) > len(string.ascii_uppercase):
        raise DataError(f"{where}: `options` must be a list (or its Python literal) of at most 26 "
                        f"choices, found {str(options)[:80]!r}")
    return [str(o) for o in options]


def query_text(question: str, options: list[str]) -> str:
    """The question, a blank line, then one `A. option` line per choice."""
    lines = [f"{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(options)]
    return f"{question.strip()}\n\n" + "\n".join(lines)


def _text_of(rec: dict[str, Any], where: str, i: int) -> str | None:
    """The answer text: a string, a list of strings (joined by lines), or null (a hole)."""
    for k in TEXT_KEYS:
        if k in rec:
            v = rec[k]
            if isinstance(v, list) and all(isinstance(t, str) for t in v):
                return "\n".join(v)
            if v is None or isinstance(v, str):
                return v
            raise DataError(f"{where}: record {i} (question_id {str(rec['question_id'])[:40]}): "
                            f"`{k}` must be text, a list of texts or null, found "
                            f"{type(v).__name__}; fix or drop the record")
    return None


def _check(rec: dict[str, Any], where: str, i: int) -> None:
    missing = [k for k in REQUIRED if k not in rec]
    if missing or not any(k in rec for k in TEXT_KEYS):
        raise DataError(f"{where}: record {i} is not an MMLU-Pro record: expected keys "
                        f"{list(REQUIRED)} and one of {list(TEXT_KEYS)}, found {sorted(rec)}")


def _letter(rec: dict[str, Any], key: str, where: str, i: int) -> str | None:
    """A letter field (`answer`, `pred`): a string or null; blank reads as null."""
    v = rec.get(key)
    if v is not None and not isinstance(v, str):
        raise DataError(f"{where}: record {i} (question_id {str(rec['question_id'])[:40]}): "
                        f"`{key}` must be a letter or null, found {type(v).__name__} "
                        f"{str(v)[:20]!r}; fix or drop the record")
    return (v or "").strip() or None


def collect(paths: Sequence[str | Path], report: ImportReport, keep: Collection[str] | None = None,
            ) -> tuple[dict[str, Question], dict[str, dict[str, Answer]]]:
    """Questions (first record seen wins) and answers per model, with the report's counts."""
    questions: dict[str, Question] = {}
    answers: dict[str, dict[str, Answer]] = {}
    for where, model, records in iter_lists(paths):
        report.files.append(where)
        mrep, mine = report.model(model), answers.setdefault(model, {})
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                mrep.junk += 1
                continue
            _check(rec, where, i)
            qid = f"{SOURCE}/{plain_id(rec['question_id'], f'{where}: record {i}')}"
            if keep is not None and qid not in keep:
                continue
            if qid in mine:
                mrep.duplicates += 1
                continue
            answer = _letter(rec, "answer", where, i) or ""
            if qid not in questions:
                text = query_text(str(rec["question"]), parse_options(rec["options"], where))
                questions[qid] = Question(text, str(rec["category"]), answer)
            mine[qid] = Answer(_text_of(rec, where, i), _letter(rec, "pred", where, i), answer)
        del records  # free this list before the next one is parsed
    if not questions:
        raise DataError(f"{', '.join(map(str, paths))}: found no MMLU-Pro records ({WHAT})")
    return questions, answers


def _order(qid: str) -> tuple[int, Any]:
    tail = qid.split("/", 1)[1]
    return (0, int(tail)) if tail.isascii() and tail.isdigit() else (1, tail)


def import_mmlu_pro(paths: Sequence[str | Path], keep: Collection[str] | None = None,
                    prices: dict[str, Any] | None = None) -> tuple[pa.Table, ImportReport]:
    """Import MMLU-Pro outputs into the canonical table (all models x all questions seen).

    `keep`: only these query ids (e.g. the demo slice); `prices`: a price config (default
    configs/prices.yaml)."""
    report = ImportReport(source=SOURCE, token_counter=pricing.token_counter_name())
    questions, answers = collect(paths, report, keep)
    models = sorted(answers, key=str.casefold)
    price_of = _prices(models, report, prices)
    qids = sorted(questions, key=_order)
    q_tokens = {q: pricing.count_tokens(questions[q].text) for q in qids}
    refs: dict[str, set[str]] = {q: set() for q in qids}
    out = TableBuilder()
    for m in models:
        mrep, mine = report.models[m], answers.pop(m)
        for q in qids:
            a, qu = mine.get(q), questions[q]
            if a is not None and a.text is not None:
                refs[q].add(a.answer)
            _add_row(out, q, qu, m, a, q_tokens[q], price_of[m], mrep)
    report.models = {m: report.models[m] for m in models}
    report.queries = len(qids)
    report.reference_conflicts = sum(len(r) > 1 for r in refs.values())
    return out.table(report.where(), report), report


def _prices(models: list[str], report: ImportReport, config: dict[str, Any] | None,
            ) -> dict[str, pricing.Price]:
    config = config if config is not None else pricing.load_price_config()
    unpriced, out = [], {}
    for m in models:
        try:
            out[m] = p = pricing.price_for(m, config)
        except DataError:
            unpriced.append(m)
            continue
        r = report.models[m]
        r.price_source, r.price_key = p.source, p.key
        r.input_price_per_mtok, r.output_price_per_mtok = p.input_per_mtok, p.output_per_mtok
    if unpriced:
        raise DataError(f"no price for models {unpriced}: map each to a litellm.model_cost key "
                        f"under litellm:, or give {{input: $, output: $}} per 1M tokens under "
                        f"table:, in {pricing.PRICES_FILE}")
    return out


def _add_row(out: TableBuilder, qid: str, qu: Question, model: str, a: Answer | None,
             q_tokens: int, price: pricing.Price, mrep: ModelReport) -> None:
    mrep.rows += 1
    hole = a is None or a.text is None
    if hole:
        mrep.holes += 1
        out_tokens, correct, ref = 0, None, qu.answer
    else:
        mrep.answered += 1
        mrep.null_preds += a.pred is None
        out_tokens, correct, ref = pricing.count_tokens(a.text), a.pred == a.answer, a.answer
    cost = 0.0 if hole else price.cost(q_tokens, out_tokens)
    out.add(query_id=qid, query=qu.text, task=f"{SOURCE}/{qu.category.replace(' ', '_')}",
            answer_format="mc", reference=ref, model=model, response=None if hole else a.text,
            answer=None if hole else a.pred,
            correct=correct, input_tokens=q_tokens if not hole else 0, output_tokens=out_tokens,
            cost=cost, cost_source=price.source)
