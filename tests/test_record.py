"""`ray-conductor record`: the questions file, the answer store, the estimate and the budget,
the recorder's clean stops (Ctrl-C, max_dollars), judging (code in the sandbox), the written
records read back by the records importer; then end to end against loopback workers (the
fault server and the local SmolLM2 server) on questions of ../shared/data/benchmarks,
interrupted and resumed with no question asked twice, and refused over max_dollars."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import re
import signal
from pathlib import Path

import pytest

from ray_conductor.config import default_data_dir
from ray_conductor.data.records import import_records
from ray_conductor.data.replay import ReplayData
from ray_conductor.errors import ConfigError, DataError, RunFailed
from ray_conductor.record.command import check_budget
from ray_conductor.record.output import judge_code, record_rows, write_records
from ray_conductor.record.questions import RecordQuestion, read_questions
from ray_conductor.record.recorder import Recorder, messages_for
from ray_conductor.record.store import RecordedAnswer, AnswerStore, Pricer, answer_key
from ray_conductor.workers.base import Attempt, Completion, WorkerInfo

BENCH = Path(default_data_dir()) / "benchmarks"


def gsm8k(n: int) -> list[dict]:
    with open(BENCH / "gsm8k_test.jsonl") as f:
        rows = [json.loads(next(f)) for _ in range(n)]
    return [{"query_id": f"gsm8k/{i}", "query": r["question"], "answer_format": "number",
             "reference": r["answer"], "task": "gsm8k"} for i, r in enumerate(rows)]


def math_questions(n: int) -> list[dict]:
    with open(BENCH / "simple_evals_math_test.csv", newline="") as f:
        rows = [r for _, r in zip(range(n), csv.DictReader(f))]
    return [{"query_id": f"math/{i}", "query": r["Question"], "answer_format": "math",
             "reference": r["Answer"], "task": "math"} for i, r in enumerate(rows)]


def humaneval(n: int) -> list[dict]:
    with gzip.open(BENCH / "HumanEval.jsonl.gz", "rt") as f:
        rows = [json.loads(next(f)) for _ in range(n)]
    return [{"query_id": r["task_id"], "query": r["prompt"], "answer_format": "code",
             "reference": "", "tests": r["test"], "entry_point": r["entry_point"],
             "task": "humaneval", "_solution": r["prompt"] + r["canonical_solution"]}
            for r in rows]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("_")})
                            + "\n" for r in rows))
    return path


# -- the questions file ------------------------------------------------------------------------


def test_questions_of_every_recordable_format(tmp_path):
    rows = gsm8k(2) + math_questions(2) + humaneval(1) + [
        {"query": "Pick one: (A) x (B) y", "answer_format": "mc", "reference": "(b)"}]
    qs, repeats = read_questions([write_jsonl(tmp_path / "q.jsonl", rows + rows[:1])])
    assert repeats == 1 and [q.answer_format for q in qs] == ["number"] * 2 + ["math"] * 2 + [
        "code", "mc"]
    assert qs[4].entry_point == "has_close_elements" and "def check(" in qs[4].reference
    assert qs[4].prompt == ""  # the query is the prompt
    assert qs[5].query_id.startswith("records/") and qs[5].task == "records"
    assert qs[0].key == RecordQuestion("other id", qs[0].query, "t", "number", "1").key  # by text


@pytest.mark.parametrize("change, message", [
    ({"answer_format": "label"}, "cannot record format 'label': no verifier can judge"),
    ({"answer_format": "number", "reference": "many"}, "'many' is not a number answer"),
    ({"answer_format": "code", "reference": ""}, "a code question needs its tests"),
    ({"answer_format": "code", "reference": "assert f()", "entry_point": "f()"},
     "column 'entry_point': 'f()' is not a Python name"),
    ({"answer_format": "code", "reference": "assert f()", "entry_point": "f"},
     "column 'tests': with an entry_point the tests define check(candidate)"),
])
def test_questions_that_cannot_be_judged_are_refused(tmp_path, change, message):
    rows = gsm8k(2)
    rows[1] = rows[1] | change
    path = write_jsonl(tmp_path / "q.jsonl", rows)
    with pytest.raises(DataError, match=rf"q.jsonl:2, column '\w+': "):
        read_questions([path])
    with pytest.raises(DataError, match=re.escape(message)):
        read_questions([path])


def test_one_query_id_for_two_questions_is_refused(tmp_path):
    rows = gsm8k(2)
    rows[1]["query_id"] = rows[0]["query_id"]
    with pytest.raises(DataError, match=r"q.jsonl:2: query_id 'gsm8k/0' names another "
                                        r"question at .*q.jsonl:1"):
        read_questions([write_jsonl(tmp_path / "q.jsonl", rows)])


# -- the store, the estimate and the budget ---------------------------------------------------


def test_the_store_keeps_settled_answers_and_survives_a_torn_line(tmp_path):
    store = AnswerStore(tmp_path / "a.answers")
    store.put("k1", RecordedAnswer("hello", 3, 4, 0.5))
    store.put("k2", RecordedAnswer(None, error="timeout", error_code="timeout", settled=False))
    store.put("k3", RecordedAnswer(None, error="400", error_code="worker_failed"))  # settled hole
    with open(tmp_path / "a.answers", "a") as f:
        f.write('{"k": "k4", "a": {"text": "cut sh')  # a crash mid-write
    again = AnswerStore(tmp_path / "a.answers")
    assert again.get("k1") == RecordedAnswer("hello", 3, 4, 0.5) and again.get("k2") is None
    assert again.get("k3").text is None and again.torn == 1 and len(again) == 2


def test_a_failure_is_settled_only_when_a_second_call_would_repeat_it():
    bad_request = Completion("w", error="x", error_code="worker_failed",
                             attempts=[Attempt("m", "error", 0.0, 400)])
    outage = Completion("w", error="x", error_code="worker_failed",
                        attempts=[Attempt("m", "server_error", 0.0, 503)])
    fallback = Completion("w", text="hi", served_by="other")
    assert RecordedAnswer.of(bad_request, "w").settled
    assert not RecordedAnswer.of(outage, "w").settled
    a = RecordedAnswer.of(fallback, "w")
    assert a.text is None and not a.settled and a.error_code == "served_by_fallback"


def question(i: int, text: str = "What is 2+2?") -> RecordQuestion:
    return RecordQuestion(f"q{i}", f"{text} ({i})", "t", "number", "4")


def test_the_estimate_is_prompt_tokens_and_assumed_outputs_at_list_prices():
    from ray_conductor.data.pricing import count_tokens

    pricer = Pricer({"a": (2.0, 10.0), "b": (0.0, 0.0), "c": (None, None)}, output_tokens=100)
    qs = [question(i) for i in range(3)]
    todo = [(q, w, messages_for(q)) for q in qs for w in ("a", "b", "c")]
    est = pricer.estimate(todo, cached=5)
    prompt = [count_tokens(messages_for(q)[0]["content"]) + 4 for q in qs]
    assert (est.calls, est.cached, est.unpriced) == (9, 5, ["c"])
    assert est.prompt_tokens == 3 * sum(prompt) and est.output_tokens == 900
    assert est.prompt_dollars == pytest.approx(sum(prompt) * 2.0 / 1e6)
    assert est.output_dollars == pytest.approx(300 * 10.0 / 1e6)
    assert pricer.call(qs[0], "a", messages_for(qs[0])) == pytest.approx(
        (prompt[0] * 2 + 1000) / 1e6)
    check_budget(est, None)
    with pytest.raises(ConfigError, match=r"no price is known for workers \['c'\]"):
        check_budget(est, 100.0)
    est.unpriced = []
    check_budget(est, est.dollars)
    with pytest.raises(ConfigError, match=r"the estimate \$0.0032 for 9 calls is over "
                                          r"max_dollars=0.003; nothing was asked"):
        check_budget(est, 0.003)


# -- the recorder ------------------------------------------------------------------------------


class Pool:
    """Answers "#### 4" after `delay_s` at $0.01 a call; `fail` workers fail with a 503."""

    def __init__(self, delay_s: float = 0.0, fail: tuple = (), on_call=None):
        self.delay_s, self.fail, self.on_call, self.calls = delay_s, fail, on_call, []

    def workers(self):
        return [WorkerInfo("a"), WorkerInfo("b")]

    async def complete(self, worker, messages, **params):
        self.calls.append((worker, params["metadata"]["query_id"]))
        if self.on_call:
            self.on_call(len(self.calls))
        await asyncio.sleep(self.delay_s)
        if worker in self.fail:
            return Completion(worker, error="down", error_code="worker_failed",
                              attempts=[Attempt("m", "server_error", 0.0, 503)])
        return Completion(worker, text="#### 4", input_tokens=10, output_tokens=2, cost=0.01)


def key(q: RecordQuestion, w: str) -> str:
    return answer_key(q, w, "fp")


def test_stop_lets_the_calls_in_flight_finish_and_stores_them(tmp_path):
    store = AnswerStore(tmp_path / "s")
    todo = [(question(i), w) for i in range(10) for w in ("a", "b")]
    rec = None

    def stop_at(n):
        if n == 5:
            rec.stop()

    pool = Pool(delay_s=0.01, on_call=stop_at)
    rec = Recorder(pool, store, key, concurrency=3)
    stats = asyncio.run(rec.run(todo))
    # no call starts after the stop (those already handed to the loop may: at most the
    # concurrency), and nothing in flight is lost
    assert stats.stopped == "interrupted" and 5 <= stats.calls == len(pool.calls) < 5 + 3
    assert len(store) == stats.calls and stats.left == 20 - stats.calls
    rest = [(q, w) for q, w in todo if store.get(key(q, w)) is None]
    pool2 = Pool()
    stats2 = asyncio.run(Recorder(pool2, store, key, concurrency=3).run(rest))
    assert stats2.stopped is None and len(store) == 20
    assert sorted(pool.calls + pool2.calls) == sorted((w, q.query_id) for q, w in todo)


def test_the_budget_stops_before_a_call_that_could_go_over(tmp_path):
    pool = Pool()
    rec = Recorder(pool, AnswerStore(tmp_path / "s"), key, price=lambda q, w: 0.015,
                   max_dollars=0.05, concurrency=1)
    stats = asyncio.run(rec.run([(question(i), "a") for i in range(10)]))
    # spent 0.01 per call; the next call's bound 0.015 must fit: 0.04 + 0.015 > 0.05
    assert stats.stopped == "budget" and stats.calls == 4 and stats.spent == pytest.approx(0.04)


def test_passing_failures_are_kept_for_this_table_but_asked_again(tmp_path):
    store = AnswerStore(tmp_path / "s")
    rec = Recorder(Pool(fail=("b",)), store, key)
    qs = [question(i) for i in range(2)]
    stats = asyncio.run(rec.run([(q, w) for q in qs for w in ("a", "b")]))
    assert (stats.answered, stats.failed, stats.retry) == (2, 2, 2) and len(store) == 2
    rows = record_rows(qs, ["a", "b"], store, key, rec.failures)
    assert [r["response"] for r in rows] == ["#### 4", None] * 2
    assert rows[1]["error"].startswith("worker_failed: down") and rows[0]["correct"] is True
    assert record_rows(qs, ["a", "b"], store, key)[1]["error"].startswith("not asked")


def test_ctrl_c_is_a_clean_stop(tmp_path):
    from ray_conductor.record.command import _run_with_sigint

    store = AnswerStore(tmp_path / "s")

    def interrupt(n):
        if n == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as a person pressing Ctrl-C

    rec = Recorder(Pool(delay_s=0.05, on_call=interrupt), store, key, concurrency=2)
    stats = asyncio.run(_run_with_sigint(rec, [(question(i), "a") for i in range(8)]))
    assert stats.stopped == "interrupted" and len(store) == stats.calls >= 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


# -- judging and writing ----------------------------------------------------------------------


def test_code_is_judged_by_the_hardened_checkers_once(tmp_path):
    probs = humaneval(2) + [
        {"query": "Write add(a, b).", "answer_format": "code", "query_id": "mbpp/1",
         "tests": "assert add(1, 2) == 3\nassert add(0, 0) == 0"},
        {"query": "Write one().", "answer_format": "code", "query_id": "mbpp/2",
         "tests": "assert one() == 1"}]
    path = write_jsonl(tmp_path / "q.jsonl", probs)
    qs, _ = read_questions([path])
    store = AnswerStore(tmp_path / "s")
    for q in qs[:2]:  # the worker always writes problem 0's solution: right once, wrong once
        store.put(key(q, "coder"), RecordedAnswer(f"```python\n{probs[0]['_solution']}\n```"))
    store.put(key(qs[2], "coder"), RecordedAnswer("def add(a, b):\n    return a + b"))
    # an object that says it equals anything does not pass once the value crosses over
    store.put(key(qs[3], "coder"), RecordedAnswer(
        "class Yes:\n    def __eq__(self, other):\n        return True\n"
        "def one():\n    return Yes()"))
    assert judge_code(qs, ["coder"], store, key) == 4
    rows = record_rows(qs, ["coder"], store, key)
    assert [r["correct"] for r in rows] == [True, False, True, False]
    assert rows[0]["entry_point"] == "has_close_elements" and rows[2]["entry_point"] is None
    assert judge_code(qs, ["coder"], AnswerStore(tmp_path / "s"), key) == 0  # stored verdicts


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_written_records_read_back_as_a_records_pool(tmp_path, ext):
    qs = [question(i) for i in range(3)]
    store = AnswerStore(tmp_path / "s")
    for i, q in enumerate(qs):
        store.put(key(q, "a"), RecordedAnswer(f"#### {4 if i else 5}", 10, 2, 0.01))
    store.put(key(qs[0], "b"), RecordedAnswer(None, error="gone", error_code="missing_answer"))
    out = write_records(record_rows(qs, ["a", "b"], store, key), tmp_path / f"r.{ext}")
    table, rep = import_records([out])
    data = ReplayData(table, rep)
    assert table.num_rows == 6 and rep.models["b"].holes == 3
    assert [data.record(q.query_id, "a").correct for q in qs] == [False, True, True]
    assert rep.price_sources == {"a": "recorded", "b": "recorded"}
    assert "ignored columns" not in " ".join(rep.notes)
    with pytest.raises(DataError, match="already exists"):
        write_records([], out)


# -- end to end, through the worker proxies ----------------------------------------------------


def asked(fault_server) -> dict[tuple[str, str], int]:
    """(worker, question opening) -> how many times the provider was asked."""
    out: dict[tuple[str, str], int] = {}
    for r in fault_server.requests():
        q = r["last_message"].removeprefix("Original question:\n")[:60]
        out[(r["model"], q)] = out.get((r["model"], q), 0) + 1
    return out


@pytest.fixture
def workers_yaml(tmp_path, fault_server):
    fault_server.configure(model="fast", reply="Let me think. The answer is 18")
    fault_server.configure(model="careful", reply="\\boxed{18}", latency_s=0.05)
    path = tmp_path / "workers.yaml"
    path.write_text(f"""workers:
  - name: fast
    model: openai/fast
    api_base: {fault_server.url}
    input_price_per_mtok: 1.0
    output_price_per_mtok: 2.0
  - name: careful
    model: openai/careful
    api_base: {fault_server.url}
    input_price_per_mtok: 3.0
    output_price_per_mtok: 6.0
""")
    return path


@pytest.mark.slow
def test_record_end_to_end_interrupted_resumed_and_refused_over_budget(
        ray_cluster, fault_server, workers_yaml, tmp_path, monkeypatch, capsys):
    from ray_conductor.graph import stop_worker_proxies
    from ray_conductor.record import command

    monkeypatch.chdir(tmp_path)
    rows = gsm8k(4) + math_questions(2)
    write_jsonl(tmp_path / "q.jsonl", rows)
    ns = "test_record_e2e"
    base = ["questions=q.jsonl", f"workers={workers_yaml}", "out=rec.parquet", "progress=false",
            f"ray.namespace={ns}", "concurrency=2", "max_tokens=64"]

    class StopsAfterFive(command.Recorder):  # Ctrl-C after the fifth answer
        def _over_budget(self, bound):
            if self.stats.calls >= 5:
                self.stop()
            return super()._over_budget(bound)

    from ray_conductor.config import load

    cfg = lambda *extra: load(command.RecordConfig, base + list(extra))  # noqa: E731
    try:
        monkeypatch.setattr(command, "Recorder", StopsAfterFive)
        with pytest.raises(RunFailed, match=r"interrupted after \d+ calls .* nothing written "
                                            r"to rec.parquet; the \d+ answers stored in"):
            command.run_record(cfg())
        assert not (tmp_path / "rec.parquet").exists()
        first = asked(fault_server)
        assert 5 <= sum(first.values()) < 12
        monkeypatch.setattr(command, "Recorder", Recorder)
        result = command.run_record(cfg())
        counts = asked(fault_server)
        assert len(counts) == 12 and set(counts.values()) == {1}  # no question asked twice
        assert result["calls"] == 12 - sum(first.values())
        out = capsys.readouterr().out
        assert f"estimate: {12 - sum(first.values())} calls to make ({sum(first.values())} " \
               "already recorded)" in out
        data = ReplayData(*import_records([tmp_path / "rec.parquet"]))
        assert data.record("gsm8k/0", "fast").correct  # Janet's ducks: 18
        assert not data.record("gsm8k/1", "fast").correct
        assert data.record("gsm8k/0", "careful").answer == "18"
        assert data.record("gsm8k/0", "fast").cost > 0
        # nothing is overwritten, and a budget under the estimate asks nothing
        with pytest.raises(DataError, match="rec.parquet: already exists; pass overwrite=true"):
            command.run_record(cfg())
        n = len(fault_server.requests())
        with pytest.raises(ConfigError, match=r"the estimate \$0.00\d+ for 12 calls is over "
                                              r"max_dollars=0.0001; nothing was asked"):
            command.run_record(cfg("out=other.jsonl", "cache=fresh.answers",
                                   "max_dollars=0.0001"))
        assert len(fault_server.requests()) == n and not (tmp_path / "other.jsonl").exists()
        again = command.run_record(cfg("overwrite=true", "models=[careful]"))
        assert again["calls"] == 0 and len(fault_server.requests()) == n  # all from the store
    finally:
        stop_worker_proxies(ns)


@pytest.mark.slow
def test_record_with_the_local_smollm2_server_and_humaneval(ray_cluster, fault_server,
                                                            tmp_path, monkeypatch):
    """A real (tiny) model through litellm and the proxies; code judged in the sandbox."""
    from ray_conductor.config import load
    from ray_conductor.graph import stop_worker_proxies
    from ray_conductor.localllm import LocalLLM
    from ray_conductor.record.command import RecordConfig, run_record

    monkeypatch.chdir(tmp_path)
    probs = humaneval(2)
    fault_server.configure(model="coder", reply=f"```python\n{probs[0]['_solution']}\n```")
    write_jsonl(tmp_path / "q.jsonl", gsm8k(1) + probs)
    ns = "test_record_smollm2"
    with LocalLLM() as llm:
        w = llm.worker()
        (tmp_path / "w.yaml").write_text(f"""workers:
  - name: smollm2
    model: {w.model}
    api_base: {w.api_base}
    input_price_per_mtok: 0.0
    output_price_per_mtok: 0.0
    timeout_s: 300
  - name: coder
    model: openai/coder
    api_base: {fault_server.url}
    input_price_per_mtok: 0.0
    output_price_per_mtok: 0.0
""")
        try:
            res = run_record(load(RecordConfig, [
                "questions=q.jsonl", "workers=w.yaml", "out=rec.jsonl", "progress=false",
                f"ray.namespace={ns}", "max_tokens=16", "max_dollars=0", "concurrency=2"]))
        finally:
            stop_worker_proxies(ns)
    data = ReplayData(*import_records([tmp_path / "rec.jsonl"]))
    small = [data.record(q.query_id, "smollm2") for q in data.queries()]
    assert all(r.response and r.output_tokens > 0 and r.cost == 0 for r in small)
    assert data.record("HumanEval/0", "coder").correct is True
    assert data.record("HumanEval/1", "coder").correct is False
    assert res["calls"] == 6 and res["code_judged"] == 4
