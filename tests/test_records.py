"""Records pools (`records:PATH`): a team's own recordings in JSONL, CSV or Parquet with every
answer format, the replay judge on each format, votes and conditions on number and math
answers from records, and the rows the importer refuses (file, line, column) or counts."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_conductor.data.pools import load_pool, parse_spec
from ray_conductor.data.records import default_query_id, import_records
from ray_conductor.data.replay import ReplayData, ReplayPool
from ray_conductor.data.table import read_table
from ray_conductor.errors import DataError
from ray_conductor.workflow import Workflow, execute_sync, parse

COLUMNS = ["query_id", "query", "model", "response", "answer_format", "reference", "correct",
           "cost"]
MC = "Which is the letter after A? (A) a (B) b"
NUMBER = "What is one half as a number?"
MATH = "Simplify 2/4."
CODE = "Write f() returning 1."
LABEL = "Is the sky blue?"


def row(query, model, response, fmt, reference="", correct=None, cost=0.001, qid=None):
    return {"query_id": qid, "query": query, "model": model, "response": response,
            "answer_format": fmt, "reference": reference, "correct": correct, "cost": cost}


ROWS = [
    row(MC, "cheap", "The answer is (A)", "mc", "(b)", qid="q-mc"),
    row(MC, "mid", "The answer is (B)", "mc", "(b)", qid="q-mc"),
    row(MC, "pricey", "Answer: B", "mc", "(b)", qid="q-mc", cost=0.01),
    row(NUMBER, "cheap", "so it is 0.5", "number", "1/2", qid="q-num"),
    row(NUMBER, "mid", "The answer is 2", "number", "1/2", qid="q-num"),
    row(NUMBER, "pricey", "#### 0.50", "number", "1/2", qid="q-num", cost=0.01),
    row(MATH, "cheap", "so \\boxed{0.5}", "math", "\\frac{1}{2}", qid="q-math"),
    row(MATH, "mid", "\\boxed{\\frac12}", "math", "\\frac{1}{2}", qid="q-math"),
    row(MATH, "pricey", None, "math", "\\frac{1}{2}", qid="q-math"),  # a hole
    row(CODE, "cheap", "def f():\n    return 1", "code", "assert f() == 1", True),
    row(CODE, "mid", "def f():\n    return 2", "code", "assert f() == 1", False),
    # pricey has no code row at all: a hole the importer adds
    row(LABEL, "cheap", "yes", "label", "", True, qid="q-label"),
    row(LABEL, "mid", "no", "label", "", False, qid="q-label"),
    row(LABEL, "pricey", "Yes.", "label", "", True, qid="q-label", cost=0.01),
]
CODE_ID = default_query_id(CODE)


def write(path: Path, rows, columns=COLUMNS) -> Path:
    """The rows as JSONL, CSV (empty cell = null) or Parquet, by `path`'s extension."""
    rows = [{c: r.get(c) for c in columns} for r in rows]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None
                                            or k == "response"}) + "\n" for r in rows))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            w.writerows([("" if r[c] is None else str(r[c]).lower() if isinstance(r[c], bool)
                          else r[c]) for c in columns] for r in rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(params=["jsonl", "csv", "parquet"])
def records(request, tmp_path):
    return write(tmp_path / f"team.{request.param}", ROWS)


def cell(table, qid, model, col):
    for r in table.to_pylist():
        if r["query_id"] == qid and r["model"] == model:
            return r[col]
    raise KeyError((qid, model))


# -- import ------------------------------------------------------------------------------------


def test_every_format_imports_from_every_file_type(records):
    table, rep = import_records([records])
    assert table.num_rows == 15 and rep.queries == 5 and rep.source == "records"
    assert [rep.models[m].holes for m in ("cheap", "mid", "pricey")] == [0, 0, 2]
    correct = {(r["query_id"], r["model"]): r["correct"] for r in table.to_pylist()}
    assert correct == {
        ("q-mc", "cheap"): False, ("q-mc", "mid"): True, ("q-mc", "pricey"): True,
        ("q-num", "cheap"): True, ("q-num", "mid"): False, ("q-num", "pricey"): True,
        ("q-math", "cheap"): True, ("q-math", "mid"): True, ("q-math", "pricey"): None,
        (CODE_ID, "cheap"): True, (CODE_ID, "mid"): False, (CODE_ID, "pricey"): None,
        ("q-label", "cheap"): True, ("q-label", "mid"): False, ("q-label", "pricey"): True}
    # extracted answers in canonical form: what votes and conditions compare
    assert cell(table, "q-num", "pricey", "answer") == "0.5"
    assert cell(table, "q-math", "mid", "answer") == "1/2"
    assert cell(table, "q-mc", "pricey", "answer") == "B"
    assert cell(table, CODE_ID, "cheap", "answer") is None
    assert cell(table, "q-mc", "cheap", "task") == "records"
    assert cell(table, "q-mc", "pricey", "cost") == pytest.approx(0.01)
    assert cell(table, "q-math", "pricey", "cost") == 0.0  # holes cost nothing
    assert rep.price_sources == {"cheap": "recorded", "mid": "recorded", "pricey": "recorded"}
    assert cell(table, "q-mc", "mid", "input_tokens") > 0  # counted: no token columns given


def test_the_replay_judge_reads_every_format(records):
    data = ReplayData(*import_records([records]))
    judge = data.judge
    assert judge("q-mc", "Clearly the answer is (B).") and not judge("q-mc", "no letter")
    assert judge("q-num", "It is 1/2... The answer is 0.5") and not judge("q-num", "#### 2")
    assert judge("q-math", "\\boxed{\\dfrac{1}{2}}") and judge("q-math", "The answer is 0.5")
    assert not judge("q-math", "\\boxed{2}")
    # code and label: the recorded verdict of a recorded text; nothing else is judged right
    assert judge(CODE_ID, "def f():\n    return 1") and not judge(CODE_ID, "def f(): return 1")
    assert judge("q-label", " Yes. ") and not judge("q-label", "no")
    assert data.queries()[0].answer_format == "mc"
    assert {q.answer_format for q in data.queries()} == {"mc", "number", "math", "code",
                                                          "label"}


def test_a_recorded_answer_is_judged_before_the_text(tmp_path):
    """The answer column is what a team's own extractor read: the judge uses it for that
    recorded text, and the extractor for any other text."""
    rows = [row(NUMBER, "a", "twelve", "number", "12", qid="n") | {"answer": "12"},
            row(NUMBER, "b", "thirteen", "number", "12", qid="n")]
    table, _ = import_records([write(tmp_path / "r.jsonl", rows, COLUMNS + ["answer"])])
    data = ReplayData(table)
    assert data.judge("n", "twelve") and not data.judge("n", "thirteen")
    assert data.judge("n", "#### 12")
    assert cell(table, "n", "a", "correct") is True and cell(table, "n", "b", "answer") is None


def test_pool_spec_cache_and_the_import_command(records, tmp_path, capsys):
    from ray_conductor.data.commands import run_import

    spec = f"records:{records}"
    assert parse_spec(spec) == ("records", [records])
    with pytest.raises(DataError, match="needs a path: records:PATH"):
        parse_spec("records")
    data = load_pool(spec, cache_dir=tmp_path / "cache")
    assert len(data.queries()) == 5 and list(tmp_path.joinpath("cache").iterdir())
    again = load_pool(spec, cache_dir=tmp_path / "cache")  # from the cached table
    assert again.judge("q-num", "0.5") and again.models == data.models
    out = tmp_path / "pool.parquet"
    res = run_import(SimpleNamespace(pool=spec, out=str(out), overwrite=False, data_dir="."))
    table, rep = read_table(out)
    assert table.num_rows == 15 and rep.source == "records" and res["rows"] == 15
    assert "recorded" in capsys.readouterr().out
    with pytest.raises(DataError, match="already exists"):
        run_import(SimpleNamespace(pool=spec, out=str(out), overwrite=False, data_dir="."))


def test_prices_from_litellm_then_the_table_and_unpriced_models(tmp_path):
    rows = [row(NUMBER, "gpt-4o", "#### 0.5", "number", "0.5", cost=None, qid="n"),
            row(NUMBER, "mine", "#### 1", "number", "0.5", cost=0.02, qid="n")]
    table, rep = import_records([write(tmp_path / "r.jsonl", rows)])
    assert rep.models["gpt-4o"].price_source == "litellm"
    assert rep.models["mine"].price_source == "recorded"
    got = cell(table, "n", "gpt-4o", "cost")
    tin, tout = cell(table, "n", "gpt-4o", "input_tokens"), cell(table, "n", "gpt-4o",
                                                                  "output_tokens")
    assert got == pytest.approx((tin * 2.5 + tout * 10.0) / 1e6)
    table, rep = import_records([write(tmp_path / "t.jsonl", rows)],
                                prices={"litellm": {}, "table": {"mine": {"input": 1,
                                                                          "output": 1}}})
    assert rep.models["mine"].price_source == "recorded"
    rows[1]["cost"] = None
    with pytest.raises(DataError, match=r"no recorded cost and no price for models \['mine'\]"):
        import_records([write(tmp_path / "u.jsonl", rows)])


def test_identical_duplicates_and_settled_disagreements_are_counted(tmp_path):
    rows = ROWS + [ROWS[1],  # an identical second row: skipped, counted
                   row(MC, "extra", "The answer is (C)", "mc", "(c)", qid="q-mc"),
                   row(NUMBER, "extra", "#### 0.5", "number", "1/2", False, qid="q-num")]
    rows[0] = rows[0] | {"shoe_size": 9}
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table, rep = import_records([path])
    assert rep.models["mid"].duplicates == 1 and table.num_rows == 20
    assert rep.reference_conflicts == 1  # "(b)" three times, "(c)" once
    assert ReplayData(table).judge("q-mc", "The answer is (B)")  # the most common key
    assert cell(table, "q-num", "extra", "correct") is False  # kept as recorded...
    notes = " ".join(rep.notes)
    assert "1 rows carry a `correct` the verifier would not give" in notes  # ...and counted
    assert "1 identical duplicate rows skipped" in notes
    assert "ignored columns (not records columns): ['shoe_size']" in notes
    assert "answer formats: code 1, label 1, math 1, mc 1, number 1 questions" in notes


BAD = [
    (lambda r: r | {"answer_format": "mcq"}, "answer_format",
     "unknown answer format 'mcq'; use one of mc, number, math, code, label"),
    (lambda r: r | {"reference": "maybe"}, "reference", "'maybe' is not a mc answer"),
    (lambda r: r | {"correct": "perhaps"}, "correct", "expected true/false"),
    (lambda r: r | {"cost": -1}, "cost", "expected dollars >= 0"),
    (lambda r: r | {"model": " "}, "model", "empty; every row needs its model"),
]


@pytest.mark.parametrize("bad, column, message", BAD)
def test_a_bad_row_names_file_line_and_column(tmp_path, bad, column, message):
    rows = [ROWS[0], bad(ROWS[1])]
    for kind, line in (("jsonl", 2), ("csv", 3)):  # CSV: line 1 is the header
        path = write(tmp_path / f"r.{kind}", rows)
        with pytest.raises(DataError) as e:
            import_records([path])
        assert str(e.value).startswith(f"{path}:{line}, column {column!r}: ")
        assert message in str(e.value)


@pytest.mark.parametrize("fmt", ["label", "code"])
def test_label_and_code_rows_must_carry_their_verdict(tmp_path, fmt):
    rows = [row(LABEL, "a", "yes", fmt, "assert True", True),
            row(LABEL, "b", "no", fmt, "assert True", None)]
    path = write(tmp_path / "r.parquet", rows)
    with pytest.raises(DataError, match=rf"r.parquet: row 2, column 'correct': a {fmt} row "
                                        "needs `correct`"):
        import_records([path])
    rows[1]["response"] = None  # a hole needs no verdict
    assert import_records([write(tmp_path / "ok.parquet", rows)])[1].models["b"].holes == 1


def test_conflicting_rows_name_both_places(tmp_path):
    twice = [ROWS[0], ROWS[0] | {"response": "The answer is (C)"}]
    path = write(tmp_path / "r.jsonl", twice)
    with pytest.raises(DataError, match=rf"r.jsonl:2: a second, different row for query_id "
                                        rf"'q-mc' and model 'cheap' \(the first is at "
                                        rf"{path}:1\)"):
        import_records([path])
    renamed = [ROWS[0], ROWS[1] | {"query": "another question"}]
    with pytest.raises(DataError, match=r"r.jsonl:2, column 'query': query_id 'q-mc' has "
                                        r"query 'Which"):
        import_records([write(tmp_path / "r.jsonl", renamed)])
    reformatted = [ROWS[0], ROWS[1] | {"answer_format": "label", "correct": True}]
    with pytest.raises(DataError, match="column 'answer_format': query_id 'q-mc' has"):
        import_records([write(tmp_path / "r.jsonl", reformatted)])


def test_files_that_are_not_records(tmp_path):
    with pytest.raises(DataError, match=r"missing the required column \['reference'\]"):
        import_records([write(tmp_path / "r.csv", ROWS, [c for c in COLUMNS
                                                         if c != "reference"])])
    (tmp_path / "r.jsonl").write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"r.jsonl:2: not a JSON object"):
        import_records([tmp_path / "r.jsonl"])
    (tmp_path / "k.jsonl").write_text(json.dumps({k: v for k, v in ROWS[0].items()
                                                  if k != "response"}) + "\n")
    with pytest.raises(DataError, match=r"k.jsonl:1: no column 'response'"):
        import_records([tmp_path / "k.jsonl"])
    (tmp_path / "d.csv").write_text("query,model,model,response,answer_format,reference\n")
    with pytest.raises(DataError, match=r"the column 'model' appears 2 times"):
        import_records([tmp_path / "d.csv"])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt: unknown file type '.txt'"):
        import_records([tmp_path / "notes.txt"])
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        import_records([tmp_path / "e.jsonl"])
    (tmp_path / "x.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="x.parquet: not a readable Parquet file"):
        import_records([tmp_path / "x.parquet"])


def test_a_directory_of_records_files_of_mixed_types(tmp_path):
    write(tmp_path / "part1.jsonl", ROWS[:6])
    write(tmp_path / "part2.csv", ROWS[6:11])
    write(tmp_path / "part3.parquet", ROWS[11:])
    table, rep = import_records([tmp_path])
    assert table.num_rows == 15 and len(rep.files) == 3


# -- votes and conditions on number and math recordings ----------------------------------------


@pytest.fixture
def pool(tmp_path):
    return ReplayPool(ReplayData(*import_records([write(tmp_path / "r.jsonl", ROWS)])))


def plan(text: str, pool) -> Workflow:
    return parse(text, [w.name for w in pool.workers()] + ["vote"])


@pytest.mark.parametrize("qid, question, fmt", [("q-num", NUMBER, "number"),
                                                ("q-math", MATH, "math")])
def test_a_vote_over_recorded_answers(pool, qid, question, fmt):
    wf = plan('model_id = ["cheap", "mid", "pricey", "vote"]\nsubtasks = ["a", "a", "a", "v"]'
              '\naccess_list = [[], [], [], "all"]', pool)
    trace = execute_sync(wf, question, pool, query_id=qid, answer_format=fmt)
    vote = trace.steps[-1]
    if fmt == "number":  # 0.5, 2, 0.5: the two halves win; pricey is the stronger of them
        assert [s.answer for s in trace.steps[:3]] == ["0.5", "2", "0.5"]
        assert vote.answer == "0.5" and vote.winner == 2 and trace.answer == "#### 0.50"
    else:  # 1/2, 1/2 and a hole: both halves agree; cheap and mid cost alike, the first wins
        assert [s.answer for s in trace.steps[:3]] == ["1/2", "1/2", None]
        assert vote.answer == "1/2" and trace.steps[2].error_code == "missing_answer"
    assert pool.data.judge(qid, trace.answer)


def test_agree_and_disagree_conditions_on_number_and_math(pool):
    cascade = plan('model_id = ["cheap", "pricey", "mid"]\nsubtasks = ["a", "a", "check"]\n'
                   'access_list = [[], [], "disagree:0,1"]', pool)
    agree = execute_sync(cascade, NUMBER, pool, query_id="q-num", answer_format="number")
    assert agree.steps[2].skipped and agree.answer == "#### 0.50"  # 0.5 and 0.50 agree
    cheap_mid = plan('model_id = ["cheap", "mid", "pricey"]\nsubtasks = ["a", "a", "check"]\n'
                     'access_list = [[], [], "disagree:0,1"]', pool)
    differ = execute_sync(cheap_mid, NUMBER, pool, query_id="q-num", answer_format="number")
    assert not differ.steps[2].skipped and differ.final_worker == "pricey"
    same = execute_sync(cheap_mid, MATH, pool, query_id="q-math", answer_format="math")
    assert same.steps[2].skipped  # 0.5 and \frac12 are the same MATH answer
    assert pool.data.judge("q-math", same.answer)
