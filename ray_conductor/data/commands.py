"""`ray-conductor import pool=... out=...`: import recorded outputs into one canonical Parquet
table and print what was found per model, so holes and price sources are seen before training.

Nothing is lost: every check (pool spec, inputs readable, `out` not an input, not a directory,
not an existing file unless `overwrite=true`, in a writable place) runs before any import work,
and the table is written atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_conductor.config import STORAGE_HELP, default_data_dir
from ray_conductor.errors import DataError


@dataclass
class ImportConfig:
    pool: str = field(default="mmlu_pro", metadata={
        "help": "mmlu_pro[:PATH,...] | routerbench[:PATH,...] | records:PATH[,...] | "
                "parquet:PATH | demo"})
    storage: str | None = field(default=None, metadata={"help": STORAGE_HELP})
    out: str = field(default="data/pool.parquet", metadata={"help": "the Parquet table written"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing out= (never an input)"})
    data_dir: str = field(default_factory=default_data_dir, metadata={
        "help": "where bare pool names (mmlu_pro, routerbench) are found"})


def format_report(summary: dict[str, dict[str, Any]], report: dict[str, Any] | None) -> str:
    """A per-model table: rows, holes, accuracy (holes count as wrong), total cost, price source."""
    models = (report or {}).get("models", {})
    head = f"{'model':<34} {'rows':>6} {'holes':>6} {'acc':>6} {'cost $':>10}  price"
    lines = [head, "-" * len(head)]
    for m, s in summary.items():
        r = models.get(m, {})
        src = f"{r.get('price_source', '?')} {r.get('price_key', '')}".strip()
        lines.append(f"{m:<34} {s['rows']:>6} {s['holes']:>6} {s['accuracy']:>6.1%} "
                     f"{s['cost']:>10.2f}  {src}")
    return "\n".join(lines)


def check_import(cfg: Any) -> Path:
    """Everything that can be wrong with the command, checked before any work: returns `out`."""
    from ray_conductor.data.files import check_output, check_readable
    from ray_conductor.data.pools import IMPORTERS, parse_spec, stored_path
    from ray_conductor.data.table import files_under

    fmt, paths = parse_spec(cfg.pool, cfg.data_dir)
    if fmt == "parquet":
        src = stored_path(cfg.pool, cfg.data_dir)
        if src is None or not src.is_file():
            raise DataError(f"{src}: no such file (expected a canonical Parquet table)")
        inputs, suffixes = [src], (".parquet",)
    else:
        _, suffixes, what = IMPORTERS[fmt]
        inputs = files_under(paths, suffixes, what)
    check_readable(inputs)
    return check_output(cfg.out, inputs, [p for p in paths if p.is_dir()], suffixes,
                        bool(cfg.overwrite))


def run_import(cfg: Any) -> dict[str, Any]:
    """Import `cfg.pool` (uncached), write `cfg.out`, print the table, return the report."""
    from ray_conductor.data.pools import import_spec
    from ray_conductor.data.table import oracle_accuracy, summarize, write_table

    t0 = time.perf_counter()
    out = check_import(cfg)
    table, report = import_spec(cfg.pool, cfg.data_dir)
    out = write_table(table, out, report, overwrite=bool(cfg.overwrite))
    summary = summarize(table)
    result = dict(report.to_dict() if report else {})
    result.update(pool=cfg.pool, out=str(out), rows=table.num_rows, summary=summary,
                  oracle_accuracy=oracle_accuracy(table),
                  wall_s=round(time.perf_counter() - t0, 2))
    print(format_report(summary, result))
    for note in result.get("notes") or []:
        print(f"note: {note}")
    print(f"\noracle (some model right): {result['oracle_accuracy']:.1%}   "
          f"rows: {table.num_rows}   tokens: {result.get('token_counter', '?')}")
    print(f"table: {out}  ({result['wall_s']} s)")
    return result
