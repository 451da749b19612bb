"""Property-based fuzzing of the importers: whatever the bytes, the only outcomes are a table
or a one-line `ConductorError` naming the problem, never a traceback.

Inputs: random bytes, prefixes of small valid files, flipped bytes, other text encodings,
dropped/shuffled/mistyped columns and fields. A header shuffled together with its cells is
still the same file and must import to the same table.
"""

import csv
import io
import json
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_data_mmlu_pro import PRICES, rec
from test_data_routerbench import HEADER, ROWS

from ray_conductor.data.mmlu_pro import import_mmlu_pro
from ray_conductor.data.pools import load_pool
from ray_conductor.data.replay import ReplayData
from ray_conductor.data.routerbench import import_routerbench
from ray_conductor.data.table import SCHEMA, read_table
from ray_conductor.errors import ConductorError

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
JSON_NAME, ZIP_NAME = "model_outputs_alpha_5shots.json", "model_outputs_alpha_5shots.zip"


def _mmlu(p):
    return ReplayData(*import_mmlu_pro([p], prices=PRICES))


def _rb(p):
    return ReplayData(*import_routerbench([p]))


def _parquet(p):
    read_table(p)
    return load_pool(f"parquet:{p}", cache_dir=None)


READERS = {JSON_NAME: _mmlu, ZIP_NAME: _mmlu, "pool.csv": _rb, "pool.parquet": _parquet}


def attempt(name, data):
    """Write `data` as `name` in a fresh directory and import it: "ok" or "error"."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_bytes(data)
        try:
            READERS[name](p)
        except ConductorError as e:
            msg = str(e)
            assert msg.strip() and "\n" not in msg, repr(msg)
            return "error"
    return "ok"


def outcome(name, data):
    """`attempt`, counted in hypothesis' statistics (--hypothesis-show-statistics)."""
    got = attempt(name, data)
    event(f"{name}: {got}")
    return got


def csv_bytes(header, rows, encoding="utf-8"):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode(encoding, errors="replace")


def records():
    rs = [rec(1, "A", "A", "The answer is (A)."), rec(2, "B", None, "naïve — no letter"),
          rec(3, "C", "D", "The answer is (D).", key="response")]
    rs[2]["options"] = "['x', 'y', 'z', 'w']"
    return rs


@lru_cache(maxsize=None)
def valid_files():
    """One small valid file per format, built by the same means a user's would be."""
    rows = [list(r) for r in ROWS]
    rows[0][6] = "['café = 1']"
    out = {JSON_NAME: json.dumps(records(), ensure_ascii=False).encode(),
           "pool.csv": csv_bytes(HEADER, rows)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(JSON_NAME, out[JSON_NAME])
    out[ZIP_NAME] = buf.getvalue()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "a.csv").write_bytes(out["pool.csv"])
        table, _ = import_routerbench([Path(d) / "a.csv"])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    out["pool.parquet"] = sink.getvalue().to_pybytes()
    return out


NAMES = st.sampled_from(sorted(READERS))


def test_the_valid_files_import():
    assert {n: attempt(n, b) for n, b in valid_files().items()} == dict.fromkeys(READERS, "ok")


@FUZZ
@given(NAMES, st.binary(max_size=3000))
def test_random_bytes(name, data):
    outcome(name, data)


@FUZZ
@given(NAMES, st.data())
def test_truncated_files(name, data):
    whole = valid_files()[name]
    outcome(name, whole[: data.draw(st.integers(0, len(whole) - 1))])


@FUZZ
@given(NAMES, st.data())
def test_flipped_bytes(name, data):
    b = bytearray(valid_files()[name])
    for _ in range(data.draw(st.integers(1, 8))):
        b[data.draw(st.integers(0, len(b) - 1))] ^= data.draw(st.integers(1, 255))
    outcome(name, bytes(b))


ENCODINGS = st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-32", "utf-8-sig",
                             "shift_jis", "mac_roman"])


@FUZZ
@given(st.sampled_from([JSON_NAME, "pool.csv"]), ENCODINGS)
def test_other_encodings(name, encoding):
    text = valid_files()[name].decode("utf-8")
    outcome(name, text.encode(encoding, errors="replace"))


@FUZZ
@given(st.permutations(range(len(HEADER))), st.booleans())
def test_shuffled_headers(order, with_cells):
    """Shuffled with its cells: the same file, the same table. Header alone: ok or an error."""
    header = [HEADER[i] for i in order]
    rows = [[r[i] for i in order] if with_cells else list(r) for r in ROWS]
    got = outcome("pool.csv", csv_bytes(header, rows))
    if with_cells:
        with tempfile.TemporaryDirectory() as d:
            a, b = Path(d) / "a.csv", Path(d) / "b.csv"
            a.write_bytes(csv_bytes(HEADER, ROWS))
            b.write_bytes(csv_bytes(header, rows))
            key = ["query_id", "model"]
            ta = import_routerbench([a])[0].sort_by([(k, "ascending") for k in key])
            tb = import_routerbench([b])[0].sort_by([(k, "ascending") for k in key])
        assert got == "ok" and ta.equals(tb)


@FUZZ
@given(st.sets(st.sampled_from(HEADER), min_size=1))
def test_missing_csv_columns(drop):
    keep = [i for i, h in enumerate(HEADER) if h not in drop]
    outcome("pool.csv", csv_bytes([HEADER[i] for i in keep], [[r[i] for i in keep] for r in ROWS]))


CELLS = st.one_of(st.text(max_size=30), st.sampled_from([
    "[1, 2]", "['a', None]", "[", "[[[[[[", "[" * 300 + "]" * 300, "nan", "inf", "-1", "1e400",
    "[{[1]: 2}]", "['x'] + ['y']", "{'a': 1}", "", " ", "\x00", "['\\ud800']"]))


@FUZZ
@given(st.integers(0, len(ROWS) - 1), st.integers(0, len(HEADER) - 1), CELLS)
def test_odd_csv_cells(row, col, cell):
    rows = [list(r) for r in ROWS]
    rows[row][col] = cell
    outcome("pool.csv", csv_bytes(HEADER, rows, encoding="utf-8"))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)
FIELDS = ["question_id", "question", "options", "answer", "category", "pred", "generated_text",
          "response"]


@FUZZ
@given(st.integers(0, 2), st.sampled_from(FIELDS), st.one_of(st.just("<drop>"), JSON_VALUES),
       st.booleans())
def test_odd_json_fields(i, key, value, zipped):
    rs = records()
    if value == "<drop>":
        rs[i].pop(key, None)
    else:
        rs[i][key] = value
    data = json.dumps(rs).encode()
    if zipped:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(JSON_NAME, data)
        data = buf.getvalue()
    outcome(ZIP_NAME if zipped else JSON_NAME, data)


@FUZZ
@given(JSON_VALUES)
def test_json_that_is_not_a_list_of_records(value):
    outcome(JSON_NAME, json.dumps(value).encode())


ARRAYS = st.sampled_from(["int", "str", "bool", "null", "float", "list"])


@FUZZ
@given(st.sets(st.sampled_from(SCHEMA.names), max_size=3), st.sampled_from(SCHEMA.names),
       ARRAYS)
def test_parquet_with_wrong_columns(drop, retype, kind):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "a.parquet").write_bytes(valid_files()["pool.parquet"])
        table = pq.read_table(Path(d) / "a.parquet")
    n = table.num_rows
    col = {"int": pa.array(range(n)), "str": pa.array(["x"] * n), "null": pa.nulls(n),
           "bool": pa.array([True] * n), "float": pa.array([0.5] * n),
           "list": pa.array([[1]] * n)}[kind]
    table = table.set_column(table.column_names.index(retype), retype, col)
    table = table.drop_columns([c for c in drop if c != retype])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    outcome("pool.parquet", sink.getvalue().to_pybytes())
