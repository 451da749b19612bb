"""The canonical table every importer writes: one row per (query, model), and its report.

One schema for all sources lets the replay pool, the baselines and the trainer ignore where a
recording came from. A missing answer stays a row with `response = null` (a hole), so every
query has one row per model and holes are counted, not silently dropped. The `ImportReport`
travels inside the Parquet file's metadata, so a cached or shared table keeps its provenance.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_conductor.data.checks import TableChecks, build_table, check_columns
from ray_conductor.data.files import atomic_path, brief
from ray_conductor.errors import DataError

SCHEMA = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),  # "<source>/<id>", e.g. "mmlu_pro/70"
    pa.field("query", pa.string(), nullable=False),  # the full text a worker would see
    pa.field("task", pa.string(), nullable=False),  # e.g. "mmlu_pro/math", "routerbench/mbpp"
    pa.field("answer_format", pa.string(), nullable=False),  # mc|number|math|code|label
    pa.field("reference", pa.string(), nullable=False),  # gold answer (code: tests); "" label
    pa.field("model", pa.string(), nullable=False),
    pa.field("response", pa.string()),  # null: the model has no recorded answer (a hole)
    # the recorded answer's extracted form (MMLU-Pro: the publisher's `pred` letter); null for
    # holes, when no answer was extracted, and for sources without comparable answers
    pa.field("answer", pa.string()),
    pa.field("correct", pa.bool_()),  # null: hole, or a row without a label
    pa.field("input_tokens", pa.int64(), nullable=False),
    pa.field("output_tokens", pa.int64(), nullable=False),
    pa.field("cost", pa.float64(), nullable=False),  # dollars
    pa.field("cost_source", pa.string(), nullable=False),  # "recorded"|"litellm"|"price_table"
])
COLUMNS = SCHEMA.names
OPTIONAL = ("answer",)  # added after tables were shipped: files without it read it as null
REQUIRED = [c for c in COLUMNS if c not in OPTIONAL]
REPORT_KEY = b"ray_conductor.report"
ROW_GROUP = 32768  # rows per Parquet row group: readers can stream a big table group by group
log = logging.getLogger(__name__)


@dataclass
class ModelReport:
    """What an import found for one model; `rows` counts its table rows, holes included."""

    rows: int = 0
    answered: int = 0
    holes: int = 0  # queries other files have but this model has no answer for
    null_preds: int = 0  # answered, but the publisher's extractor found no letter
    junk: int = 0  # list entries that are not records (skipped)
    unlabeled: int = 0  # answered rows without a correctness label (correct = null)
    duplicates: int = 0  # second records for the same (query, model) (skipped)
    missing_cost: int = 0  # answered rows with an empty recorded cost (cost = 0)
    price_source: str = ""  # "recorded" | "litellm" | "price_table"
    price_key: str = ""  # the litellm key or price-table entry the cost came from
    input_price_per_mtok: float | None = None
    output_price_per_mtok: float | None = None


@dataclass
class ImportReport:
    """Counts and provenance of one import, for people and for `eval`'s report."""

    source: str
    files: list[str] = field(default_factory=list)
    queries: int = 0
    models: dict[str, ModelReport] = field(default_factory=dict)
    token_counter: str = ""
    reference_conflicts: int = 0  # queries whose files disagree on the answer key
    duplicate_rows: int = 0  # rows repeating an earlier (query_id, model): dropped (`checks`)
    invalid_unicode: int = 0  # texts with invalid Unicode, replaced with U+FFFD (`checks`)
    notes: list[str] = field(default_factory=list)

    def model(self, name: str) -> ModelReport:
        return self.models.setdefault(name, ModelReport())

    def where(self) -> str:
        """The import's input, for messages: its one file, else the source and a count."""
        if len(self.files) == 1:
            return self.files[0]
        return f"{self.source} import of {len(self.files)} files"

    @property
    def price_sources(self) -> dict[str, str]:
        return {m: r.price_source for m, r in self.models.items()}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["price_sources"] = self.price_sources
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImportReport:
        known = {f.name for f in fields(ModelReport)}
        models = {m: ModelReport(**{k: v for k, v in r.items() if k in known})
                  for m, r in d.get("models", {}).items()}
        top = {f.name for f in fields(cls)} - {"models"}
        return cls(models=models, **{k: v for k, v in d.items() if k in top})


class TableBuilder:
    """Collects rows column by column (cheaper than a list of dicts for 100k+ rows)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {name: [] for name in COLUMNS}

    def add(self, **row: Any) -> None:
        for name in COLUMNS:
            self.cols[name].append(row.get(name) if name in OPTIONAL else row[name])

    def table(self, where: str = "table", report: ImportReport | None = None) -> pa.Table:
        """The canonical table of the rows added, through `checks` (its counts go into
        `report`; a poisoned value is a `DataError` naming `where`)."""
        checks = TableChecks(where)
        table = checks.batch(build_table(self.cols, SCHEMA, checks))
        counted(report, checks)
        return table


def check_table(table: pa.Table, where: str, report: ImportReport | None = None,
                source: str = "parquet") -> tuple[pa.Table, ImportReport | None]:
    """A canonical table through every check of `data.checks` (costs, tokens, ids,
    duplicate rows, Unicode, rows): (the table to use, the report with the counts). A
    poisoned value is a one-line `DataError` naming `where`, the row and the column. An
    importer of another format calls this on its canonical table; `report` None (a foreign
    file) gets a report of its own only when something was counted."""
    checks = TableChecks(where)
    out = checks.batch(table)
    return out, counted(report, checks, source)


def counted(report: ImportReport | None, checks: TableChecks, source: str = "parquet"
            ) -> ImportReport | None:
    """`checks.finish()`, its counts written into `report` (made if needed and counted)."""
    notes = checks.finish()
    if not notes:
        return report
    report = report or ImportReport(source=source, files=[checks.where])
    report.duplicate_rows += checks.duplicates
    report.invalid_unicode += checks.invalid_unicode
    report.notes += notes
    return report


def files_under(paths: Sequence[str | os.PathLike], suffixes: tuple[str, ...],
                what: str) -> list[Path]:
    """Expand files and directories (recursively) into the sorted files an importer reads."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(suffixes))
            if not found:
                raise DataError(f"{p}: no {'/'.join(suffixes)} files in this directory "
                                f"(expected {what})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or directory (expected {what})")
    return out


def write_table(table: pa.Table, path: str | os.PathLike, report: ImportReport | None = None,
                level: int | None = None, overwrite: bool = True) -> Path:
    """Write zstd Parquet (at `level`; None: pyarrow's fast default) atomically, so a reader
    never sees half a file, with the report in the file's metadata. `overwrite=False` refuses
    to replace an existing file (`DataError`)."""
    path = Path(path)
    if report is not None:
        table = table.replace_schema_metadata({REPORT_KEY: json.dumps(report.to_dict())})
    with atomic_path(path, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=level,
                       row_group_size=ROW_GROUP)
    return path


_ARROW_ERRORS = (pa.ArrowException, OSError, ValueError, TypeError)


def _open(path: str | os.PathLike) -> pq.ParquetFile:
    """Open a canonical table, refusing files that are not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a canonical Parquet table)")
    try:
        f = pq.ParquetFile(path)
        names = f.schema_arrow.names
    except _ARROW_ERRORS as e:
        raise DataError(f"{path}: not a readable Parquet file ({brief(e)}); give a table "
                        f"written by `ray-conductor import`") from None
    check_columns(names, str(path))
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise DataError(f"{path}: expected the canonical table with columns {REQUIRED}, "
                        f"missing {missing}")
    return f


def _columns(f: pq.ParquetFile) -> list[str]:
    return [c for c in COLUMNS if c in f.schema_arrow.names]


def conform(data: pa.Table | pa.RecordBatch, where: str = "table") -> pa.Table:
    """The canonical columns in SCHEMA order and types; optional columns a file lacks (it
    was written before they existed) are added as nulls."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
    for name in OPTIONAL:
        if name not in table.column_names:
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, pa.string()))
    try:
        return table.select(COLUMNS).cast(SCHEMA)
    except _ARROW_ERRORS as e:
        raise DataError(f"{where}: a column has the wrong type (or nulls) for the canonical table "
                        f"({brief(e)}); re-import it with `ray-conductor import`") from None


def _report(f: pq.ParquetFile, path: str | os.PathLike) -> ImportReport | None:
    meta = f.schema_arrow.metadata or {}
    if REPORT_KEY not in meta:
        return None
    try:
        return ImportReport.from_dict(json.loads(meta[REPORT_KEY]))
    except (ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: the import report in its metadata is damaged ({brief(e)}); "
                        f"re-import it with `ray-conductor import`") from None


def read_table(path: str | os.PathLike) -> tuple[pa.Table, ImportReport | None]:
    """Read a canonical table (through `checks`) and the report stored with it (None for a
    foreign file, unless the checks counted something: then a report of their own)."""
    f = _open(path)
    try:
        table = f.read(columns=_columns(f))
    except _ARROW_ERRORS as e:
        raise DataError(f"{path}: damaged Parquet file ({brief(e)}); re-import or re-copy "
                        f"it") from None
    return check_table(conform(table, str(path)), str(path), _report(f, path))


def stream_table(path: str | os.PathLike, batch_size: int = ROW_GROUP,
                 ) -> tuple[Iterator[pa.RecordBatch], ImportReport | None]:
    """The table as record batches (through `checks`), one row group in memory at a time,
    and its report (its counts complete once the batches are read)."""
    f = _open(path)
    report = _report(f, path)
    return _batches(f, path, batch_size, report), report


def _batches(f: pq.ParquetFile, path: str | os.PathLike, batch_size: int,
             report: ImportReport | None) -> Iterator[pa.RecordBatch]:
    it = f.iter_batches(batch_size=batch_size, columns=_columns(f))
    checks = TableChecks(str(path))
    while True:
        try:
            batch = next(it)
        except StopIteration:
            if counted(report, checks) is not report:  # a foreign file without a report
                log.warning("%s: %s", path, "; ".join(checks.finish()))
            return
        except _ARROW_ERRORS as e:
            raise DataError(f"{path}: damaged Parquet file ({brief(e)}); re-import or re-copy "
                            f"it") from None
        yield from checks.batch(conform(batch, str(path))).to_batches()


def summarize(table: pa.Table) -> dict[str, dict[str, Any]]:
    """Per model: rows, holes, correct rows, accuracy over its rows (holes = wrong), total $."""
    g = table.group_by("model", use_threads=False).aggregate([
        ("query_id", "count"), ("response", "count"), ("correct", "sum"), ("cost", "sum")])
    out: dict[str, dict[str, Any]] = {}
    for r in g.to_pylist():
        rows, correct = r["query_id_count"], int(r["correct_sum"] or 0)
        out[r["model"]] = {"rows": rows, "holes": rows - r["response_count"], "correct": correct,
                           "accuracy": correct / rows if rows else 0.0, "cost": r["cost_sum"]}
    return out


def oracle_accuracy(table: pa.Table) -> float:
    """Share of queries that at least one model answers correctly (a perfect router)."""
    ids = pc.unique(table["query_id"])
    hit = pc.unique(table.filter(pc.fill_null(table["correct"], False))["query_id"])
    return len(hit) / len(ids) if len(ids) else 0.0

