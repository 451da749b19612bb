"""The checks every recording passes before it is used: one place, for every importer.

A recording decides rewards and baselines (`cheapest` picks by recorded cost), so a poisoned
value must never pass quietly. Every canonical table goes through `TableChecks` (the
importers' `TableBuilder.table`, `parquet:` files, streamed cache entries);
`table.check_table(table, where, report)` is the one call for a whole table: it returns the
table to use and the report with its counts:

* costs finite dollars in [0, `MAX_COST`] and token counts integers >= 0 (null in neither):
  else a one-line `DataError` naming the place, the row, the query, the model and the column;
* `query_id` and `model` non-empty text;
* a row repeating an earlier row's (query_id, model) is dropped and counted
  (`ImportReport.duplicate_rows`);
* text that is not valid Unicode (a lone surrogate from a JSON escape, invalid UTF-8 in a
  Parquet file) is replaced with U+FFFD and counted (`ImportReport.invalid_unicode`);
* a table without rows is refused.

The source readers call the two checks that need the raw input: `check_columns` (no column
name twice: a CSV's last copy would silently win) and `plain_id` (a record's id is text or an
integer, not null, a bool or a dict that would become "mmlu_pro/None").
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ray_conductor.errors import DataError

MAX_COST = 1000.0  # dollars for one recorded call: more is a broken recording, not a price
TOKEN_COLUMNS = ("input_tokens", "output_tokens")
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_columns(names: Sequence[str], where: str) -> None:
    """No column name may appear twice."""
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:
        raise DataError(f"{where}: the column {twice[0]!r} appears {Counter(names)[twice[0]]} "
                        f"times; keep one copy (which one holds the data is not guessed)")


def plain_id(value: Any, where: str, what: str = "question_id") -> str:
    """A record's id as text: a non-empty string or an integer, else a `DataError`."""
    if isinstance(value, str) and value.strip():
        return clean_text(value)[0]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: `{what}` must be a non-empty string or an integer, found "
                    f"{type(value).__name__} {str(value)[:40]!r}; fix or drop the record")


def clean_text(text: str) -> tuple[str, bool]:
    """(`text` with lone surrogates replaced by U+FFFD, whether any was)."""
    if text.isascii():
        return text, False
    cleaned, n = _SURROGATE.subn("\ufffd", text)
    return cleaned, n > 0


def clean_column(values: Iterable[Any]) -> tuple[list[Any], int]:
    """A column of Python values with every text cleaned, and how many cells changed."""
    out, changed = [], 0
    for v in values:
        if isinstance(v, str):
            v, bad = clean_text(v)
            changed += bad
        out.append(v)
    return out, changed


class TableChecks:
    """The checks over a table given in parts (record batches, in order): `batch` returns
    each part checked (duplicates of earlier rows dropped), `finish` refuses an empty table
    and says what was counted (`notes`)."""

    def __init__(self, where: str):
        self.where = where
        self.rows, self.duplicates, self.invalid_unicode = 0, 0, 0
        self._seen: set[tuple[str, str]] = set()

    def batch(self, part: pa.Table | pa.RecordBatch) -> pa.Table:
        table = part if isinstance(part, pa.Table) else pa.Table.from_batches([part])
        table = self._unicode(table)
        self._values(table)
        table = self._unique(table)
        self.rows += table.num_rows
        return table

    def finish(self) -> list[str]:
        """Refuse a table without rows; the notes for the import report (empty: nothing was
        counted)."""
        if self.rows == 0:
            raise DataError(f"{self.where}: the table has no rows; import a recording with at "
                            f"least one answered question")
        notes = []
        if self.duplicates:
            notes.append(f"{self.duplicates} rows repeated an earlier (query_id, model) and "
                         f"were dropped")
        if self.invalid_unicode:
            notes.append(f"{self.invalid_unicode} texts held invalid Unicode, replaced with "
                         f"U+FFFD")
        return notes

    # -- the checks ------------------------------------------------------------------------
    def _unicode(self, table: pa.Table) -> pa.Table:
        for i, name in enumerate(table.column_names):
            col = table.column(i)
            if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
                continue
            try:
                col.validate(full=True)
                continue
            except pa.ArrowInvalid:
                pass
            values = [None if v is None else bytes(v).decode("utf-8", "replace")
                      for v in col.cast(pa.binary()).to_pylist()]
            self.invalid_unicode += sum(v is not None and "\ufffd" in v for v in values)
            table = table.set_column(i, name, pa.array(values, col.type))
        return table

    def _values(self, table: pa.Table) -> None:
        for name in ("query_id", "model"):
            col = table.column(name)
            bad = pc.or_kleene(pc.is_null(col), pc.equal(pc.utf8_trim_whitespace(col), ""))
            self._refuse(table, bad, name, "must be non-empty text")
        cost = table.column("cost")
        ok = pc.and_kleene(pc.is_finite(cost), pc.and_kleene(
            pc.greater_equal(cost, 0.0), pc.less_equal(cost, MAX_COST)))
        self._refuse(table, pc.invert(pc.fill_null(ok, False)), "cost",
                     f"recorded costs must be finite dollars between 0 and {MAX_COST:g}")
        for name in TOKEN_COLUMNS:
            col = table.column(name)
            ok = pc.fill_null(pc.greater_equal(col, 0), False)
            self._refuse(table, pc.invert(ok), name, "token counts must be integers >= 0")

    def _refuse(self, table: pa.Table, bad: Any, column: str, rule: str) -> None:
        if not pc.any(bad).as_py():
            return
        i = pc.index(bad, True).as_py()
        row = self.rows + i
        value = table.column(column)[i].as_py()
        shown = "null" if value is None else (repr(value) if isinstance(value, str) else
                                             _number(value))
        raise DataError(f"{self.where}: row {row} (query_id "
                        f"{str(table.column('query_id')[i].as_py())[:60]!r}, model "
                        f"{str(table.column('model')[i].as_py())[:40]!r}), column {column}: "
                        f"{shown}; {rule}: fix or drop the row")

    def _unique(self, table: pa.Table) -> pa.Table:
        keys = zip(table.column("query_id").to_pylist(), table.column("model").to_pylist())
        keep, seen = [], self._seen
        for key in keys:
            fresh = key not in seen
            keep.append(fresh)
            seen.add(key)
        dropped = len(keep) - sum(keep)
        if not dropped:
            return table
        self.duplicates += dropped
        return table.filter(pa.array(keep))


def build_table(columns: dict[str, list[Any]], schema: pa.Schema, checks: TableChecks
                ) -> pa.Table:
    """`pa.table(columns, schema=schema)`; where a text is not valid Unicode (a lone
    surrogate cannot be UTF-8), the texts are cleaned first and counted in `checks`."""
    try:
        return pa.table(columns, schema=schema)
    except UnicodeEncodeError:
        pass
    cleaned = {}
    for name, values in columns.items():
        cleaned[name], changed = clean_column(values)
        checks.invalid_unicode += changed
    return pa.table(cleaned, schema=schema)


def _number(x: Any) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:g}" if isinstance(x, float) else str(x)
