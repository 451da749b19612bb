"""Pool specs -> canonical tables -> `ReplayData`, with an on-disk cache of imports.

A spec names a format and its files: "demo", "mmlu_pro:PATH[,PATH...]",
"routerbench:PATH[,PATH...]", "records:PATH[,PATH...]" (a team's own recordings: JSONL, CSV
or Parquet, `data.records`) or "parquet:PATH" (a canonical table). A bare "mmlu_pro" or
"routerbench" reads that folder of the data directory. Importing twelve MMLU-Pro models (a
few hundred MB of JSON) takes a while, so the imported table is cached as Parquet, keyed by a
hash of the files' paths, sizes and mtimes, of the price file and of litellm's version:
changing any of them re-imports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Callable

import pyarrow as pa

from ray_conductor.config import default_data_dir
from ray_conductor.data import pricing
from ray_conductor.data.files import brief
from ray_conductor.data.mmlu_pro import WHAT as MMLU_WHAT
from ray_conductor.data.mmlu_pro import import_mmlu_pro
from ray_conductor.data.records import SUFFIXES as RECORDS_SUFFIXES
from ray_conductor.data.records import WHAT as RECORDS_WHAT
from ray_conductor.data.records import import_records
from ray_conductor.data.replay import ReplayData, ReplayPool
from ray_conductor.data.routerbench import WHAT as RB_WHAT
from ray_conductor.data.routerbench import import_routerbench
from ray_conductor.data.table import (
    ImportReport, files_under, read_table, stream_table, write_table)
from ray_conductor.errors import DataError

DEMO_PATH = Path(__file__).resolve().parents[1] / "assets" / "demo_pool" / "mmlu_pro_demo.parquet"
KNOWN = ("demo", "mmlu_pro:PATH[,PATH...]", "routerbench:PATH[,PATH...]",
         "records:PATH[,PATH...]", "parquet:PATH")
CACHE_VERSION = "2"  # bump when an importer's output changes for the same files (2: answer)
log = logging.getLogger(__name__)
Importer = Callable[[list[Path]], tuple[pa.Table, ImportReport]]
IMPORTERS: dict[str, tuple[Importer, tuple[str, ...], str]] = {
    "mmlu_pro": (import_mmlu_pro, (".zip", ".json"), MMLU_WHAT),
    "routerbench": (import_routerbench, (".csv",), RB_WHAT),
    "records": (import_records, RECORDS_SUFFIXES, RECORDS_WHAT),
}


def parse_spec(spec: str, data_dir: str | None = None) -> tuple[str, list[Path]]:
    """(format, paths). Relative paths resolve against the working directory."""
    fmt, _, rest = spec.strip().partition(":")
    if fmt == "demo" and not rest:
        return "parquet", [DEMO_PATH]
    if fmt not in (*IMPORTERS, "parquet"):
        raise DataError(f"unknown pool {spec!r}: use one of {', '.join(KNOWN)}", code="bad_pool")
    if not rest:
        if fmt in ("parquet", "records"):
            form = "parquet:PATH" if fmt == "parquet" else "records:PATH[,PATH...]"
            raise DataError(f"pool {fmt!r} needs a path: {form}", code="bad_pool")
        return fmt, [Path(data_dir or default_data_dir()) / fmt]
    paths = [Path(p.strip()).expanduser() for p in rest.split(",") if p.strip()]
    if fmt == "parquet" and len(paths) != 1:
        raise DataError(f"pool {spec!r}: parquet takes exactly one path", code="bad_pool")
    return fmt, paths


def import_spec(spec: str, data_dir: str | None = None) -> tuple[pa.Table, ImportReport | None]:
    """Import (or read) the spec's files, uncached."""
    fmt, paths = parse_spec(spec, data_dir)
    if fmt == "parquet":
        return read_table(_checked(paths[0]))
    return IMPORTERS[fmt][0](paths)


def _checked(path: Path) -> Path:
    if path == DEMO_PATH and not path.is_file():
        raise DataError(f"the demo pool {DEMO_PATH} is missing: rebuild it with "
                        f"`python -m ray_conductor.data.demo`")
    return path


def cache_key(fmt: str, files: list[Path]) -> str:
    """A hash of what the import depends on: format, files (path, size, mtime), the price
    file and litellm's version (its cost map and tokenizer)."""
    try:
        litellm_version = metadata.version("litellm")
    except metadata.PackageNotFoundError:
        litellm_version = None
    parts: list[object] = [CACHE_VERSION, fmt, litellm_version]
    for f in [*files, pricing.PRICES_FILE]:
        st = f.stat() if f.exists() else None
        parts.append([str(f.resolve()), st and st.st_size, st and st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def stored_path(spec: str, data_dir: str | None = None,
                cache_dir: str | os.PathLike | None = ".cache/pools") -> Path | None:
    """Where the spec's table lives as Parquet: the file itself, its cache entry (which may not
    exist yet), or None when there is no cache."""
    fmt, paths = parse_spec(spec, data_dir)
    if fmt == "parquet":
        return _checked(paths[0])
    if cache_dir is None:
        return None
    files = files_under(paths, IMPORTERS[fmt][1], IMPORTERS[fmt][2])
    return Path(cache_dir) / f"{fmt}-{cache_key(fmt, files)}.parquet"


def load_table(spec: str, data_dir: str | None = None,
               cache_dir: str | os.PathLike | None = ".cache/pools",
               ) -> tuple[pa.Table, ImportReport | None]:
    """`import_spec`, through the Parquet cache in `cache_dir` (None: no cache). A damaged
    cache entry is dropped and re-imported; a cache that cannot be written is skipped."""
    path = stored_path(spec, data_dir, cache_dir)
    if path is not None and parse_spec(spec, data_dir)[0] == "parquet":
        return read_table(path)
    if path is not None and path.is_file():
        try:
            return read_table(path)
        except DataError as e:
            _drop(path, e)
    table, report = import_spec(spec, data_dir)
    if path is not None:
        try:
            write_table(table, path, report)
        except OSError as e:
            log.warning("pool cache not written (%s): %s", path, brief(e))
    return table, report


def _drop(path: Path, why: DataError) -> None:
    log.warning("dropping a damaged pool cache entry, re-importing: %s", why)
    path.unlink(missing_ok=True)


def load_pool(spec: str, data_dir: str | None = None,
              cache_dir: str | os.PathLike | None = ".cache/pools") -> ReplayData:
    """The `ReplayData` of a pool spec (see the module docstring for the forms). A stored
    table is streamed row group by row group, so only the index is held in memory."""
    path, data = stored_path(spec, data_dir, cache_dir), None
    if path is not None and path.is_file():
        try:
            data = ReplayData(*stream_table(path))
        except DataError as e:
            if parse_spec(spec, data_dir)[0] == "parquet":
                raise
            _drop(path, e)
    if data is None:
        data = ReplayData(*load_table(spec, data_dir, cache_dir))
    if not data.models:
        raise DataError(f"pool {spec!r} has no rows")
    return data


def replay_pool(spec: str) -> ReplayPool:
    """An in-process `ReplayPool` over `spec`: what a `replay/<model>` worker answers from.
    The graph hands this function to the worker proxies (workers do not import data)."""
    return ReplayPool(load_pool(spec))
