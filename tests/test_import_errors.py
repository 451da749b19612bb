"""Damaged and malformed inputs give one-line `DataError`s that name the file, not tracebacks.

Each case is a file in a public format with one thing wrong, built here in tmp_path.
"""

import io
import json
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_data_mmlu_pro import PRICES, rec, write_zip
from test_data_routerbench import ROWS, write_csv

from ray_conductor.data.mmlu_pro import import_mmlu_pro
from ray_conductor.data.pools import load_pool
from ray_conductor.data.routerbench import import_routerbench
from ray_conductor.data.table import read_table, write_table
from ray_conductor.errors import DataError

ZIP = "model_outputs_alpha_5shots.zip"


def one_line_error(fn, *match):
    """Run fn; it must raise a DataError whose one-line message contains every `match`."""
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and all(m in msg for m in match), msg
    return msg


def mmlu(path):
    return lambda: import_mmlu_pro([path], prices=PRICES)


def rb(path):
    return lambda: import_routerbench([path])


def zip_bytes(method, n=30):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        z.writestr("model_outputs_alpha_5shots.json",
                   json.dumps([rec(i, "A", "A", "The answer is (A). " * 20) for i in range(n)]))
    return bytearray(buf.getvalue())


@pytest.mark.parametrize("method, why", [(zipfile.ZIP_STORED, "Bad CRC-32"),
                                         (zipfile.ZIP_DEFLATED, "decompressing")])
def test_a_damaged_zip_member_is_one_line(tmp_path, method, why):
    data = zip_bytes(method)
    data[200] ^= 0xFF  # inside the member's data: the header still parses
    (tmp_path / ZIP).write_bytes(bytes(data))
    one_line_error(mmlu(tmp_path / ZIP), f"{ZIP}!model_outputs_alpha_5shots.json",
                   "damaged zip member", why, "re-download")


def test_a_truncated_zip_is_one_line(tmp_path):
    (tmp_path / ZIP).write_bytes(bytes(zip_bytes(zipfile.ZIP_DEFLATED)[:300]))
    one_line_error(mmlu(tmp_path / ZIP), ZIP, "not a readable zip file")


def test_a_json_member_that_is_not_a_list(tmp_path):
    write_zip(tmp_path / ZIP, {"m.json": {"question_id": 1}})
    one_line_error(mmlu(tmp_path / ZIP), f"{ZIP}!m.json", "expected a JSON list", "found dict")


def test_truncated_and_non_utf8_json(tmp_path):
    p = tmp_path / "model_outputs_alpha_5shots.json"
    p.write_text(json.dumps([rec(1, "A", "A", "The answer is (A).")])[:50])
    one_line_error(mmlu(p), p.name, "not valid JSON", "cut short")
    p.write_bytes(json.dumps([rec(1, "A", "A", "café")], ensure_ascii=False).encode("latin-1"))
    one_line_error(mmlu(p), p.name, "not UTF-8", "re-save it as UTF-8")
    p.write_text("[" * 100_000)  # json raises RecursionError
    one_line_error(mmlu(p), p.name, "nested too deeply")


@pytest.mark.parametrize("key, value", [("generated_text", 42), ("generated_text", {"a": 1}),
                                        ("response", ["ok", 3]), ("model_outputs", True)])
def test_a_non_string_recorded_answer(tmp_path, key, value):
    write_zip(tmp_path / ZIP, {"m.json": [rec(1, "A", "A", "The answer is (A)."),
                                          rec(2, "B", "B", value, key=key)]})
    one_line_error(mmlu(tmp_path / ZIP), ZIP, "record 1 (question_id 2)", f"`{key}` must be text")


@pytest.mark.parametrize("key, value", [("pred", 3), ("pred", {"x": "A"}), ("answer", 1)])
def test_a_non_string_letter(tmp_path, key, value):
    r = rec(1, "A", "A", "The answer is (A).")
    r[key] = value
    write_zip(tmp_path / ZIP, {"m.json": [r]})
    one_line_error(mmlu(tmp_path / ZIP), ZIP, "record 0", f"`{key}` must be a letter or null")


def test_options_that_break_the_literal_parser(tmp_path):
    r = rec(1, "A", "A", "The answer is (A).")
    r["options"] = "[{[1]: 2}]"  # literal_eval raises TypeError (unhashable key)
    write_zip(tmp_path / ZIP, {"m.json": [r]})
    one_line_error(mmlu(tmp_path / ZIP), ZIP, "`options` must be a list")


def test_a_latin1_csv(tmp_path):
    p = tmp_path / "a.csv"
    rows = [list(r) for r in ROWS]
    rows[1][6] = "['café = 1']"
    text = write_csv(p, rows=rows).read_text(encoding="utf-8")
    p.write_bytes(text.encode("latin-1"))
    one_line_error(rb(p), "a.csv", "not UTF-8 text", "re-save it as UTF-8")


def test_a_csv_row_with_too_few_or_too_many_cells(tmp_path):
    p = write_csv(tmp_path / "a.csv", rows=[ROWS[0], ROWS[1][:5]])
    one_line_error(rb(p), "a.csv:3", "5 cells where the header has 11")
    p = write_csv(tmp_path / "b.csv", rows=[ROWS[0] + ["extra"]])
    one_line_error(rb(p), "b.csv:2", "12 cells where the header has 11")


def test_a_truncated_csv(tmp_path):
    text = write_csv(tmp_path / "a.csv").read_text()
    (tmp_path / "cut.csv").write_text(text[: text.index("def g") + 3])  # inside a quoted cell
    one_line_error(rb(tmp_path / "cut.csv"), "cut.csv", "cells where the header has 11")
    (tmp_path / "empty.csv").write_text("")
    one_line_error(rb(tmp_path / "empty.csv"), "empty.csv", "empty file")


@pytest.mark.parametrize("cell", ["[{'role': 'assistant'}]", "[1, 2]", "['ok', None]"])
def test_a_non_string_routerbench_response(tmp_path, cell):
    rows = [list(r) for r in ROWS]
    rows[0][6] = cell  # m1|model_response
    p = write_csv(tmp_path / "a.csv", rows=rows)
    one_line_error(rb(p), "a.csv:2", "'m1|model_response' must be text or a list of texts")


def test_a_non_finite_routerbench_number(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[0][8] = "nan"  # m1|total_cost
    one_line_error(rb(write_csv(tmp_path / "a.csv", rows=rows)), "a.csv:2",
                   "'m1|total_cost' must be a number")


@pytest.fixture
def table(tmp_path):
    return import_routerbench([write_csv(tmp_path / "src.csv")])[0]


def test_parquet_that_is_not_parquet_or_cut_short(tmp_path, table):
    p = tmp_path / "t.parquet"
    p.write_bytes(b"PAR1 not really")
    for read in (lambda: read_table(p), lambda: load_pool(f"parquet:{p}")):
        one_line_error(read, "t.parquet", "not a readable Parquet file")
    whole = write_table(table, tmp_path / "whole.parquet").read_bytes()
    p.write_bytes(whole[: len(whole) // 2])
    one_line_error(lambda: read_table(p), "t.parquet", "not a readable Parquet file")


def test_parquet_with_damaged_pages(tmp_path, table):
    data = bytearray(write_table(table, tmp_path / "t.parquet").read_bytes())
    for k in range(100, 400):
        data[k] ^= 0x55
    (tmp_path / "t.parquet").write_bytes(bytes(data))
    for read in (lambda: read_table(tmp_path / "t.parquet"),
                 lambda: load_pool(f"parquet:{tmp_path / 't.parquet'}")):
        one_line_error(read, "t.parquet", "damaged Parquet file")


def test_parquet_with_wrong_columns_or_types(tmp_path, table):
    pq.write_table(table.drop_columns(["cost"]), tmp_path / "a.parquet")
    one_line_error(lambda: read_table(tmp_path / "a.parquet"), "missing ['cost']")
    i = table.column_names.index("correct")
    pq.write_table(table.set_column(i, "correct", pa.array(["yes"] * table.num_rows)),
                   tmp_path / "b.parquet")
    for read in (lambda: read_table(tmp_path / "b.parquet"),
                 lambda: load_pool(f"parquet:{tmp_path / 'b.parquet'}")):
        one_line_error(read, "b.parquet", "wrong type")
    pq.write_table(table.set_column(0, "query_id", pa.nulls(table.num_rows, pa.string())),
                   tmp_path / "c.parquet")
    one_line_error(lambda: load_pool(f"parquet:{tmp_path / 'c.parquet'}"), "c.parquet",
                   "non-nullable")
