"""The online loop's pure core, without Ray: triggers, the paired and the drop test (hand
numbers, and scipy's own tests as a second opinion), rewards read from traffic rows, the
held-back slice, the decision log, the answer cache, counterfactual tables and the state."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from ray_conductor.online.decisions import DecisionLog
from ray_conductor.online.reroll import RerollAnswer, AnswerCache, build_table
from ray_conductor.online.rewards import (
    Judge,
    LoggedRow,
    canonical,
    held_back,
    query_key,
    rewarded_rows,
)
from ray_conductor.online.state import LoopState, Watch, remember
from ray_conductor.online.stats import drop_test, paired_test
from ray_conductor.online.triggers import Trigger

# -- triggers ------------------------------------------------------------------------------


def test_trigger_fires_on_rows_or_on_time_with_enough_rows():
    t = Trigger(every_rows=100, every_minutes=30, min_rows=10)
    assert t.why(99, 5.0) is None
    assert "100 new rewarded rows" in t.why(100, 0.0)
    assert t.why(9, 45.0) is None  # time is up, but 9 rows are too few to learn from
    assert "45.0 minutes" in t.why(10, 45.0)
    assert t.why(50, None) is None  # never trained and no clock: rows only
    assert Trigger(every_rows=None, every_minutes=1, min_rows=1).why(10**6, 0.5) is None
    with pytest.raises(ValueError):
        Trigger(every_rows=None, every_minutes=None)


# -- the paired test -----------------------------------------------------------------------


def test_paired_t_by_hand():
    # diffs 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5); t(0.95, 4) = 2.131847
    r = paired_test([1, 2, 3, 4, 5], alpha=0.05)
    assert r.n == 5 and r.mean == 3.0 and r.sd == pytest.approx(math.sqrt(2.5))
    assert r.lcb == pytest.approx(3 - 2.131847 * math.sqrt(0.5), abs=1e-5)  # 1.492557
    assert r.passed
    # mostly ties, two wins: mean 0.2, sd 0.421637, t(0.95, 9) = 1.833113 -> lcb -0.04442
    r = paired_test([0] * 8 + [1, 1])
    assert r.lcb == pytest.approx(0.2 - 1.833113 * 0.421637 / math.sqrt(10), abs=1e-5)
    assert r.lcb < 0 and not r.passed


def test_paired_t_agrees_with_scipy_and_respects_min_gain():
    from scipy import stats

    d = np.random.default_rng(1).normal(0.05, 0.3, size=80)
    r = paired_test(d, alpha=0.1, min_gain=0.01)
    ref = stats.ttest_1samp(d, 0.01, alternative="greater")
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert r.passed == (ref.pvalue < 0.1)
    low = stats.ttest_1samp(d, 0.0).confidence_interval(0.8).low  # two-sided 80% = one 90%
    assert r.lcb == pytest.approx(low, rel=1e-9)
    assert not paired_test(d, min_gain=1.0).passed


def test_paired_edge_cases():
    assert not paired_test([]).passed and not paired_test([5.0]).passed
    same = paired_test([0.25] * 10)  # every question gained exactly 0.25
    assert same.lcb == 0.25 and same.p_value == 0.0 and same.passed
    assert not paired_test([0.0] * 30).passed  # identical policies never pass
    with pytest.raises(ValueError):
        paired_test([1, 2], method="magic")


def test_bootstrap_bound_is_close_to_the_t_bound_and_seeded():
    d = np.random.default_rng(2).normal(0.1, 0.4, size=200)
    t, b = paired_test(d), paired_test(d, method="bootstrap", samples=4000, seed=3)
    assert b.lcb == pytest.approx(t.lcb, abs=0.01)
    assert b.passed == t.passed
    assert paired_test(d, method="bootstrap", seed=3).lcb == \
        paired_test(d, method="bootstrap", seed=3).lcb


# -- the drop test -------------------------------------------------------------------------


def test_drop_test_by_hand_and_against_scipy():
    from scipy import stats

    new, old = [0, 0, 1, 0, 0, 0], [1, 1, 1, 0, 1, 1, 1, 1]
    r = drop_test(new, old, alpha=0.05)
    # means 1/6 and 7/8; variances 1/6 and 1/8: se = sqrt(1/36 + 1/64)
    assert r.mean_new == pytest.approx(1 / 6) and r.mean_old == pytest.approx(7 / 8)
    assert r.t == pytest.approx((1 / 6 - 7 / 8) / math.sqrt(1 / 36 + 1 / 64))
    ref = stats.ttest_ind(new, old, equal_var=False, alternative="less")
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9) and r.dropped
    assert not drop_test(old, new).dropped  # better is never a drop
    assert not drop_test([0.7, 0.6, 0.8], [0.75, 0.65, 0.7]).dropped  # noise
    assert not drop_test([0.5, 0.4, 0.45], [0.55, 0.5, 0.6], margin=0.5).dropped
    assert not drop_test([0.0], [1.0, 1.0]).dropped  # too few to say
    assert drop_test([0.0] * 5, [1.0] * 5).dropped  # no variance: the means decide


# -- rewards from logged rows --------------------------------------------------------------


def _log(**rows):
    base = {"status": 200, "model": "online", "policy_version": "v1", "cost": 0.01,
            "query_id": None, "reward": np.nan, "label": None,
            "time": pd.Timestamp("2025-01-31T10:00:00Z")}
    return pd.DataFrame([{**base, "request_id": rid, **r} for rid, r in rows.items()])


def test_reward_order_feedback_then_label_then_nothing():
    df = _log(a={"question": "Q1", "answer": "... The answer is (B)", "reward": 0.3},
              b={"question": "Q2", "answer": "The answer is (C)", "label": "C"},
              c={"question": "Q3", "answer": "The answer is (A)", "label": "(b)"},
              d={"question": "Q4", "answer": "The answer is (A)"},
              e={"question": "Q5", "answer": "The answer is (A)", "status": 502, "label": "A"},
              f={"question": "Q6", "answer": "The answer is (A)", "model": "other",
                 "label": "A"})
    rows = {r.request_id: r for r in rewarded_rows(df, cost_penalty=10.0, models=["online"])}
    assert set(rows) == {"a", "b", "c"}  # d: no reward; e: failed; f: another model
    assert rows["a"].reward == 0.3 and rows["a"].source == "feedback"
    assert rows["a"].judge is None  # 0.3 < 0.5: the served answer was not confirmed
    assert rows["b"].reward == pytest.approx(1 - 10 * 0.01) and rows["b"].source == "label"
    assert rows["c"].reward == pytest.approx(0 - 0.1)
    assert rows["b"].judge.reference == "C" and rows["c"].judge.reference == "B"
    assert rows["b"].key == query_key(None, "Q2") and rows["b"].key.startswith("text:")
    every = rewarded_rows(df, cost_penalty=10.0, models=None)
    assert {r.request_id for r in every} == {"a", "b", "c", "f"}


def test_a_confirming_reward_makes_the_served_answer_the_label():
    df = _log(a={"question": "Q", "answer": "so the answer is (D)", "reward": 1.0})
    (row,) = rewarded_rows(df, cost_penalty=0.0)
    assert row.judge.kind == "reward" and row.judge.reference == "D"
    assert row.judge("Thinking... The answer is (D)") and not row.judge("The answer is (A)")
    assert not row.judge("") and not row.judge(None)


def test_the_verifier_judges_recorded_questions_by_their_reference():
    from ray_conductor.data.pools import load_pool

    data = load_pool("demo")
    q = data.queries("test")[0]
    wrong = next(x for x in "ABCDEFGHIJ" if x != q.reference)
    df = _log(a={"question": q.query, "answer": f"The answer is ({q.reference})"},
              b={"question": q.query, "answer": f"The answer is ({wrong})",
                 "query_id": q.query_id},
              c={"question": "not recorded", "answer": "The answer is (A)"})
    rows = {r.request_id: r for r in rewarded_rows(df, cost_penalty=1.0, verifier=data)}
    assert set(rows) == {"a", "b"}  # found by its text, and by its id
    assert rows["a"].query_id == q.query_id == rows["b"].query_id
    assert rows["a"].source == "verifier" and rows["a"].reward == pytest.approx(0.99)
    assert rows["b"].reward == pytest.approx(-0.01)
    assert rows["a"].key == rows["b"].key == f"id:{q.query_id}"
    assert rows["a"].judge(f"The answer is ({q.reference})", data)


def test_canonical_labels_and_answers():
    assert canonical("b", "mc") == "B" and canonical("(C)", "mc") == "C"
    assert canonical("The answer is (E).", "mc") == "E"
    assert canonical("no letter here", "mc", whole=False) is None
    assert canonical("  Hello   World ", "label") == "hello world"


def test_held_back_slice_is_stable_and_about_its_share():
    keys = [f"id:q{i}" for i in range(4000)]
    held = [k for k in keys if held_back(k, 0.25)]
    assert 0.22 < len(held) / len(keys) < 0.28
    assert held == [k for k in keys if held_back(k, 0.25)]
    assert set(held) <= {k for k in keys if held_back(k, 0.5)}


# -- decisions, cache, tables, state --------------------------------------------------------


def test_decision_log_appends_json_lines_with_figures(tmp_path):
    log = DecisionLog(tmp_path / "d" / "decisions.jsonl")
    log.append("evaluated", "online", version="v1", n=np.int64(40),
               test={"lcb": np.float64(0.02), "p": float("nan")})
    log.append("promoted", "online", version="v2", previous="v1")
    rows = log.read()
    assert [r["kind"] for r in rows] == ["evaluated", "promoted"]
    assert rows[0]["n"] == 40 and rows[0]["test"] == {"lcb": 0.02, "p": None}
    assert all(json.loads(line) for line in log.path.read_text().splitlines())
    with pytest.raises(ValueError, match="unknown decision kind"):
        log.append("celebrated", "online")


def _row(key, label="A"):
    return LoggedRow(key, 0.0, "m", "v1", f"question {key}", None, key, "", 0.0, 1.0,
                     "label", Judge("label", "mc", reference=label))


def test_answer_cache_survives_a_restart_and_a_torn_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    cache = AnswerCache(path)
    k = AnswerCache.key(_row("q1"), "w1", "fp1")
    cache.put({k: RerollAnswer("A", True, 0.5, True)})
    with open(path, "a") as f:
        f.write('{"k": "half')
    again = AnswerCache(path)
    assert again.get(k) == RerollAnswer("A", True, 0.5, True) and len(again) == 1
    assert again.get(AnswerCache.key(_row("q1"), "w1", "fp2")) is None  # another config
    assert AnswerCache.key(_row("q1", "B"), "w1", "fp1") != k  # another judgement


def test_an_answer_older_than_the_age_limit_is_asked_again_and_the_file_compacts(tmp_path):
    """`reroll.max_age_hours`: a provider may change the model under a name; an answer past
    the age limit is a miss (counted), a fresh one replaces it, ages survive a restart, rows
    from before ages were kept count as old, and a file of mostly replaced rows compacts."""
    path, now = tmp_path / "answers.jsonl", [100.0]
    cache = AnswerCache(path, max_age_s=50.0, clock=lambda: now[0])
    k = AnswerCache.key(_row("q1"), "w1", "fp1")
    cache.put({k: RerollAnswer("A", True, 0.5, True)})
    now[0] = 140.0
    assert cache.get(k) == RerollAnswer("A", True, 0.5, True) and cache.expired == 0
    now[0] = 151.0
    assert cache.get(k) is None and cache.expired == 1
    assert AnswerCache(path).get(k) is not None  # no age limit: kept for ever
    for t in range(152, 158):
        now[0] = float(t)
        cache.put({k: RerollAnswer("B", False, 0.5, True)})
    assert len(path.read_text().splitlines()) == 7
    again = AnswerCache(path, max_age_s=50.0, clock=lambda: 200.0)
    assert again.get(k) == RerollAnswer("B", False, 0.5, True)  # the last row, aged from t=157
    assert len(path.read_text().splitlines()) == 1  # compacted on load
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"k": k, "a": {"answer": "A", "correct": True, "cost": 0.5,
                                             "responded": True}}) + "\n")
    assert AnswerCache(old, max_age_s=1e9, clock=lambda: 2e9).get(k) is None


def test_counterfactual_table_codes_votes_and_keeps_complete_rows():
    rows = [_row("q1"), _row("q2"), _row("q3")]
    answers = {"q1": {"a": RerollAnswer("A", True, 0.1, True), "b": RerollAnswer("C", False, 1.0, True)},
               "q3": {"a": RerollAnswer(None, False, 0.0, False), "b": RerollAnswer("B", False, 2.0, True)}}
    feats = np.arange(6, dtype=np.float32).reshape(3, 2)
    t = build_table(rows, answers, feats, ["a", "b"], [1.0, 5.0])
    assert t.query_ids == ["q1", "q3"] and t.features.tolist() == [[0, 1], [4, 5]]
    assert t.answers.tolist() == [[0, 1], [-1, 0]] and t.comparable
    assert t.correct.tolist() == [[True, False], [False, False]]
    assert t.responded.tolist() == [[True, True], [False, True]]
    assert t.cost.tolist() == [[0.1, 1.0], [0.0, 2.0]]


def test_state_round_trip_and_buffer_order(tmp_path):
    s = LoopState(consumed=["r1"], buffer=["a", "b"], cost_penalty=7.0,
                  watch=Watch(3, "v3", 2, "v2", 123.0))
    s.save(tmp_path)
    back = LoopState.load(tmp_path)
    assert back == s and isinstance(back.watch, Watch)
    assert remember(["a", "b", "c"], ["b", "d", "d"], 3) == ["c", "b", "d"]
    assert remember(["a"], ["b"], 0) == []
    (tmp_path / "state.json").write_text("{not json")
    from ray_conductor.errors import ConfigError

    with pytest.raises(ConfigError, match="damaged online state"):
        LoopState.load(tmp_path)


def test_a_served_lite_policy_loads_its_encoder_when_it_is_loaded():
    """Regression: the first requests to a freshly swapped-in lite policy each imported
    transformers in their own thread, and one failed (ImportError: cannot import name
    'AutoModel'), answered 503. Loading the policy now loads the encoder."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.features import embed
    from ray_conductor.serve.policies import LoadContext, load_policy

    embed._load.cache_clear()
    policy = load_policy("lite:default", LoadContext(load_pool("demo").worker_infos()))
    assert policy.interactive and embed._load.cache_info().currsize == 1


def test_retrain_refuses_bad_options_in_one_line_before_touching_ray(capsys):
    from ray_conductor.cli import main

    assert main(["retrain", "evaluation.alpha=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evaluation.alpha" in err[0]
    assert main(["retrain", "mode=elsewhere"]) == 2
    assert "mode" in capsys.readouterr().err


def test_anchor_rows_are_a_stable_sample_outside_the_held_back_slice():
    from ray_conductor.data.pools import load_pool
    from ray_conductor.online.anchor import Verifiers, anchor_rows, combined

    data = load_pool("demo")
    small, big = anchor_rows(data, "train", 30, 0.3), anchor_rows(data, "train", 60, 0.3)
    assert len(small) == 30 and len(big) == 60
    assert [r.key for r in big[:30]] == [r.key for r in small]  # growing keeps the first
    assert not any(held_back(r.key, 0.3) for r in big)
    test_ids = {q.query_id for q in data.queries("test")}
    assert not test_ids & {r.query_id for r in big}
    q = data.find(small[0].query_id)
    right = f"The answer is ({q.reference})"
    assert small[0].judge(right, combined(None, data)) is True
    chain = Verifiers([None, data])
    assert chain.find(q.query_id).query_id == q.query_id and chain.find("nope") is None
    with pytest.raises(ValueError, match="no verifier knows"):
        chain.judge("nope", right)


def test_a_failure_a_second_call_would_repeat_is_settled_and_a_passing_one_is_not():
    """Regression: a replay pool's recorded hole reaches the reroller through a proxy as
    `worker_failed` after a 404; it was taken for a passing fault, so its question was asked
    again every round and never trained on (231 of 1,612 anchor questions in a shift run)."""
    from ray_conductor.online.reroll import permanent
    from ray_conductor.workers.base import Attempt, Completion

    def failed(code, *attempts):
        return Completion(worker="w", error="x", error_code=code, attempts=list(attempts))

    assert permanent(failed("missing_answer"))
    assert permanent(failed("worker_failed", Attempt("replay/w", "error", 0.0, 404)))
    assert permanent(failed("worker_failed", Attempt("m", "error", 0.0, 400)))
    for transient in (failed("worker_failed", Attempt("m", "error", 0.0, 401)),
                      failed("worker_failed", Attempt("m", "timeout", 0.0, None)),
                      failed("worker_failed", Attempt("m", "error", 0.0, 404),
                             Attempt("m", "server_error", 0.0, 503)),
                      failed("proxy_unreachable"), failed("circuit_open")):
        assert not permanent(transient)
