"""MMLU-Pro importer, pricing and the canonical table, on hand-made files in the public formats."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ray_conductor.config import default_data_dir
from ray_conductor.data import pricing
from ray_conductor.data.mmlu_pro import import_mmlu_pro, model_from_name, query_text
from ray_conductor.data.table import (
    ImportReport, oracle_accuracy, read_table, summarize, write_table)
from ray_conductor.errors import DataError

# alpha: $0 input, $1 per output token, so a row's cost is its output token count in dollars
PRICES = {"litellm": {}, "table": {"alpha": {"input": 0.0, "output": 1e6},
                                   "gamma": {"input": 1.0, "output": 2.0}}}


def rec(qid, answer, pred, text, key="generated_text", options=("x", "y", "z", "w"),
        category="math"):
    return {"question_id": qid, "question": f"Q{qid}?", "options": list(options),
            "answer": answer, "answer_index": "ABCD".index(answer), "category": category,
            "src": "ori", "cot_content": "", "pred": pred, key: text}


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, json.dumps(data))
    return path


@pytest.fixture
def mmlu_dir(tmp_path):
    """alpha (zip, one junk entry, a null pred), gpt-4o (per-subject zip, q3 missing),
    gamma (plain .json, `model_outputs` key, options as a Python-literal string)."""
    d = tmp_path / "mmlu"
    d.mkdir()
    write_zip(d / "model_outputs_alpha_5shots.zip", {"model_outputs_alpha_5shots.json": [
        rec(1, "A", "A", "The answer is (A)."),
        "junk",
        rec(2, "B", None, "hello world"),
        rec(3, "C", "D", "The answer is (D).", category="computer science"),
    ]})
    write_zip(d / "gpt4o_cot_results.zip", {
        "gpt4o/math_result.json": [rec(1, "A", "A", "The answer is (A).", key="response"),
                                   rec(2, "B", "B", "The answer is (B).", key="response")],
        "gpt4o/computer science_result.json": [],
    })
    lit = rec(3, "C", "C", "The answer is (C).", key="model_outputs",
              category="computer science")
    lit["options"] = "['x', 'y', 'z', 'w']"
    (d / "model_outputs_gamma_5shots.json").write_text(json.dumps(
        [rec(1, "A", "B", "The answer is (B).", key="model_outputs"), lit]))
    return d


def test_model_names_come_from_the_file_names():
    assert model_from_name("model_outputs_Meta-Llama-3_1-70B-Instruct_5shots") == (
        "Meta-Llama-3_1-70B-Instruct")
    assert model_from_name("gpt4o_cot_results") == "gpt-4o"
    assert model_from_name("philosophy_result") is None


def test_query_text_is_question_then_lettered_options():
    assert query_text(" Q? ", ["x", "y"]) == "Q?\n\nA. x\nB. y"


def test_import_counts_rows_holes_junk_and_null_preds(mmlu_dir):
    table, rep = import_mmlu_pro([mmlu_dir], prices=PRICES)
    assert table.num_rows == 9  # 3 models x 3 questions, holes included
    assert list(rep.models) == ["alpha", "gamma", "gpt-4o"]
    a, g, o = rep.models["alpha"], rep.models["gamma"], rep.models["gpt-4o"]
    assert (a.rows, a.answered, a.holes, a.junk, a.null_preds) == (3, 3, 0, 1, 1)
    assert (g.rows, g.answered, g.holes) == (3, 2, 1)  # gamma never answered q2
    assert (o.rows, o.answered, o.holes) == (3, 2, 1)  # gpt-4o never answered q3
    assert rep.queries == 3 and len(rep.files) == 4
    assert rep.to_dict()["price_sources"] == {"alpha": "price_table", "gamma": "price_table",
                                              "gpt-4o": "litellm"}


def test_correct_is_pred_equals_answer_and_holes_are_null(mmlu_dir):
    table, _ = import_mmlu_pro([mmlu_dir], prices=PRICES)
    got = {(r["model"], r["query_id"]): r["correct"] for r in table.to_pylist()}
    assert got == {
        ("alpha", "mmlu_pro/1"): True, ("alpha", "mmlu_pro/2"): False,  # null pred: wrong
        ("alpha", "mmlu_pro/3"): False,
        ("gamma", "mmlu_pro/1"): False, ("gamma", "mmlu_pro/2"): None,
        ("gamma", "mmlu_pro/3"): True,
        ("gpt-4o", "mmlu_pro/1"): True, ("gpt-4o", "mmlu_pro/2"): True,
        ("gpt-4o", "mmlu_pro/3"): None,
    }
    s = summarize(table)
    assert s["alpha"]["accuracy"] == pytest.approx(1 / 3)
    o = s["gpt-4o"]
    assert (o["rows"], o["holes"], o["correct"]) == (3, 1, 2)
    assert o["accuracy"] == pytest.approx(2 / 3)  # the hole counts as wrong
    assert oracle_accuracy(table) == 1.0  # q1 alpha, q2 gpt-4o, q3 gamma


def test_rows_carry_query_task_and_reference(mmlu_dir):
    table, _ = import_mmlu_pro([mmlu_dir], prices=PRICES)
    row = next(r for r in table.to_pylist() if r["model"] == "gamma" and
               r["query_id"] == "mmlu_pro/3")
    assert row["query"] == "Q3?\n\nA. x\nB. y\nC. z\nD. w"  # parsed from the literal string
    assert row["task"] == "mmlu_pro/computer_science"
    assert (row["reference"], row["answer_format"], row["response"]) == (
        "C", "mc", "The answer is (C).")
    hole = next(r for r in table.to_pylist() if r["model"] == "gpt-4o" and
                r["query_id"] == "mmlu_pro/3")
    assert (hole["response"], hole["cost"], hole["output_tokens"]) == (None, 0.0, 0)


def test_costs_are_tokens_times_prices(mmlu_dir):
    table, _ = import_mmlu_pro([mmlu_dir], prices=PRICES)
    rows = {(r["model"], r["query_id"]): r for r in table.to_pylist()}
    # "The answer is (A)." = The| answer| is| (|A|). = 6 tokens at $1 each; "hello world" = 2
    assert rows[("alpha", "mmlu_pro/1")]["output_tokens"] == 6
    assert rows[("alpha", "mmlu_pro/1")]["cost"] == pytest.approx(6.0)
    assert rows[("alpha", "mmlu_pro/2")]["cost"] == pytest.approx(2.0)
    g = rows[("gamma", "mmlu_pro/1")]  # $1 / $2 per 1M tokens
    assert g["cost"] == pytest.approx((g["input_tokens"] * 1 + 6 * 2) / 1e6)
    o = rows[("gpt-4o", "mmlu_pro/2")]  # litellm's gpt-4o: $2.5 / $10 per 1M tokens
    assert o["cost_source"] == "litellm"
    assert o["cost"] == pytest.approx((o["input_tokens"] * 2.5 + 6 * 10) / 1e6)
    assert o["input_tokens"] == pricing.count_tokens("Q2?\n\nA. x\nB. y\nC. z\nD. w")


def test_answer_key_conflicts_keep_each_files_key(tmp_path):
    write_zip(tmp_path / "model_outputs_alpha_5shots.zip",
              {"a.json": [rec(1, "A", "A", "The answer is (A).")]})
    write_zip(tmp_path / "model_outputs_gamma_5shots.zip",
              {"g.json": [rec(1, "B", "B", "The answer is (B).")]})
    table, rep = import_mmlu_pro([tmp_path], prices=PRICES)
    assert rep.reference_conflicts == 1
    assert [(r["reference"], r["correct"]) for r in table.to_pylist()] == [("A", True),
                                                                          ("B", True)]


def test_the_same_file_twice_counts_duplicates(mmlu_dir):
    f = mmlu_dir / "model_outputs_gamma_5shots.json"
    table, rep = import_mmlu_pro([f, f], prices=PRICES)
    assert table.num_rows == 2 and rep.models["gamma"].duplicates == 2


def test_keep_selects_questions(mmlu_dir):
    table, rep = import_mmlu_pro([mmlu_dir], keep={"mmlu_pro/1"}, prices=PRICES)
    assert table.num_rows == 3 and rep.queries == 1


@pytest.mark.parametrize("name, content, match", [
    ("x.csv", "a,b\n1,2\n", "expected a .zip or .json"),
    ("model_outputs_m_5shots.json", '{"a": 1}', "expected a JSON list of MMLU-Pro records"),
    ("model_outputs_m_5shots.json", "[{", "not valid JSON"),
    ("model_outputs_m_5shots.json", '[{"question_id": 1}]', r"record 0 is not an MMLU-Pro "
                                                            r"record: expected keys"),
    ("notes.json", "[]", "cannot tell which model wrote it"),
    ("model_outputs_m_5shots.zip", "not a zip", "not a readable zip file"),
])
def test_wrong_files_raise_data_errors_naming_the_file(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match=match) as e:
        import_mmlu_pro([p], prices=PRICES)
    assert name in str(e.value)


def test_missing_path_and_unpriced_model_raise(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        import_mmlu_pro([tmp_path / "nope"])
    write_zip(tmp_path / "model_outputs_nobody-7B_5shots.zip", {"n.json": [rec(1, "A", "A", "x")]})
    with pytest.raises(DataError, match=r"no price for models \['nobody-7B'\].*prices.yaml"):
        import_mmlu_pro([tmp_path], prices=PRICES)


def test_parquet_round_trip_keeps_the_report(mmlu_dir, tmp_path):
    table, rep = import_mmlu_pro([mmlu_dir], prices=PRICES)
    back, rep2 = read_table(write_table(table, tmp_path / "t.parquet", rep))
    assert back.equals(table)
    assert rep2.to_dict() == rep.to_dict()
    assert ImportReport.from_dict(rep.to_dict()).models["alpha"].junk == 1


def test_foreign_parquet_is_refused(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "f.parquet")
    with pytest.raises(DataError, match="expected the canonical table"):
        read_table(tmp_path / "f.parquet")


def test_token_counter_is_litellm_offline():
    assert pricing.count_tokens("hello world") == 2
    assert pricing.count_tokens("") == 0 and pricing.estimate_tokens("abcde") == 2
    assert "litellm" in pricing.token_counter_name()


def test_prices_come_from_litellm_then_the_table():
    cfg = {"litellm": {"my-4o": "gpt-4o"}, "table": {"open-7b": {"input": 0.2, "output": 0.4}}}
    p = pricing.price_for("my-4o", cfg)
    assert (p.input_per_mtok, p.output_per_mtok, p.source) == (2.5, 10.0, "litellm")
    assert pricing.price_for("open-7b", cfg).cost(1_000_000, 500_000) == pytest.approx(0.4)
    assert pricing.price_for("gemini-1.5-pro-002").source == "price_table"  # configs/prices.yaml
    with pytest.raises(DataError, match="no price for model 'nobody'"):
        pricing.price_for("nobody", cfg)


def test_fit_prices_recovers_per_token_prices_and_falls_back_to_a_blend():
    tin, tout = np.array([100, 200, 50]), np.array([10, 40, 30])
    cost = (tin * 3.0 + tout * 15.0) / 1e6
    assert pricing.fit_prices(tin, tout, cost) == pytest.approx((3.0, 15.0))
    # one row: singular, so one blended price, $0.01 over 100 tokens = $100 / 1M
    assert pricing.fit_prices(np.array([60]), np.array([40]), np.array([0.01])) == (
        pytest.approx(100.0), pytest.approx(100.0))
    assert pricing.fit_prices(np.array([]), np.array([]), np.array([])) == (0.0, 0.0)


def test_answer_column_is_the_publishers_pred_letter(mmlu_dir):
    table, _ = import_mmlu_pro([mmlu_dir], prices=PRICES)
    got = {(r["model"], r["query_id"]): r["answer"] for r in table.to_pylist()}
    assert got == {
        ("alpha", "mmlu_pro/1"): "A", ("alpha", "mmlu_pro/2"): None,  # pred null: no letter
        ("alpha", "mmlu_pro/3"): "D",
        ("gamma", "mmlu_pro/1"): "B", ("gamma", "mmlu_pro/2"): None,  # a hole
        ("gamma", "mmlu_pro/3"): "C",
        ("gpt-4o", "mmlu_pro/1"): "A", ("gpt-4o", "mmlu_pro/2"): "B",
        ("gpt-4o", "mmlu_pro/3"): None,  # a hole
    }
    assert table.schema.field("answer").type == pa.string()


def test_answer_column_round_trips_through_parquet(mmlu_dir, tmp_path):
    table, rep = import_mmlu_pro([mmlu_dir], prices=PRICES)
    back, _ = read_table(write_table(table, tmp_path / "t.parquet", rep))
    assert back.column("answer").to_pylist() == table.column("answer").to_pylist()
    assert back.column("answer").null_count == 3


def test_old_tables_without_the_answer_column_still_read(mmlu_dir, tmp_path):
    """Tables written before `answer` existed (an old cache, a shared file) read it as null."""
    import pyarrow.parquet as pq

    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.replay import ReplayData

    table, _ = import_mmlu_pro([mmlu_dir], prices=PRICES)
    old = table.drop_columns(["answer"])
    pq.write_table(old, tmp_path / "old.parquet")
    back, rep = read_table(tmp_path / "old.parquet")
    assert rep is None and back.column_names == table.column_names
    assert back.column("answer").null_count == back.num_rows == 9
    assert back.drop_columns(["answer"]).equals(old)
    streamed = load_pool(f"parquet:{tmp_path / 'old.parquet'}")  # the streaming path
    assert streamed.record("mmlu_pro/1", "alpha").answer is None
    assert streamed.record("mmlu_pro/1", "alpha").correct is True
    in_memory = ReplayData(old)  # a table built in memory without the column
    assert in_memory.answers("all").tolist() == [[None] * 3] * 3


REAL = Path(default_data_dir()) / "mmlu_pro"


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason=f"no MMLU-Pro data at {REAL}")
def test_real_pred_letters_match_the_publishers_zips():
    """Counted by hand from the zips (json.load, then pred == answer / pred is None / pred ==
    "A" over every record): gpt-4o 8671 right (72.1%), 571 null preds, 1451 A's; Mixtral 5040,
    1426, 1664. answer == reference must give the recorded accuracy exactly."""
    files = [REAL / "gpt4o_cot_results.zip",
             REAL / "model_outputs_Mixtral-8x7B-Instruct-v0.1_5shots.zip"]
    table, _ = import_mmlu_pro(files)
    s = summarize(table)
    expected = {"gpt-4o": (8671, 571, 1451), "Mixtral-8x7B-Instruct-v0.1": (5040, 1426, 1664)}
    for m, (right, null_preds, a_count) in expected.items():
        rows = [r for r in table.to_pylist() if r["model"] == m]
        assert len(rows) == 12032 and s[m]["holes"] == 0
        assert sum(r["answer"] == r["reference"] for r in rows) == right == s[m]["correct"], m
        assert sum(r["answer"] is None for r in rows) == null_preds, m
        assert sum(r["answer"] == "A" for r in rows) == a_count, m
        assert {r["answer"] for r in rows} == set("ABCDEFGHIJ") | {None}, m
