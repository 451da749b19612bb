"""ReplayData lookups, the ReplayPool's contract, pool specs, the import cache and the demo pool."""

import json
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from ray_conductor.config import default_data_dir
from ray_conductor.data import pools
from ray_conductor.data.commands import ImportConfig, run_import
from ray_conductor.data.pools import DEMO_PATH, load_pool, parse_spec
from ray_conductor.data.replay import ReplayData, ReplayPool
from ray_conductor.data.table import TableBuilder, read_table
from ray_conductor.errors import DataError, PoolError
from ray_conductor.workers.base import WorkerPool
from ray_conductor.workflow import Step, Workflow, execute

Q1 = "What is 2+2?\n\nA. 3\nB. 4"


def row(qid, model, response, correct, tin, tout, ref="B", query=Q1, answer=None):
    # priced at $1 / $2 per 1M input / output tokens
    return dict(query_id=qid, query=query, task="mmlu_pro/math", answer_format="mc",
                reference=ref, model=model, response=response, answer=answer, correct=correct,
                input_tokens=tin if response else 0, output_tokens=tout,
                cost=(tin * 1 + tout * 2) / 1e6 if response else 0.0, cost_source="price_table")


@pytest.fixture
def data():
    b = TableBuilder()
    for r in [row("q1", "big", "The answer is (B).", True, 100, 10, answer="B"),
              row("q1", "small", "The answer is (A).", False, 100, 20, answer="A"),
              row("q2", "big", "Answer: C", True, 300, 30, ref="C", query="Q2", answer="C"),
              row("q2", "small", None, None, 0, 0, ref="C", query="Q2"),
              row("q3", "big", "The answer is (D).", False, 50, 8, ref="A", query="Q3"),
              row("q3", "small", "The answer is (A).", True, 50, 7, ref="B", query="Q3",
                  answer="A")]:
        b.add(**r)
    return ReplayData(b.table())


def test_lookups_are_by_id_pair_and_text(data):
    assert data.models == ["big", "small"]
    assert [q.query_id for q in data.queries("all")] == ["q1", "q2", "q3"]
    assert data.record("q1", "small").response == "The answer is (A)."
    assert data.record("q2", "small").response is None  # a hole is a record
    assert data.record("q9", "big") is None
    assert data.find(None, Q1).query_id == "q1" and data.find("q9", "nope") is None


def test_judge_extracts_the_letter_and_reference_is_the_majority_key(data):
    assert data.judge("q1", "so the answer is (B)") is True
    assert data.judge("q1", "Answer: A") is False
    assert data.judge("q2", "") is False
    # q3: both rows answered, keys A and B tie: the first row's key wins
    assert data.query("q3").reference == "A"
    with pytest.raises(DataError, match="unknown query 'q9'"):
        data.judge("q9", "A")


def test_matrix_holes_are_wrong_and_splits_partition(data):
    correct, cost = data.matrix("all")
    assert correct.tolist() == [[True, False], [True, False], [False, True]]
    assert cost[0].tolist() == pytest.approx([120e-6, 140e-6])
    assert cost[1, 1] == 0.0
    train = {q.query_id for q in data.queries("train")}
    test = {q.query_id for q in data.queries("test")}
    assert train | test == {"q1", "q2", "q3"} and not train & test
    with pytest.raises(DataError, match="unknown split 'dev'"):
        data.queries("dev")


def test_answers_are_aligned_with_the_matrix(data):
    ans = data.answers("all")
    assert ans.dtype == object and ans.shape == data.matrix("all").correct.shape
    # q3/big answered but no letter was extracted: None, like the hole q2/small
    assert ans.tolist() == [["B", "A"], ["C", None], [None, "A"]]
    assert data.record("q1", "small").answer == "A" and data.record("q2", "small").answer is None
    for split in ("train", "test"):
        rows = [q.query_id for q in data.queries(split)]
        full = {q.query_id: i for i, q in enumerate(data.queries("all"))}
        assert data.answers(split).tolist() == [ans[full[q]].tolist() for q in rows]
        assert data.answers(split).shape == data.matrix(split).correct.shape


def test_worker_prices_are_fitted_from_the_rows(data):
    infos = {w.name: w for w in data.worker_infos()}
    assert (infos["big"].input_price_per_mtok, infos["big"].output_price_per_mtok) == (1.0, 2.0)
    assert (infos["small"].input_price_per_mtok, infos["small"].output_price_per_mtok) == (1.0, 2.0)
    assert infos["small"].description == ""  # provenance stays out of the conductor's prompt
    assert data.coverage()["small"]["answered"] == 2 and data.coverage()["small"]["queries"] == 3


async def test_pool_returns_recordings_and_failures_as_data(data):
    pool = ReplayPool(data)
    assert isinstance(pool, WorkerPool)
    c = await pool.complete("big", [], metadata={"query_id": "q2", "question": "Q2"})
    assert (c.ok, c.text, c.input_tokens, c.output_tokens) == (True, "Answer: C", 300, 30)
    assert c.meta["answer"] == "C"  # the extracted answer travels with the completion
    assert c.cost == pytest.approx(360e-6)
    by_text = await pool.complete("small", [], metadata={"query_id": None, "question": Q1})
    assert by_text.text == "The answer is (A)." and by_text.meta["answer"] == "A"
    no_letter = await pool.complete("big", [], metadata={"query_id": "q3"})
    assert no_letter.ok and no_letter.meta["answer"] is None
    hole = await pool.complete("small", [], metadata={"query_id": "q2"})
    assert (hole.ok, hole.error_code) == (False, "missing_answer")
    assert "small" in hole.error and "q2" in hole.error
    unknown = await pool.complete("big", [], metadata={"query_id": "q9", "question": "?"})
    assert unknown.error_code == "unknown_query" and "q9" in unknown.error
    nometa = await pool.complete("big", [])
    assert nometa.error_code == "unknown_query"
    with pytest.raises(PoolError, match="unknown worker 'huge'"):
        await pool.complete("huge", [], metadata={"query_id": "q1"})


async def test_pool_latency_and_executor_round_trip(data):
    pool = ReplayPool(data, latency_s=0.05)
    wf = Workflow((Step("small", "solve", ()), Step("big", "check", (0,))))
    t0 = time.perf_counter()
    trace = await execute(wf, Q1, pool, query_id="q1")
    assert time.perf_counter() - t0 >= 0.1  # two dependent steps, 0.05 s each
    assert trace.answer == "The answer is (B)." and data.judge("q1", trace.answer)
    assert trace.cost == pytest.approx(140e-6 + 120e-6)


def test_specs_resolve_formats_and_refuse_unknown_ones(tmp_path):
    assert parse_spec("demo") == ("parquet", [DEMO_PATH])
    assert parse_spec("routerbench", str(tmp_path)) == ("routerbench", [tmp_path / "routerbench"])
    fmt, paths = parse_spec("mmlu_pro:a.zip, b.zip")
    assert fmt == "mmlu_pro" and [str(p) for p in paths] == ["a.zip", "b.zip"]
    with pytest.raises(DataError, match="unknown pool 'csv:x'.*demo, mmlu_pro:PATH"):
        load_pool("csv:x")
    with pytest.raises(DataError, match="parquet:PATH"):
        load_pool("parquet")


def _mmlu_zip(path, answer="A"):
    recs = [{"question_id": 1, "question": "Q?", "options": ["x", "y"], "answer": answer,
             "category": "math", "pred": "A", "model_outputs": "The answer is (A)."}]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model_outputs_gpt-4o_5shots.json", json.dumps(recs))


def test_imports_are_cached_until_a_file_changes(tmp_path, monkeypatch):
    src, cache = tmp_path / "model_outputs_gpt-4o_5shots.zip", tmp_path / "cache"
    _mmlu_zip(src)
    spec = f"mmlu_pro:{src}"
    first = load_pool(spec, cache_dir=cache)
    assert first.record("mmlu_pro/1", "gpt-4o").correct is True
    assert len(list(cache.glob("*.parquet"))) == 1

    def boom(paths):
        raise AssertionError("re-imported although cached")

    monkeypatch.setitem(pools.IMPORTERS, "mmlu_pro", (boom, (".zip", ".json"), "x"))
    again = load_pool(spec, cache_dir=cache)
    assert again.report.models["gpt-4o"].price_source == "litellm"
    _mmlu_zip(src, answer="B")  # same name, new content
    with pytest.raises(AssertionError, match="re-imported"):
        load_pool(spec, cache_dir=cache)


def test_run_import_writes_the_table_and_reports_per_model(tmp_path, capsys):
    src = tmp_path / "model_outputs_gpt-4o_5shots.zip"
    _mmlu_zip(src)
    out = tmp_path / "out" / "pool.parquet"
    result = run_import(ImportConfig(pool=f"mmlu_pro:{src}", out=str(out), data_dir=str(tmp_path)))
    assert read_table(out)[0].num_rows == 1
    assert result["summary"]["gpt-4o"]["accuracy"] == 1.0 and result["oracle_accuracy"] == 1.0
    assert "gpt-4o" in capsys.readouterr().out


@pytest.mark.skipif(not DEMO_PATH.is_file(), reason="demo pool not built")
def test_demo_pool_is_small_complete_and_judgeable():
    assert DEMO_PATH.stat().st_size < 12e6
    assert "Apache License" in (DEMO_PATH.parent / "NOTICE").read_text()
    data = load_pool("demo")
    assert len(data.models) == 12 and 1500 <= len(data.queries()) <= 2500
    assert data.queries("train") and data.queries("test")
    assert len({q.task for q in data.queries()}) == 14  # every MMLU-Pro category
    correct, cost = data.matrix("test")
    assert correct.shape == cost.shape == (len(data.queries("test")), 12)
    # our extractor agrees with the publisher's pred == answer on almost every answered row
    rows = [(q.query_id, data.record(q.query_id, "gpt-4o")) for q in data.queries("test")]
    agree = [data.judge(qid, r.response) == r.correct for qid, r in rows if r.response]
    assert sum(agree) / len(agree) > 0.95
    # the stored letters are the publisher's: answer == the row's own answer key is the
    # recorded accuracy, model by model (a few files carry a revised key, so the pool's
    # majority `Query.reference` would differ on a handful of rows)
    cols = read_table(DEMO_PATH)[0].select(["model", "answer", "reference"]).to_pydict()
    right = Counter(m for m, a, r in zip(*cols.values()) if a == r)
    ok = data.matrix("all").correct.sum(axis=0)
    assert [right[m] for m in data.models] == ok.tolist()
    assert set(data.answers("all").ravel().tolist()) == set("ABCDEFGHIJ") | {None}


REAL_JAMBA = (Path(default_data_dir()) / "mmlu_pro" /
              "model_outputs_jamba-1.5-large_5shots.zip")


@pytest.mark.skipif(not (DEMO_PATH.is_file() and REAL_JAMBA.is_file()),
                    reason="demo pool or MMLU-Pro data missing")
def test_demo_answers_are_the_zips_pred_letters():
    """jamba's letters in the demo are its zip's `pred` for the same questions, one by one."""
    with zipfile.ZipFile(REAL_JAMBA) as z:
        raw = {f"mmlu_pro/{r['question_id']}": r for n in z.namelist() if n.endswith(".json")
               for r in json.load(z.open(n)) if isinstance(r, dict)}
    data = load_pool("demo")
    got = {q.query_id: data.record(q.query_id, "jamba-1.5-large").answer
           for q in data.queries()}
    assert got == {qid: raw[qid]["pred"] for qid in got}
    assert sum(a is None for a in got.values()) == 9  # counted from the zip's demo questions


def test_parquet_spec_streams_the_stored_table(tmp_path):
    from ray_conductor.data.table import write_table

    b = TableBuilder()
    b.add(**row("q1", "big", "The answer is (B).", True, 100, 10))
    path = write_table(b.table(), tmp_path / "t.parquet")
    data = load_pool(f"parquet:{path}")
    assert data.models == ["big"] and data.record("q1", "big").cost == pytest.approx(120e-6)
    assert data.report is None  # a table written without a report
    with pytest.raises(DataError, match="no such file"):
        load_pool(f"parquet:{tmp_path / 'missing.parquet'}")
