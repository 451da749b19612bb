"""Issue 27: a price is not an answer, partial-information rows from served traces,
exploring on a budget, and the accounting of what learning cost. Pure or stand-in based
(no Ray): the loop runs against `online_stubs.App` with a real registry and decision log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from online_stubs import App

from ray_conductor.lite.env import LiteEnv
from ray_conductor.lite.selector import Selector, fit_selector
from ray_conductor.online.config import RetrainConfig
from ray_conductor.online.explore import allowance, changed_first, rank_cells, spread
from ray_conductor.online.loop import Retrainer
from ray_conductor.online.reroll import AnswerCache, Reroller, RerollAnswer, build_table
from ray_conductor.online.rewards import LABEL, Judge, LoggedRow, rewarded_rows
from ray_conductor.online.rows import choose
from ray_conductor.online.verdict import PairedSettings, promotion
from ray_conductor.policy.registry import PolicyRegistry
from ray_conductor.workers.base import Completion, WorkerInfo
from ray_conductor.workers.config import (
    WorkerConfig, answer_fingerprint, fingerprint, price_fingerprint)
from ray_conductor.workflow.model import ROUTER_SUBTASK


class PricedPool:
    """Workers priced per token: a call costs its tokens at the pool's current prices;
    `right` workers answer (A), the others (B)."""

    def __init__(self, prices, right=("good",)):
        self.prices, self.right, self.calls = dict(prices), set(right), 0

    def workers(self):
        return [WorkerInfo(w, "", p[0], p[1]) for w, p in self.prices.items()]

    async def complete(self, worker, messages, **params):
        self.calls += 1
        p_in, p_out = self.prices[worker]
        return Completion(worker=worker, text=f"The answer is ({'A' if worker in self.right else 'B'})",
                          cost=(1000 * p_in + 500 * p_out) / 1e6, input_tokens=1000,
                          output_tokens=500)


def row(i, served=()):
    return LoggedRow(f"r{i}", 1000.0 + i, "online", "v1", f"question {i}", None, f"k{i}",
                     "A", 0.0, 1.0, LABEL, Judge(LABEL, "mc", reference="A"), tuple(served))


# -- 27.1 a price is not an answer --------------------------------------------------------------


def test_the_answer_fingerprint_ignores_prices_and_call_settings():
    w = WorkerConfig(name="good", model="openai/gpt-4o-mini", input_price_per_mtok=1.0)
    pricier = WorkerConfig(name="good", model="openai/gpt-4o-mini", input_price_per_mtok=10.0,
                           rpm=600, timeout_s=5)
    other = WorkerConfig(name="good", model="openai/gpt-4o", input_price_per_mtok=1.0)
    assert answer_fingerprint(w) == answer_fingerprint(pricier) != answer_fingerprint(other)
    assert fingerprint(w) != fingerprint(pricier)  # a proxy is still rebuilt on any change
    assert answer_fingerprint(w, "demo") != answer_fingerprint(w, "other")  # the pool
    assert price_fingerprint(1.0, 2.0) != price_fingerprint(10.0, 2.0)


def test_a_price_change_reprices_cached_answers_and_asks_nothing(tmp_path):
    cache = AnswerCache(tmp_path / "answers.jsonl")
    prints = {"cheap": "fp-c", "good": "fp-g"}
    pool = PricedPool({"cheap": (1.0, 2.0), "good": (3.0, 4.0)})
    rows = [row(i) for i in range(5)]
    first, st = Reroller(pool, prints, cache).cells([(r, w) for r in rows for w in prints], 100)
    assert pool.calls == 10 and st.calls == 10
    assert first["k0"]["good"].cost == pytest.approx((1000 * 3 + 500 * 4) / 1e6)
    pool.prices["good"] = (30.0, 40.0)  # the provider raised its price tenfold
    again = AnswerCache(tmp_path / "answers.jsonl")  # a later process
    got, st = Reroller(pool, prints, again).cells([(r, w) for r in rows for w in prints], 100)
    assert pool.calls == 10 and st.calls == 0  # nothing asked
    assert st.repriced == 5 and st.cached == 5 and st.price_change_reasks == 0
    assert got["k0"]["good"].cost == pytest.approx(10 * first["k0"]["good"].cost)
    assert got["k0"]["good"].correct and got["k0"]["cheap"].cost == first["k0"]["cheap"].cost
    # the earlier setting (reprice off) asks again, and says why
    pool.prices["good"] = (60.0, 80.0)
    _, st = Reroller(pool, prints, again, reprice=False).cells(
        [(r, "good") for r in rows], 100)
    assert st.calls == 5 and st.price_change_reasks == 5 and pool.calls == 15


# -- 27.2 partial-information rows from served traces -------------------------------------------


WORKERS = ["w0", "w1", "w2", "w3", "w4"]


def vote_trace(triple, answers):
    steps = [{"index": k, "worker": w, "subtask": ROUTER_SUBTASK, "access": [],
              "program": False, "skipped": False, "text": f"The answer is ({answers[w]})",
              "answer": answers[w], "cost": 0.001, "input_tokens": 100,
              "output_tokens": 20, "error": None} for k, w in enumerate(triple)]
    steps.append({"index": 3, "worker": "vote", "subtask": "vote", "access": "all",
                  "program": True, "skipped": False, "text": "", "cost": 0.0})
    return json.dumps({"steps": steps, "answer": "A"})


def served_log(n):
    """`n` served votes of three: w0 is always right, w1 always wrong, w2 right on even
    questions; each vote calls three of the five workers, w0 in only a third of them."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        triple = ["w0", "w1", "w2"] if i % 3 == 0 else ["w1", "w2", "w3"] if i % 3 == 1 \
            else ["w2", "w3", "w4"]
        answers = {"w0": "A", "w1": "B", "w2": "A" if i % 2 == 0 else "C",
                   "w3": "A" if rng.random() < 0.5 else "D", "w4": "E"}
        rows.append({"request_id": f"r{i}", "status": 200, "model": "online",
                     "policy_version": "v1", "question": f"question {i}", "query_id": None,
                     "answer": "The answer is (A)", "cost": 0.003, "reward": None,
                     "label": "A", "trace": vote_trace(triple, answers),
                     "time": pd.Timestamp(1000 + i, unit="s", tz="UTC")})
    return pd.DataFrame(rows)


def test_a_votes_three_answers_are_three_judged_cells_that_train_the_selector(tmp_path):
    rows = rewarded_rows(served_log(90), cost_penalty=0.0)
    assert [c.worker for c in rows[0].served] == ["w0", "w1", "w2"]  # the vote step is not one
    pool = PricedPool({w: (1.0, 1.0) for w in WORKERS})
    rr = Reroller(pool, {w: "fp" for w in WORKERS}, AnswerCache(tmp_path / "a.jsonl"))
    cells = rr.served(rows)
    assert pool.calls == 0 and all(len(c) == 3 for c in cells.values())
    assert cells["id:" if False else rows[0].key]["w0"].correct
    assert not cells[rows[0].key]["w1"].correct
    feats = np.random.default_rng(1).normal(size=(len(rows), 384)).astype(np.float32)
    table = build_table(rows, cells, feats, WORKERS, np.ones(5))
    assert table.observed is not None and (table.observed.sum(axis=1) == 3).all()
    sel = fit_selector(table, max_calls=1)
    singles = {p.workers[0]: k for k, p in enumerate(sel.programs) if len(p.workers) == 1}
    # only observed cells count: w0 is right every time it was asked (a third of the rows),
    # not a third of the time; w2 half the time
    assert sel.base_rate[singles[0]] == pytest.approx(1.0)
    assert sel.base_rate[singles[1]] == pytest.approx(0.0)
    assert sel.base_rate[singles[2]] == pytest.approx(0.5)
    probs = sel.probs(feats)
    assert (probs[:, singles[0]] > probs[:, singles[2]]).all()
    assert (probs[:, singles[2]] > probs[:, singles[1]]).all()
    again = Selector.from_state(*sel.state())  # the observed mask is saved with it
    assert np.allclose(again.probs(feats), probs)
    # and a training episode only calls the workers observed on its row
    env = LiteEnv(table, max_calls=2, seed=0)
    obs, _ = env.reset(options={"row": 0})
    assert obs["action_mask"][:5].tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="illegal"):
        env.step(3)


def test_a_served_cell_from_before_a_config_change_does_not_count(tmp_path):
    cache = AnswerCache(tmp_path / "a.jsonl", clock=lambda: 2000.0)
    rows = rewarded_rows(served_log(3), cost_penalty=0.0)
    pool = PricedPool({w: (1.0, 1.0) for w in WORKERS})
    assert len(Reroller(pool, {w: "fp" for w in WORKERS}, cache).served(rows)[rows[0].key]) == 3
    changed = {**{w: "fp" for w in WORKERS}, "w0": "fp-new"}  # w0's model changed at t=2000
    got = Reroller(pool, changed, cache).served(rows)
    assert "w0" not in got[rows[0].key] and len(got[rows[0].key]) == 2


# -- 27.3 explore on a budget -------------------------------------------------------------------


def test_allowance_by_hand():
    assert allowance(100, 1.0, 0) == 100
    assert allowance(100, 0.5, 30) == 20
    assert allowance(7, 0.5, 3) == 0  # floor(3.5) - 3
    assert allowance(100, 1.0, 150) == 0  # never negative
    assert allowance(100, 1.0, 0, cap=40) == 40
    assert allowance(5, None, 10**6, cap=300) == 300  # the full re-roll: only the cap


def test_rank_cells_by_hand():
    # row 0: w0 chosen (0.8), unobserved; w1 at 0.75 with 3 neighbours is close;
    # w2 at 0.1 cannot change the choice. Row 1: w0 observed.
    p = np.array([[0.8, 0.75, 0.1], [0.8, 0.5, 0.5]])
    n = np.array([[100.0, 3.0, 100.0], [100.0, 100.0, 0.0]])
    observed = np.array([[False, False, False], [True, False, False]])
    ranked = rank_cells(p, n, np.zeros(3), 0.0, observed)
    # z: (0,0)=0; (0,1)=-0.05/sqrt(.1875/4)=-0.23; (1,2)=-0.3/0.5=-0.6;
    # (1,1)=-0.3/0.0497=-6.0; (0,2)=-0.7/0.0298=-23
    assert ranked == [(0, 0), (0, 1), (1, 2), (1, 1), (0, 2)]
    assert spread(ranked, 1) == [(0, 0), (1, 2), (0, 1), (1, 1), (0, 2)]


def setup_loop(tmp_path, calls_per_row, cost=0.01):
    from test_online_loop import Log, Trainer

    reg = PolicyRegistry(tmp_path / "registry")
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "q").write_text("0.5")
    reg.publish(v1, kind="lite")
    reg.promote(1)
    cfg = RetrainConfig(app="a", model="online", state_dir=str(tmp_path / "state"))
    cfg.trigger.every_rows, cfg.trigger.every_minutes = 40, None
    cfg.evaluation.min_rows, cfg.training.min_rows = 5, 5
    cfg.training.cost_penalty = 0.0
    cfg.reroll.calls_per_row = calls_per_row
    app, log, trainer = App(f"registry:{reg.root}@1"), Log(), Trainer(0.2)

    def read(_dir):
        df = log(_dir)
        df["cost"] = cost
        return df

    loop = Retrainer(cfg, app, lambda penalty, kind="lite": trainer, read=read,
                     clock=lambda: log.t)
    return loop, app, log


class Recorder:
    """Stands in for the Prometheus series: what the loop exported."""

    def __init__(self):
        self.calls, self.dollars, self.traffic, self.decisions = 0, 0.0, 0.0, 0

    def decision(self, kind, model):
        self.decisions += 1

    def spent(self, model, ledger, ratio):
        self.calls += ledger.calls
        self.dollars += ledger.dollars
        self.traffic += ledger.traffic

    def __getattr__(self, name):  # live_rewards, eval_reward, served_version, publish
        return lambda *a, **k: None


@pytest.mark.parametrize("calls_per_row", [0.5, 1.0])
def test_the_budget_is_never_exceeded_and_the_accounting_adds_up(tmp_path, calls_per_row):
    loop, app, log = setup_loop(tmp_path, calls_per_row)
    rec = Recorder()
    loop.decisions.metrics = loop.metrics = rec
    made = []
    for k in range(4):
        log.add(40, "v1", 0.5, start=40 * k)
        made += loop.round()
        rewarded = 40 * (k + 1)
        assert app.pool.calls <= calls_per_row * rewarded  # anchors, tests, watches included
    assert "trained" in [d["kind"] for d in made] and app.pool.calls > 0
    decisions = loop.decisions.read()
    # decision log = Prometheus = what the pool was asked / what the traffic log says
    assert sum(d["extra_calls"] for d in decisions) == rec.calls == app.pool.calls
    assert sum(d["extra_dollars"] for d in decisions) == pytest.approx(rec.dollars)
    assert rec.dollars == pytest.approx(0.001 * app.pool.calls)  # the stub's price per call
    assert sum(d["traffic_dollars"] for d in decisions) == pytest.approx(rec.traffic)
    # the traffic log's cost column: written into decisions, or pending for the next one
    # (rounds that only watch a promotion write none)
    pending = loop.decisions.pending
    assert pending.calls == 0  # every call is in a decision of the round that made it
    assert rec.traffic + pending.traffic == pytest.approx(0.01 * 160)
    last = decisions[-1]
    assert last["learning_cost_per_served_dollar"] == pytest.approx(rec.dollars / rec.traffic)
    assert loop.decisions.total.calls == rec.calls
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["extra_calls"] == app.pool.calls and state["rewarded_rows"] == 160


def test_the_full_reroll_stays_a_setting(tmp_path):
    loop, app, log = setup_loop(tmp_path, None)
    log.add(40, "v1", 0.5)
    assert [d["kind"] for d in loop.round()][0] == "trained"
    assert app.pool.calls == 40 * 2  # every worker, every question


@pytest.mark.parametrize("on", [True, False])
def test_a_price_change_retrains_at_the_next_round_on_repriced_answers(tmp_path, on):
    """`trigger.on_price_change`: the round after a worker's price changed trains though no
    new row came in, on the cached answers re-priced (none asked again for the price); a
    worker joining the pool is not a price change; off, the loop waits for its trigger."""
    from test_online_loop import kinds, setup

    loop, app, log, trainer, reg = setup(tmp_path, gain=0.0)
    loop.cfg.reroll.calls_per_row = 1.0
    loop.cfg.trigger.on_price_change = on
    app.pool = PricedPool({"cheap": (1.0, 1.0), "good": (3.0, 3.0)})
    app.rollout_pool = lambda: (app.pool, {w: "fp" for w in app.pool.prices})
    log.add(40, "v1", 0.5)
    assert kinds(loop.round())[0] == "trained"
    assert kinds(loop.round()) == []  # no new rows, no price change: nothing to do
    looked_up = app.rollout_pool
    app.rollout_pool = lambda: (_ for _ in ()).throw(RuntimeError("app redeploying"))
    assert kinds(loop.round()) == []  # the pool cannot be looked up: checked next round
    app.rollout_pool = looked_up
    app.pool.prices["pricey"] = (9.0, 9.0)  # joins: no price of a known worker moved
    assert kinds(loop.round()) == []
    app.pool.prices["good"] = (30.0, 30.0)
    lookups = []
    app.rollout_pool = lambda: lookups.append(1) or looked_up()
    made = loop.round()
    assert len(lookups) == 1  # the prices and the round's cells share one pool lookup
    if not on:
        assert kinds(made) == []
        return
    assert kinds(made)[0] == "trained" and made[0]["new_rows"] == 0
    assert made[0]["trigger"].startswith("the price of good changed")
    st = made[0]["reroll"]
    assert st["repriced"] > 0 and st["price_change_reasks"] == 0
    assert kinds(loop.round()) == []  # trained at the new price: not again


def served_rows(log, n, start, answer, after_cheap=False):
    """`n` rewarded rows whose served trace is `good` answering `answer` (label A), alone or
    (`after_cheap`) after `cheap` answered (B)."""
    def step(k, worker, said):
        return {"index": k, "worker": worker, "subtask": ROUTER_SUBTASK, "access": [],
                "program": False, "skipped": False, "text": f"The answer is ({said})",
                "answer": said, "cost": 0.001, "input_tokens": 100, "output_tokens": 20,
                "error": None}

    for i in range(start, start + n):
        log.t += 1.0
        steps = [step(0, "cheap", "B"), step(1, "good", answer)] if after_cheap else \
            [step(0, "good", answer)]
        log.rows.append({"request_id": f"r{len(log.rows)}", "status": 200, "model": "online",
                         "policy_version": "v1", "question": f"question {i}", "query_id": None,
                         "answer": f"The answer is ({answer})", "cost": 0.001, "reward": None,
                         "label": "A", "trace": json.dumps({"steps": steps}),
                         "time": pd.Timestamp(log.t, unit="s", tz="UTC")})


@pytest.mark.parametrize("drift_z", [4.0, None])
def test_a_worker_that_changed_without_a_config_change_is_treated_as_changed(tmp_path,
                                                                             drift_z):
    """`reroll.drift_z`: `good` was estimated right 90% of the time and its served answers
    were; then it answers wrong on every new row, its config unchanged (a provider swapped
    the model under the name). The round that sees it logs `drifted`, dates a new answer
    epoch at the first of those rows: its cached answers from before are void (asked
    again), its served answers since count, its old outcomes leave the prior (`stale`). It
    is not tested again until a policy trained after that serves. Off (null): nothing."""
    from test_online_loop import kinds, setup

    loop, app, log, trainer, reg = setup(tmp_path, gain=0.0)
    loop.cfg.reroll.calls_per_row, loop.cfg.reroll.drift_z = 1.0, drift_z

    def estimates(policy_dir, data):
        names = [w.name for w in data.workers]
        p = np.array([[0.9 if w == "good" else 0.1 for w in names]] * len(data.rows))
        return p, np.ones_like(p), np.full(len(names), 0.001), names

    trainer.estimates = estimates
    served_rows(log, 40, 0, "A")
    made = loop.round()
    assert "drifted" not in kinds(made)  # right as estimated: z = (40 - 36) / sqrt(3.6)
    if drift_z is not None:  # every z tested is on the round's record
        assert made[0]["drift_z"] == {"good": pytest.approx(2.11, abs=0.01)}
    # wrong, but only where asked after `cheap`: a later call is often asked because the
    # first answer looked doubtful, so only a plan's first call is tested
    served_rows(log, 40, 200, "B", after_cheap=True)
    assert "drifted" not in kinds(loop.round())
    probe = row(999)  # an answer of each worker cached before the change
    loop.cache.put({AnswerCache.key(probe, w, "fp"): RerollAnswer("A", True, 0.001, True, 1, 1)
                    for w in ("good", "cheap")})
    first_new = log.t + 1.0
    served_rows(log, 40, 40, "B")
    made = loop.round()
    if drift_z is None:
        assert "drifted" not in kinds(made) and loop.state.drift == {}
        return
    assert kinds(made)[:2] == ["drifted", "trained"]
    d = made[0]
    assert [w["worker"] for w in d["workers"]] == ["good"] and d["workers"][0]["z"] < -4
    assert d["workers"][0]["right"] == 0.0 and d["workers"][0]["estimated"] == 0.9
    assert made[1]["drifted"] == ["good"]
    assert loop.state.drift == {"good": [1, first_new, 1]}
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["drift"] == {"good": [1, first_new, 1]}
    cells = loop.cells()
    assert cells.rr.fingerprints["good"] == "fp#drift1" and "good" in cells.stale()
    assert cells.rr.fingerprints["cheap"] == "fp" and "cheap" not in cells.stale()
    rows = loop._rows([])
    old, new = rows[0], rows[-1]
    served = cells.rr.served([old, new])
    assert "good" not in served.get(old.key, {})  # served before the drift: another epoch's
    assert served[new.key]["good"].correct is False  # served since: counts
    calls = app.pool.calls
    _, st = cells.rr.cells([(probe, "cheap")], budget=1)
    assert st.calls == 0 and st.cached == 1  # the other worker's cached answer holds
    _, st = cells.rr.cells([(probe, "good")], budget=1)
    assert st.calls == 1 and app.pool.calls == calls + 1  # the drifted one's is void: asked
    served_rows(log, 40, 80, "B")
    assert "drifted" not in kinds(loop.round())  # v1 still serves: not tested again
    assert loop.state.drift["good"][0] == 1


# -- 25.4 pure decisions, by hand ---------------------------------------------------------------


def test_row_choice_by_hand():
    rng = np.random.default_rng(0)
    got = choose(["n1", "h1", "n2"], buffer=["o1", "o2", "o3", "o4"], held_before=["h0"],
                 known={"o1", "o2", "o3", "o4", "h0", "h1", "n1", "n2"},
                 is_held=lambda k: k.startswith("h"), buffer_rows=5, recent_rows=3,
                 replay_ratio=0.5, eval_rows=10, rng=rng, anchors=["a1", "o4"],
                 held_anchors=["ha", "n1"])
    assert got.train_new == ["n1", "n2"]
    # recent: 3 - 2 new = 1 most recent earlier (o4); replay: round(0.5 * 2) = 1 of o1..o3
    assert got.replay[0] == "o4" and len(got.replay) == 2 and got.replay[1] in {"o1", "o2", "o3"}
    assert got.held == ["h0", "h1"] and got.held_keys == ["h0", "h1"]
    assert got.buffer == ["o2", "o3", "o4", "n1", "n2"]  # newest last, at most 5
    assert got.anchors == ["a1"]  # o4 is already taken
    assert got.held_anchors == ["ha"]
    assert got.train == ["n1", "n2", *got.replay, "a1"]


def test_promotion_verdict_by_hand():
    s = PairedSettings(alpha=0.05, min_gain=0.002, min_rows=3)
    # diffs 0.1, 0.2, 0.3: mean 0.2, sd 0.1, se 0.0577; t(0.95, 2) = 2.920 -> lcb 0.0314
    v = promotion(np.zeros(3), np.array([0.1, 0.2, 0.3]), s)
    assert v.passed_by == "traffic" and v.figures["test"]["lcb"] == pytest.approx(0.0314, abs=1e-3)
    # a gain of 0.2 +- 0.3: lcb 0.2 - 2.920 * 0.3 / sqrt(3) = -0.306: rejected
    v = promotion(np.zeros(3), np.array([-0.1, 0.2, 0.5]), s)
    assert v.passed_by is None and "lower bound -0.30" in v.reason
    # the anchors pass it (lcb 0.0314 > 0.002) and the traffic gain 0.2 >= 0: by anchors
    v = promotion(np.zeros(3), np.array([-0.1, 0.2, 0.5]), s, np.zeros(3),
                  np.array([0.1, 0.2, 0.3]))
    assert v.passed_by == "anchors"
    # traffic passes, anchors significantly worse (loss 0.2 +- 0.1): guarded
    v = promotion(np.zeros(3), np.array([0.1, 0.2, 0.3]), s, np.zeros(3),
                  np.array([-0.1, -0.2, -0.3]))
    assert v.passed_by is None and v.figures["guarded"]
    # traffic short of min_rows (the budget bought two questions) cannot pass a candidate
    # however clear its gain, the anchors still can, unless those two say it is
    # significantly worse (the sign of their mean alone is a coin, not a veto)
    v = promotion(np.zeros(2), np.array([0.3, 0.3]), s)
    assert v.passed_by is None and "on only 2 questions" in v.reason
    v = promotion(np.zeros(2), np.array([0.3, 0.3]), s, np.zeros(3), np.array([0.1, 0.2, 0.3]))
    assert v.passed_by == "anchors"
    v = promotion(np.zeros(2), np.array([-0.3, 0.1]), s, np.zeros(3), np.array([0.1, 0.2, 0.3]))
    assert v.passed_by == "anchors"  # mean -0.1 on two questions: no evidence
    v = promotion(np.zeros(2), np.array([-0.3, -0.31]), s, np.zeros(3),
                  np.array([0.1, 0.2, 0.3]))
    assert v.passed_by is None and "significantly worse on the held-back traffic" in v.reason
    # with min_rows or more scored, a negative mean gain there still vetoes the anchors
    many = np.tile([-0.3, 0.1], s.min_rows)
    v = promotion(np.zeros(len(many)), many, s, np.zeros(3), np.array([0.1, 0.2, 0.3]))
    assert v.passed_by is None and "traffic gain is negative" in v.reason
    # none scored at all: the anchors decide alone
    v = promotion(np.zeros(0), np.zeros(0), s, np.zeros(3), np.array([0.1, 0.2, 0.3]))
    assert v.passed_by == "anchors" and v.figures["n"] == 0
    assert v.figures["serving_mean"] is None and "no held-back traffic" in v.reason
    from ray_conductor.online.command import describe

    assert "no held-back question scored" in describe(
        {"kind": "evaluated", "model": "m", "version": "v1", **v.figures})


def test_partial_rows_update_the_prior_a_price_rise_shows_and_stale_outcomes_drop():
    from ray_conductor.lite.selector import update_selector
    from ray_conductor.lite.table import LiteTable

    rng = np.random.default_rng(0)
    q = 400
    feats = rng.normal(size=(q, 16)).astype(np.float32)
    correct = np.zeros((q, 3), bool)
    correct[:, 0], correct[:, 1] = True, rng.random(q) < 0.5
    cost = np.tile([0.01, 0.001, 0.0001], (q, 1))
    answers = np.where(correct, 0, 1).astype(np.int32)
    full = LiteTable([str(i) for i in range(q)], feats, answers, correct, cost,
                     np.ones((q, 3), bool), ["a", "b", "c"], np.ones(3), True)
    old = fit_selector(full, max_calls=1, cost_penalty=30)
    seen = np.zeros((60, 3), bool)
    seen[:50, 0], seen[50:, 1] = True, True  # a served 50 times at 10x its price, b 10 times
    new = LiteTable([f"n{i}" for i in range(60)], feats[:60], answers[:60], ~correct[:60],
                    cost[:60] * [10, 1, 1], np.ones((60, 3), bool), ["a", "b", "c"],
                    np.ones(3), True, observed=seen)
    up = update_selector(old, new, stale=set())
    assert up.mean_cost.tolist() == pytest.approx([0.1, 0.001, 0.0001])  # a price is seen
    assert up.base_rate[0] == pytest.approx(400 / 450)  # 400 old rights, 50 new wrongs
    # a's answers changed (its model): its old outcomes no longer count, only the 50 new
    assert update_selector(old, new, stale={0}).base_rate[0] == pytest.approx(0.0)


def test_a_trainer_fetches_cells_within_the_budget_and_every_call_is_accounted(tmp_path):
    from ray_conductor.online.cells import CellBroker
    from ray_conductor.online.config import RerollConfig
    from ray_conductor.online.decisions import DecisionLog

    pool = PricedPool({"cheap": (1.0, 1.0), "good": (1.0, 1.0)})
    rr = Reroller(pool, {"cheap": "c", "good": "g"}, AnswerCache(tmp_path / "a.jsonl"))
    log = DecisionLog(tmp_path / "decisions.jsonl")
    broker = CellBroker(rr, list(pool.workers()), RerollConfig(calls_per_row=0.5), log,
                        rewarded_rows=7)  # floor(3.5) = 3 calls earned
    rows = [row(i) for i in range(5)]
    got = broker.fetch([(r, "good") for r in rows])
    assert sum(len(c) for c in got.values()) == 3 and pool.calls == 3
    assert broker.fetch([(rows[4], "cheap")]) == {} and pool.calls == 3  # spent
    assert broker.fetch([(rows[0], "good")])["k0"]["good"].correct  # cached: free
    assert log.append("trained", "m")["extra_calls"] == 3


def test_needed_names_the_unobserved_cells_a_policy_would_read(tmp_path):
    """Scoring is exact or not done: on rows where nothing is observed, the shipped policy's
    rollout names its first call (chosen from the question alone); on complete rows,
    nothing."""
    from dataclasses import replace

    from ray_conductor.data.pools import load_pool
    from ray_conductor.lite import LiteConductor, default_policy_dir
    from ray_conductor.lite.train import pool_table
    from ray_conductor.online.config import TrainingConfig
    from ray_conductor.online.trainer import LiteTrainer

    policy = LiteConductor.load(default_policy_dir())
    table = pool_table(load_pool("demo"), "test", policy.featurizer).take(np.arange(30))
    observed = np.ones((30, len(table.workers)), bool)
    observed[:10] = False
    partial = replace(table, observed=observed)

    class OnTable(LiteTrainer):  # the rows, already a table
        def table(self, conductor, data, keep_empty=False):
            return partial

    need = OnTable(TrainingConfig(), cost_penalty=30.0).needed(default_policy_dir(), None)
    first = policy.rollout(table.reorder(policy.workers)).workflows
    assert set(need) == set(table.query_ids[:10])
    for i in range(10):
        assert need[table.query_ids[i]][0] == policy.workers[first[i][0]]


def test_estimated_cells_fill_only_what_is_unobserved():
    from dataclasses import replace
    from types import SimpleNamespace

    from lite_toy import WORKERS as TOY, toy_table

    from ray_conductor.online.config import TrainingConfig
    from ray_conductor.online.trainer import LiteTrainer

    table = toy_table(200)
    prior = fit_selector(table, max_calls=1, cost_penalty=30)
    seen = np.zeros((200, 3), bool)
    seen[:, 0] = True  # only `cheap` observed
    part = replace(table, observed=seen)
    got = LiteTrainer(TrainingConfig(), 30.0)._imputed(
        SimpleNamespace(prior=prior, workers=list(TOY)), part)
    assert got.observed is None and got.responded.all()
    assert (got.correct[:, 0] == table.correct[:, 0]).all()  # observed cells as they were
    assert got.cost[:, 1:] == pytest.approx(table.cost[:, 1:])  # the prior's mean cost
    assert abs(got.correct[:, 2].mean() - 0.9) < 0.1  # pricey: right ~90% by its estimate
    both = got.correct[:, 0] & got.correct[:, 2]  # two right answers agree
    assert (got.answers[both, 0] == got.answers[both, 2]).all()


def test_a_cascade_ending_in_a_stale_worker_counts_only_where_that_worker_was_asked():
    """Scenario (c): `pricey`'s answers changed; the new rows observe `cheap` and `mid`
    everywhere (recorded anchors) and `pricey` on 40 rows. A cascade (cheap, mid, pricey)
    is answered without `pricey` where the first two agree: counting those rows and not the
    ones where they disagree (pricey unasked) would estimate it on its easy rows only; it
    counts on the 40 rows where every cell it may read is observed, and its estimate there
    is its outcome on them."""
    from dataclasses import replace

    from lite_toy import toy_table

    from ray_conductor.lite.selector import update_selector

    old = fit_selector(toy_table(400), max_calls=3, cost_penalty=30)
    t = toy_table(200, seed=1)
    wrong = np.where(t.answers[:, 2] == 0, 1, t.answers[:, 2])  # pricey now always wrong
    t = replace(t, correct=t.correct & [True, True, False],
                answers=np.column_stack([t.answers[:, :2], wrong]).astype(np.int32))
    seen = np.ones((200, 3), bool)
    seen[40:, 2] = False
    t = replace(t, observed=seen)
    up = update_selector(old, t, stale={2})
    new = up.seen[len(old.keys):]
    agree = (t.answers[:, 0] == t.answers[:, 1])
    for j, p in enumerate(up.programs):
        if 2 in p.workers:
            assert new[:, j].sum() == 40 and not up.seen[:len(old.keys), j].any()
        elif len(p.workers) == 1:
            assert new[:, j].all()
    j = [p.workers for p in up.programs].index((0, 1, 2))
    assert agree[:40].any() and (~agree[:40]).any()  # both kinds among the asked rows
    from ray_conductor.lite.programs import outcomes

    assert up.base_rate[j] == pytest.approx(outcomes(t, up.programs)[0][:40, j].mean())


def test_changed_first_by_hand():
    ranked = [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0)]
    assert changed_first(ranked, ["a", "b"], set()) == spread(ranked, 1)
    # b's cells first (one per row first), then the rest one per row, then what is left
    assert changed_first(ranked, ["a", "b"], {"b"}) == [(0, 1), (1, 1), (0, 0), (1, 0), (2, 0)]


def test_a_changed_workers_cells_are_explored_first_within_the_budget(tmp_path):
    """`good`'s answers changed (a new answer fingerprint after the first): the explore
    share of the allowance goes to its cells, one per row, before anyone else's; the
    budget holds and every call is accounted."""
    from ray_conductor.online.cells import CellBroker
    from ray_conductor.online.config import RerollConfig
    from ray_conductor.online.decisions import DecisionLog

    pool = PricedPool({"cheap": (1.0, 1.0), "good": (1.0, 1.0)})
    cache = AnswerCache(tmp_path / "a.jsonl", clock=lambda: 5000.0)
    assert cache.since("good", "g1") == 0.0  # the first config the loop saw
    rr = Reroller(pool, {"cheap": "c", "good": "g2"}, cache)
    log = DecisionLog(tmp_path / "decisions.jsonl")
    broker = CellBroker(rr, list(pool.workers()), RerollConfig(calls_per_row=1.0), log,
                        rewarded_rows=8)  # 8 calls earned, half of them to explore
    assert broker.stale() == {"good"}
    rows = [row(i) for i in range(6)]
    answers, stats = broker.explore(object(), Path("."), rows, [], 30.0)
    asked = sorted((k, w) for k, ws in answers.items() for w in ws)
    assert asked == [(f"k{i}", "good") for i in range(4)] and pool.calls == stats.calls == 4
    assert log.append("trained", "m")["extra_calls"] == 4
