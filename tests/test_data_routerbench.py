"""RouterBench importer on hand-made CSVs in the public schema, and on the real MBPP files."""

import csv
import sys
from pathlib import Path

import pytest

from ray_conductor.config import default_data_dir
from ray_conductor.data.replay import ReplayData
from ray_conductor.data.routerbench import import_routerbench, literal_text
from ray_conductor.data.table import oracle_accuracy, summarize
from ray_conductor.errors import DataError

HEADER = ["", "sample_id", "prompt", "eval_name", "m1", "m2", "m1|model_response",
          "m2|model_response", "m1|total_cost", "m2|total_cost", "oracle_model_to_route_to"]
ROWS = [
    # q1: m1 right, m2 wrong
    ["0", "mbpp.dev.1", "['Write f.']", "mbpp", "1.0", "0.0", "['def f(): pass']",
     "['hello world']", "0.01", "0.002", "m1"],
    # q2: m1 answered but unlabeled, m2 right; the prompt has two turns
    ["1", "mbpp.dev.2", "['Turn one.', 'Turn two.']", "mbpp", "", "1.0", "['x = 1']", "['y = 2']",
     "0.03", "0.004", "m2"],
    # q3: m1 wrong, m2 has no response (a hole)
    ["2", "mbpp.dev.3", "['Write g.']", "mbpp", "0.0", "", "['def g(): 0']", "", "0.05", "",
     "no_model_correct"],
]


def write_csv(path, header=HEADER, rows=ROWS):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_literal_lists_become_text():
    assert literal_text("['a', 'b']") == "a\n\nb"
    assert literal_text("[not python") == "[not python"
    assert literal_text("plain") == "plain"


def test_import_counts_labels_holes_and_recorded_costs(tmp_path):
    table, rep = import_routerbench([write_csv(tmp_path / "mbpp_test.csv")])
    assert table.num_rows == 6 and rep.queries == 3
    m1, m2 = rep.models["m1"], rep.models["m2"]
    assert (m1.rows, m1.answered, m1.holes, m1.unlabeled) == (3, 3, 0, 1)
    assert (m2.rows, m2.answered, m2.holes, m2.unlabeled) == (3, 2, 1, 0)
    assert rep.price_sources == {"m1": "recorded", "m2": "recorded"}
    s = summarize(table)
    assert s["m1"]["correct"] == 1 and s["m1"]["cost"] == pytest.approx(0.09)
    assert s["m2"]["correct"] == 1 and s["m2"]["cost"] == pytest.approx(0.006)
    assert oracle_accuracy(table) == pytest.approx(2 / 3)


def test_rows_hold_query_text_task_and_null_labels(tmp_path):
    table, _ = import_routerbench([write_csv(tmp_path / "a.csv")])
    rows = {(r["model"], r["query_id"]): r for r in table.to_pylist()}
    r = rows[("m1", "routerbench/mbpp.dev.2")]
    assert r["query"] == "Turn one.\n\nTurn two."
    assert (r["task"], r["answer_format"], r["reference"]) == ("routerbench/mbpp", "label", "")
    assert (r["response"], r["correct"], r["cost"], r["cost_source"]) == (
        "x = 1", None, 0.03, "recorded")
    hole = rows[("m2", "routerbench/mbpp.dev.3")]
    assert (hole["response"], hole["correct"], hole["cost"]) == (None, None, 0.0)


def test_label_judge_uses_recorded_responses(tmp_path):
    data = ReplayData(*import_routerbench([write_csv(tmp_path / "a.csv")]))
    assert data.judge("routerbench/mbpp.dev.1", "def f(): pass") is True
    assert data.judge("routerbench/mbpp.dev.1", "hello world\n") is False  # m2's, labelled 0
    assert data.judge("routerbench/mbpp.dev.1", "something new") is False
    assert data.judge("routerbench/mbpp.dev.2", "x = 1") is False  # unlabeled counts as wrong


def test_two_files_union_their_models_and_skip_duplicate_ids(tmp_path):
    a = write_csv(tmp_path / "a.csv")
    b = write_csv(tmp_path / "b.csv", ["sample_id", "prompt", "m3", "m3|model_response",
                                       "m3|total_cost"],
                  [["mbpp.dev.9", "['P']", "1", "['r']", "0.5"]])
    table, rep = import_routerbench([a, b, a])
    assert rep.queries == 4 and table.num_rows == 12  # 4 queries x 3 models
    assert rep.models["m3"].holes == 3 and rep.models["m1"].duplicates == 3
    task = {r["query_id"]: r["task"] for r in table.to_pylist()}
    assert task["routerbench/mbpp.dev.9"] == "routerbench"  # no eval_name column


def test_wrong_format_names_the_file_and_the_expected_columns(tmp_path):
    p = write_csv(tmp_path / "x.csv", ["id", "question", "answer"], [["1", "q", "a"]])
    with pytest.raises(DataError, match=r"x.csv: expected a RouterBench CSV with "
                                        r"'<model>\|total_cost' columns.*found columns"):
        import_routerbench([p])
    p = write_csv(tmp_path / "y.csv", ["sample_id", "prompt", "m|total_cost"], [["s", "p", "1"]])
    with pytest.raises(DataError, match=r"y.csv: model 'm' lacks the columns \['m', "
                                        r"'m\|model_response'\]"):
        import_routerbench([p])
    rows = [list(ROWS[0])]
    rows[0][4] = "yes"
    with pytest.raises(DataError, match=r"z.csv:2: label 'm1' must be a number"):
        import_routerbench([write_csv(tmp_path / "z.csv", rows=rows)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .csv files"):
        import_routerbench([tmp_path / "empty"])


DATA = Path(default_data_dir()) / "routerbench"


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason=f"no RouterBench data at {DATA}")
def test_real_mbpp_accuracy_and_cost_equal_the_csv_columns():
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    files = sorted(DATA.glob("*.csv"))
    raw = [r for f in files for r in csv.DictReader(open(f, newline="", encoding="utf-8"))]
    table, rep = import_routerbench(files)
    assert rep.queries == len(raw) == len({r["sample_id"] for r in raw})
    s = summarize(table)
    assert len(s) == 11
    for m, got in s.items():
        assert got["holes"] == 0 and got["rows"] == len(raw)
        assert got["correct"] == sum(float(r[m]) for r in raw), m
        assert got["cost"] == pytest.approx(sum(float(r[f"{m}|total_cost"]) for r in raw)), m
    none_right = sum(r["oracle_model_to_route_to"] == "no_model_correct" for r in raw)
    assert oracle_accuracy(table) == pytest.approx(1 - none_right / len(raw))
