"""The traffic log: every served request (its workflow, trace, answer, cost, key id, policy
version) appended to a Parquet dataset, and feedback (a reward or a label for a request id)
appended beside it. This log is what online retraining reads (`read_traffic`).

Layout under the log directory, both partitioned by UTC date (hive style, so pandas,
`pyarrow.dataset` and `ray.data.read_parquet` all read it)::

    requests/date=2025-01-31/part-<ms>-<rand>.parquet
    feedback/date=2025-01-31/part-<ms>-<rand>.parquet

Files are only ever added, never rewritten: feedback is joined on read (the latest reward and
the latest label per request). Each part is written under a hidden name and renamed, so a
reader never sees half a file; a part that still cannot be read (damaged on disk, dropped in
by something else) is moved to `quarantine/` by the reader and listed, never fatal. Pure
pyarrow (the writer actor is in `actors.py`).

No row can stop the log: every string is made valid Unicode and capped (`MAX_CHARS`) when it
is appended, and a row that still cannot be written goes, with the reason, to
`dead_letter/date=.../part-*.jsonl` (counted in `dead_letter`), while the rows around it are
written. A flush that fails as a whole (the disk) keeps its rows buffered for the next one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

REQUESTS, FEEDBACK = "requests", "feedback"
REQUEST_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("time", pa.timestamp("us", tz="UTC")),
    ("key_id", pa.string()), ("endpoint", pa.string()), ("model", pa.string()),
    ("policy", pa.string()), ("policy_version", pa.string()), ("stream", pa.bool_()),
    ("status", pa.int32()), ("error", pa.string()), ("error_code", pa.string()),
    ("question", pa.string()), ("query_id", pa.string()), ("workflow", pa.string()),
    ("trace", pa.string()), ("answer", pa.string()), ("cost", pa.float64()),
    ("input_tokens", pa.int64()), ("output_tokens", pa.int64()),
    ("orchestration_input_tokens", pa.int64()), ("orchestration_output_tokens", pa.int64()),
    ("latency_s", pa.float64()),
])
FEEDBACK_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("time", pa.timestamp("us", tz="UTC")),
    ("key_id", pa.string()), ("reward", pa.float64()), ("label", pa.string()),
])
MAX_LABEL_CHARS = 1000
DEAD_LETTER = "dead_letter"
MAX_CHARS = {"question": 1_000_000, "answer": 1_000_000, "trace": 8_000_000,
             "workflow": 100_000, "error": 10_000, "label": MAX_LABEL_CHARS}
MAX_OTHER_CHARS = 1000  # ids, names, codes
# what a row's conversion to Arrow raises for a value of the wrong type or range
ROW_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeError,
              KeyError, OSError)


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def request_row(**fields: Any) -> dict[str, Any]:
    """A row with every column of `REQUEST_SCHEMA` (missing ones None); `time` is epoch
    seconds, `trace` any JSON-able value."""
    unknown = set(fields) - set(REQUEST_SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown traffic columns {sorted(unknown)}")
    row = {name: fields.get(name) for name in REQUEST_SCHEMA.names}
    if row["trace"] is not None and not isinstance(row["trace"], str):
        row["trace"] = json.dumps(row["trace"], default=str)
    return row


def sanitize(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with every string valid Unicode and within its column's cap (a cut string says
    how long it was)."""
    from ray_conductor.serve.protocol import clean_text

    out = {}
    for k, v in row.items():
        if isinstance(v, str):
            v = clean_text(v)
            cap = MAX_CHARS.get(k, MAX_OTHER_CHARS)
            if len(v) > cap:
                v = f"{v[:cap]}...[cut: {len(v)} characters]"
        out[k] = v
    return out


def check_feedback(body: Any, reward_range: tuple[float, float] = (-1.0, 1.0)
                   ) -> tuple[str, float | None, str | None]:
    """(request_id, reward, label) from a `/v1/feedback` body; `ValueError` says what is
    wrong (the HTTP layer turns it into a 400). A reward outside `reward_range` is refused:
    rewards steer retraining, so one huge value must not outweigh everyone else's."""
    if not isinstance(body, dict):
        raise ValueError("the feedback body must be a JSON object")
    rid, reward, label = body.get("request_id"), body.get("reward"), body.get("label")
    if not isinstance(rid, str) or not rid or len(rid) > 100:
        raise ValueError("`request_id` must be the `id` of an earlier response")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))
                               or not math.isfinite(reward)):
        raise ValueError("`reward` must be a finite number")
    lo, hi = reward_range
    if reward is not None and not lo <= reward <= hi:
        raise ValueError(f"`reward` must be between {lo:g} and {hi:g}, got {reward!r}")
    if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL_CHARS):
        raise ValueError(f"`label` must be a string of at most {MAX_LABEL_CHARS} characters")
    if reward is None and label is None:
        raise ValueError("send a `reward`, a `label`, or both")
    return rid, None if reward is None else float(reward), label


@dataclass
class _Buffer:
    schema: pa.Schema
    rows: list[dict[str, Any]]


class TrafficLog:
    """Buffers rows and writes them as Parquet parts. `append` returns True once the buffer
    holds `max_rows` (the caller flushes then); `flush` writes one part per date and dataset,
    and a row that cannot be written to the dead-letter file. Remembers the last `recent`
    request ids and their key ids, so feedback for a fresh request is checked without reading
    files."""

    def __init__(self, root: str | os.PathLike, max_rows: int = 2000, recent: int = 100_000,
                 clock: Callable[[], float] | None = None):
        import time

        self.root = Path(root)
        self.max_rows = max(1, int(max_rows))
        self._clock = clock or time.time
        self._buf = {REQUESTS: _Buffer(REQUEST_SCHEMA, []), FEEDBACK: _Buffer(FEEDBACK_SCHEMA, [])}
        self._recent: OrderedDict[str, str | None] = OrderedDict()
        self._recent_cap = recent
        self.written = {REQUESTS: 0, FEEDBACK: 0}
        self.dead_letter = {REQUESTS: 0, FEEDBACK: 0}

    def append(self, row: dict[str, Any]) -> bool:
        row = sanitize(row)
        self._buf[REQUESTS].rows.append(row)
        self._recent[row.get("request_id")] = row.get("key_id")
        while len(self._recent) > self._recent_cap:
            self._recent.popitem(last=False)
        return self.pending() >= self.max_rows

    def add_feedback(self, request_id: str, key_id: str | None, reward: float | None,
                     label: str | None) -> bool:
        self._buf[FEEDBACK].rows.append(sanitize({
            "request_id": request_id, "time": self._clock(), "key_id": key_id,
            "reward": reward, "label": label}))
        return self.pending() >= self.max_rows

    def pending(self) -> int:
        return sum(len(b.rows) for b in self._buf.values())

    def owner_recent(self, request_id: str) -> tuple[bool, str | None]:
        """`owner` from memory only."""
        if request_id in self._recent:
            return True, self._recent[request_id]
        return False, None

    def owner(self, request_id: str) -> tuple[bool, str | None]:
        """(known, key id) of a logged request: recent ones from memory, others from disk."""
        if request_id in self._recent:
            return self.owner_recent(request_id)
        return self.owner_on_disk(request_id)

    def owner_on_disk(self, request_id: str) -> tuple[bool, str | None]:
        """(known, key id) of a logged request from the written parts only (newest first; a
        part that cannot be read is skipped here and quarantined by the next `read_traffic`)."""
        path = self.root / REQUESTS
        parts = sorted(path.rglob("part-*.parquet"), reverse=True) if path.is_dir() else []
        for f in parts:
            try:
                table = pq.read_table(f, columns=["request_id", "key_id"],
                                      filters=[("request_id", "==", request_id)])
            except (pa.ArrowException, OSError, ValueError, TypeError, KeyError) as e:
                log.warning("traffic log: unreadable part %s skipped: %s", f,
                            str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
                continue
            if table.num_rows:
                return True, table.column("key_id")[0].as_py()
        return False, None

    def flush(self) -> int:
        """Write what is buffered; returns the rows written. A row that cannot be converted
        goes to the dead-letter file; the others are written. A write that fails (the disk)
        keeps its rows buffered for the next flush, and the error is raised."""
        n = 0
        for name, buf in self._buf.items():
            rows, buf.rows = buf.rows, []
            parts, dead = self._tables(buf.schema, rows)
            if dead:
                self._dead_letter(name, dead)
            for i, (day, table, part_rows) in enumerate(parts):
                try:
                    self._write(name, day, table)
                except BaseException:
                    buf.rows = [r for _, _, rs in parts[i:] for r in rs] + buf.rows
                    raise
                self.written[name] += len(part_rows)
                n += len(part_rows)
        return n

    def _tables(self, schema: pa.Schema, rows: list[dict[str, Any]]
                ) -> tuple[list[tuple[str, pa.Table, list[dict[str, Any]]]],
                           list[tuple[dict[str, Any], str]]]:
        """Rows as one table per day, and the rows that cannot be converted, each with why
        (found by halving: one bad row never holds up the others)."""
        by_day: dict[str, list[dict[str, Any]]] = {}
        dead: list[tuple[dict[str, Any], str]] = []
        for r in rows:
            try:
                by_day.setdefault(_utc(r["time"]).strftime("%Y-%m-%d"), []).append(r)
            except ROW_ERRORS as e:
                dead.append((r, f"time: {type(e).__name__}: {e}"))
        parts = []
        for day, part in sorted(by_day.items()):
            good: list[dict[str, Any]] = []
            tables: list[pa.Table] = []
            todo = [part]
            while todo:
                chunk = todo.pop()
                try:
                    tables.append(_table(schema, chunk))
                    good += chunk
                except ROW_ERRORS as e:
                    if len(chunk) == 1:
                        dead.append((chunk[0], f"{type(e).__name__}: {str(e)[:500]}"))
                    else:
                        todo += [chunk[len(chunk) // 2:], chunk[:len(chunk) // 2]]
            if tables:
                parts.append((day, pa.concat_tables(tables), good))
        return parts, dead

    def _write(self, name: str, day: str, table: pa.Table) -> None:
        folder = self.root / name / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"part-{int(self._clock() * 1000):013d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{stem}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, folder / stem)

    def _dead_letter(self, name: str, dead: list[tuple[dict[str, Any], str]]) -> None:
        """Rows that cannot be written, as JSON lines with the reason (ASCII: any text
        fits); logged loudly, and counted."""
        folder = self.root / DEAD_LETTER / f"date={_utc(self._clock()).strftime('%Y-%m-%d')}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{int(self._clock() * 1000):013d}-{uuid.uuid4().hex[:8]}.jsonl"
        with open(path, "w", encoding="ascii") as f:
            for row, why in dead:
                try:
                    line = json.dumps({"dataset": name, "reason": why, "row": row},
                                      default=repr)
                except ValueError:  # a value json cannot hold at all
                    line = json.dumps({"dataset": name, "reason": why, "row": repr(row)})
                f.write(line + "\n")
        self.dead_letter[name] += len(dead)
        log.error("traffic log: %d %s rows could not be written; they are in %s (first "
                  "reason: %s)", len(dead), name, path, dead[0][1])


def _table(schema: pa.Schema, rows: list[dict[str, Any]]) -> pa.Table:
    cols = {f: [r.get(f) for r in rows] for f in schema.names}
    cols["time"] = [_utc(t) for t in cols["time"]]
    return pa.table(cols, schema=schema)


QUARANTINE = "quarantine"  # unreadable parts are moved here, beside requests/ and feedback/


def _dataset(root: Path, name: str, schema: pa.Schema, quarantine: bool,
             moved: list[dict[str, str]]) -> pa.Table:
    """Every part of `name` with `schema`'s columns (and the `date` of its folder). A part
    that cannot be read as such (zero bytes, cut short, foreign columns, a reward that is
    text) is moved under `quarantine/` (`quarantine=True`) or skipped, and listed in
    `moved`: one bad file never hides the others."""
    path = root / name
    parts = sorted(path.rglob("part-*.parquet")) if path.is_dir() else []
    tables = []
    for f in parts:
        try:
            table = pq.read_table(f, columns=schema.names).cast(schema)
        except (pa.ArrowException, OSError, ValueError, TypeError, KeyError) as e:
            moved.append(_quarantine(root, f, e, quarantine))
            continue
        day = f.parent.name.partition("date=")[2] or None
        tables.append(table.append_column("date", pa.array([day] * table.num_rows,
                                                           pa.string())))
    if not tables:
        return schema.append(pa.field("date", pa.string())).empty_table()
    return pa.concat_tables(tables)


def _quarantine(root: Path, f: Path, why: BaseException, move: bool) -> dict[str, str]:
    reason = (str(why).strip().splitlines() or [type(why).__name__])[0][:300]
    entry = {"file": str(f), "reason": f"{type(why).__name__}: {reason}", "moved_to": ""}
    if move:
        target = root / QUARANTINE / f.relative_to(root)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
            entry["moved_to"] = str(target)
        except OSError as e:
            entry["reason"] += f" (not moved: {e.strerror or e})"
    log.warning("traffic log: unreadable part %s quarantined: %s", f, entry["reason"])
    return entry


def _since(since: Any) -> datetime | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        return since if since.tzinfo else since.replace(tzinfo=UTC)
    if isinstance(since, (int, float)):
        return _utc(float(since))
    parsed = datetime.fromisoformat(str(since))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read_feedback(root: str | os.PathLike, quarantine: bool = True) -> Any:
    """Every feedback row (pandas), oldest first. Unreadable parts are quarantined (see
    `read_traffic`); `df.attrs["quarantined"]` lists them."""
    moved: list[dict[str, str]] = []
    df = _dataset(Path(root), FEEDBACK, FEEDBACK_SCHEMA, quarantine, moved).to_pandas()
    df = df.sort_values("time", kind="stable").reset_index(drop=True)
    df.attrs["quarantined"] = moved
    return df


def read_traffic(root: str | os.PathLike, since: Any = None, quarantine: bool = True) -> Any:
    """The logged requests (pandas, oldest first) with their feedback joined: `reward` and
    `label` are the latest given for each request (None when none was). `since`: a datetime,
    epoch seconds or an ISO date/time (UTC unless it says otherwise).

    A part file that cannot be read with the log's schema (zero bytes, cut short, another
    table's columns, a reward that is text) is moved to `ROOT/quarantine/...` and listed in
    `df.attrs["quarantined"]` ({file, moved_to, reason}); the rest is read. `quarantine=False`
    only skips it (read-only readers)."""
    import pandas as pd

    moved: list[dict[str, str]] = []
    df = _dataset(Path(root), REQUESTS, REQUEST_SCHEMA, quarantine, moved).to_pandas()
    start = _since(since)
    if start is not None:
        df = df[df["time"] >= pd.Timestamp(start)]
    fb = read_feedback(root, quarantine)
    for col in ("reward", "label"):
        last = fb.dropna(subset=[col]).drop_duplicates("request_id", keep="last")
        df = df.merge(last[["request_id", col]], on="request_id", how="left")
    df = df.sort_values("time", kind="stable").reset_index(drop=True)
    df.attrs["quarantined"] = moved + fb.attrs["quarantined"]
    return df
