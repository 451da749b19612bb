"""Issue 27.5: the LM tier's plans over budgeted cells. A sampled plan whose step needs an
unobserved (question, worker) cell gets it through the round's `CellBroker`, within the call
budget, and is scored; out of budget it is not scored: it leaves its GRPO group and is never
trained on as a failure. Greedy scoring names the cells it needs (`needed`) so the paired
test scores exactly. Plans are written by a test engine (byte tokens, as `ScriptedEngine`);
the live pool is a stand-in that counts its calls; one test runs a loop round with the tiny
model's learner."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pandas as pd
import pytest
from online_stubs import App

from ray_conductor.data.splits import unit_hash
from ray_conductor.online.cells import CellBroker
from ray_conductor.online.config import RerollConfig, RetrainConfig
from ray_conductor.online.decisions import DecisionLog
from ray_conductor.online.lm_trainer import (
    UNOBSERVED, CounterfactualPool, LMTrainer, as_query, paired_gain, trainable, worth_asking)
from ray_conductor.online.reroll import AnswerCache, Reroller, RerollAnswer
from ray_conductor.online.rewards import LABEL, Judge, LoggedRow
from ray_conductor.online.trainer import Counterfactual
from ray_conductor.policy.conductor import Conductor, ConductorConfig
from ray_conductor.policy.engine import Sample
from ray_conductor.rl.rewards import RewardConfig
from ray_conductor.rl.rollout import RolloutWorker
from ray_conductor.rl.types import Trajectory
from ray_conductor.workers.base import Completion, WorkerInfo
from ray_conductor.workflow.executor import StepTrace, Trace
from ray_conductor.workflow.model import ROUTER_SUBTASK

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def plan(*workers: str, access: str = "") -> str:
    acc = access or "[" + ", ".join("[]" for _ in workers) + "]"
    return (f"model_id = {list(workers)}\nsubtasks = {['Solve it.'] * len(workers)}\n"
            f"access_list = {acc}")


GOOD, CHEAP = plan("good"), plan("cheap")
CASCADE = plan("a1", "a2", "judge", access="[[], [], 'disagree']")


class _Bytes:
    eos_token_id = 0

    def __call__(self, text, **_):
        return {"input_ids": list(text.encode())}


class PlanEngine:
    """Writes `plans[i % len(plans)]` for the i-th prompt of a sampled batch (a GRPO group
    of G sees the first G plans) and `greedy` at temperature 0; byte tokens."""

    def __init__(self, plans, greedy=None):
        self.plans, self.greedy = list(plans), greedy or plans[0]
        self.tokenizer = _Bytes()

    def generate(self, prompts, n, temperature, max_tokens, top_p=1.0, seed=None,
                 constraints=None):
        out = []
        for i, p in enumerate(prompts):
            text = self.plans[i % len(self.plans)] if temperature > 0 else self.greedy
            ids = list(text.encode()) + [0]
            out.append([Sample(list(str(p).encode()[:64]), ids, text, [0.0] * len(ids), "stop")
                        for _ in range(n)])
        return out

    def get_state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        pass


class Letters:
    """A live pool whose workers each answer one letter, $0.001 a call; counts its calls."""

    def __init__(self, letters):
        self.letters, self.calls = dict(letters), 0

    def workers(self):
        return [WorkerInfo(w, "", 1.0, 1.0) for w in self.letters]

    async def complete(self, worker, messages, **params):
        self.calls += 1
        return Completion(worker=worker, text=f"The answer is ({self.letters[worker]})",
                          cost=0.001, input_tokens=500, output_tokens=500)


def row(i: int) -> LoggedRow:
    return LoggedRow(f"r{i}", 1000.0 + i, "online", "v1", f"question {i}", None, f"k{i}",
                     "The answer is (A)", 0.0, 1.0, LABEL, Judge(LABEL, "mc", reference="A"))


def broker(tmp_path, pool, calls_per_row, rewarded_rows):
    rr = Reroller(pool, {w: "fp" for w in pool.letters}, AnswerCache(tmp_path / "a.jsonl"))
    log = DecisionLog(tmp_path / "decisions.jsonl")
    return CellBroker(rr, list(pool.workers()), RerollConfig(calls_per_row=calls_per_row),
                      log, rewarded_rows)


def conductor(engine):
    return Conductor(engine, ConductorConfig(engine="scripted", worker_ids="name",
                                             few_shot=False, max_resamples=0, max_steps=3))


TALLY = ("fetches", "cells_fetched", "fetch_calls", "fetch_dollars")


def sampled(tmp_path, calls_per_row, rewarded_rows, plans=(GOOD, CHEAP), answers=None,
            letters=None, n=2):
    """Two questions, a group of two scripted plans each, scored over `answers` (default:
    only `good`'s answer to k0 observed) with the broker's fetches."""
    pool = Letters(letters or {"cheap": "B", "good": "A"})
    rows = [row(i) for i in range(n)]
    answers = {"k0": {"good": RerollAnswer("A", True, 0.002, True)}} if answers is None \
        else answers
    data = Counterfactual(rows, answers, list(pool.workers()))
    trainer = LMTrainer(RetrainConfig().training.lm, cost_penalty=10.0)
    trainer.cells = broker(tmp_path, pool, calls_per_row, rewarded_rows)
    cf = CounterfactualPool(data)
    reward_cfg = RewardConfig(name="paper", parse_fail=-0.5, wrong=0.0, correct=1.0,
                              cost_penalty_per_dollar=10.0)
    worker = RolloutWorker(ConductorConfig(engine="scripted", worker_ids="name",
                                           few_shot=False, max_resamples=0, max_steps=3),
                           reward_cfg, cf, cf.judge, engine=PlanEngine(plans))
    qs = [as_query(r) for r in rows]
    trajs = asyncio.run(worker.rollout(qs, 2, iteration=1, temperature=1.0, seed=0))
    tally = dict.fromkeys(TALLY, 0)
    scored = trainer._score_samples(worker, trajs, qs, data, cf, reward_cfg, tally)
    return scored, trajs, pool, trainer.cells, tally


# -- by hand ---------------------------------------------------------------------------------


def traj(group, reward=0.0):
    return Trajectory([1], [2], None, reward, group)


def test_unscored_plans_leave_their_group_and_a_group_needs_two():
    a1, a2, b1, c1, c2, c3 = (traj("a"), traj("a"), traj("b"), traj("c"), traj("c"),
                              traj("c"))
    got = trainable([a1, a2, b1, None, c1, None, c2, c3])
    assert got == [a1, a2, c1, c2, c3]  # b keeps one scored plan: nothing to compare with
    assert trainable([None, b1]) == [] and trainable([]) == []


def test_the_best_iteration_is_chosen_on_the_questions_both_score():
    old = np.array([1.0, np.nan, 0.0, 0.0])
    new = np.array([1.0, 5.0, 0.5, np.nan])  # 5.0 is on a question old could not score
    assert paired_gain(new, old) == pytest.approx(0.25)  # (0 + 0.5) / 2
    assert np.isnan(paired_gain(np.array([np.nan, 1.0]), np.array([1.0, np.nan])))


def step(i, worker, access=(), error=None, when=None, program=False):
    return StepTrace(i, worker, "", list(access), error_code=error, when=when,
                     program=program)


def test_a_condition_that_sees_a_missing_cell_is_not_asked_for_yet():
    # a cascade: two cheap answers, a third worker if they disagree; both cheap cells are
    # missing, so whether the third runs is not known: its cell waits for the next pass
    t = Trace("q", [step(0, "a1", error=UNOBSERVED), step(1, "a2"),
                    step(2, "judge", (0, 1), UNOBSERVED, when="disagree")])
    asked = [("k", "a1"), ("k", "judge")]
    assert worth_asking(asked, t) == [("k", "a1")]
    # its inputs known: the condition held, its cell is worth a call
    t.steps[0].error_code = None
    assert worth_asking([("k", "judge")], t) == [("k", "judge")]
    # a vote over a missing cell, then a condition on the vote: in doubt too
    t = Trace("q", [step(0, "a1", error=UNOBSERVED), step(1, "a2"),
                    step(2, "vote", (0, 1), program=True),
                    step(3, "judge", (2,), UNOBSERVED, when="agree"),
                    step(4, "a3", (2,), UNOBSERVED)])  # a plain step runs whatever it reads
    assert worth_asking([("k", "a1"), ("k", "judge"), ("k", "a3")], t) == [
        ("k", "a1"), ("k", "a3")]


def test_the_counterfactual_pool_marks_an_unobserved_cell_apart_from_a_failure():
    rows = [row(0)]
    d = Counterfactual(rows, {"k0": {"down": RerollAnswer(None, False, 0.0, False)}},
                       [WorkerInfo(w, "") for w in ("good", "down")])
    pool = CounterfactualPool(d)
    got = {w: asyncio.run(pool.complete(w, [], metadata={"query_id": "k0"})).error_code
           for w in ("good", "down")}
    assert got == {"good": UNOBSERVED, "down": "missing_answer"}
    assert asyncio.run(pool.complete("good", [], metadata={"query_id": "k9"})).error_code \
        == "unknown_query"


# -- sampled plans over budgeted cells -------------------------------------------------------


def test_a_plan_needing_an_unobserved_cell_gets_it_within_the_budget_and_is_scored(tmp_path):
    scored, trajs, pool, cells, tally = sampled(tmp_path, 1.0, rewarded_rows=10)
    # k0: good observed, cheap fetched; k1: both fetched -- 3 calls, within 10
    assert pool.calls == 3 and all(t is not None for t in scored)
    assert [t.reward for t in scored] == pytest.approx(
        [1 - 10 * 0.002, -10 * 0.001, 1 - 10 * 0.001, -10 * 0.001])
    assert [t.correct for t in scored] == [True, False, True, False]
    assert tally["cells_fetched"] == 3 and tally["fetch_calls"] == 3
    assert tally["fetch_dollars"] == pytest.approx(0.003)
    # the same plans before the fetch: the unobserved ones were failures, not the workers'
    assert [t.reward for t in trajs] == pytest.approx([1 - 10 * 0.002, 0.0, 0.0, 0.0])
    assert len(trainable(scored)) == 4
    assert cells.log.append("trained", "online")["extra_calls"] == 3


def test_out_of_budget_a_plan_is_not_scored_nor_trained_on_as_a_failure(tmp_path):
    scored, _, pool, cells, tally = sampled(tmp_path, 0.0, rewarded_rows=10)
    assert pool.calls == 0 and tally["fetch_calls"] == 0
    # only k0's good plan reads observed cells; its group keeps one scored plan: no update
    assert [t is not None for t in scored] == [True, False, False, False]
    assert trainable(scored) == []
    # one call of budget: the first cell asked (k0's cheap) completes k0's group
    scored, _, pool, cells, tally = sampled(tmp_path / "one", 1.0, rewarded_rows=1)
    assert pool.calls == 1 and tally["cells_fetched"] == 1
    assert [t is not None for t in scored] == [True, True, False, False]
    assert [t.query_id for t in trainable(scored)] == ["k0", "k0"]
    assert cells.log.append("trained", "online")["extra_calls"] == 1


def test_a_cascade_fetches_the_third_cell_only_once_its_condition_holds(tmp_path):
    letters = {"a1": "A", "a2": "A", "judge": "B"}
    scored, _, pool, _, tally = sampled(tmp_path, 1.0, 10, plans=(CASCADE,), answers={},
                                        letters=letters, n=1)
    # pass 1: a1, a2 missing (the judge ran only because they were); pass 2: they agree
    assert pool.calls == 2 and tally["fetches"] == 1
    assert [t.reward for t in scored] == pytest.approx([1 - 10 * 0.002] * 2)
    assert all(t.calls == 2 for t in scored)  # the judge was skipped
    letters["a2"] = "C"  # they disagree: the judge's cell is asked in the next pass
    scored, _, pool, _, tally = sampled(tmp_path / "b", 1.0, 10, plans=(CASCADE,),
                                        answers={}, letters=letters, n=1)
    assert pool.calls == 3 and tally["fetches"] == 2
    assert [t.reward for t in scored] == pytest.approx([-10 * 0.003] * 2)


def test_a_fetching_trainer_gets_the_exploration_share_and_no_more(tmp_path):
    pool = Letters({"cheap": "B", "good": "A"})
    cells = broker(tmp_path, pool, 1.0, rewarded_rows=10)  # 10 calls earned
    rows = [row(i) for i in range(10)]
    trainer = LMTrainer(RetrainConfig().training.lm, cost_penalty=10.0)
    cells.explore(trainer, tmp_path, rows, [], 10.0)
    assert pool.calls == 0 and cells.fetch_left == 5  # explore_share 0.5, left to fetches
    got = cells.fetch([(r, w) for r in rows for w in ("good", "cheap")])
    assert pool.calls == 5 and sum(len(c) for c in got.values()) == 5
    assert cells.fetch([(rows[9], "good")]) == {} and pool.calls == 5
    assert cells.allowance() == 5  # the rest: the cells the paired test needs


# -- greedy scoring: needed and scorable ------------------------------------------------------


class Scripted(LMTrainer):
    """The policy directory's conductor is a scripted one (its greedy plan: `greedy`)."""

    def __init__(self, greedy):
        super().__init__(RetrainConfig().training.lm, cost_penalty=10.0)
        self.greedy, self.loads = greedy, 0

    def _conductor(self, policy_dir):
        self.loads += 1
        return conductor(PlanEngine([self.greedy]))


def test_needed_and_scorable_make_greedy_scores_exact_within_the_budget(tmp_path):
    letters = {"a1": "A", "a2": "C", "judge": "A"}
    pool = Letters(letters)
    rows = [row(i) for i in range(4)]
    data = Counterfactual(rows, {"k3": {"a1": RerollAnswer("A", True, 0.001, True),
                                        "a2": RerollAnswer("A", True, 0.001, True)}},
                          list(pool.workers()))
    trainer, policy = Scripted(CASCADE), tmp_path / "policy"
    policy.mkdir()
    need = trainer.needed(policy, data)
    assert need == {f"k{i}": ["a1", "a2"] for i in range(3)}  # k3's two agree: exact
    # seed 4 walks k3, k2, k0, k1. 8 calls: pass 1 the 6 cheap cells of k2, k0, k1 (they
    # disagree), pass 2 the judge of k2 and k0; k1's judge is out of budget, so the
    # scored questions end before k1
    assert sorted(data.rows, key=lambda r: unit_hash(f"scorable/4/{r.key}")) == [
        rows[3], rows[2], rows[0], rows[1]]
    cells = broker(tmp_path, pool, 1.0, rewarded_rows=8)
    exact = cells.scorable(trainer, [policy], data, seed=4)
    assert [r.key for r in exact.rows] == ["k0", "k2", "k3"] and pool.calls == 8
    assert trainer.needed(policy, exact) == {}
    assert trainer.score(policy, exact) == pytest.approx(
        [1 - 10 * 0.003, 1 - 10 * 0.003, 1 - 10 * 0.002])
    assert trainer.loads == 1  # loaded and planned once for every pass and the score
    assert cells.log.append("evaluated", "online")["extra_calls"] == 8


def test_scorable_is_a_random_sample_not_the_questions_that_needed_nothing(tmp_path):
    """Half the questions need nothing (their cascade's two cells agree, observed), half
    need three cells; the budget completes about a third of the needy ones. The old rule
    (keep what needs nothing, plus what the budget completed) scored a set two-thirds
    free; the prefix of a random order keeps the needy share near the data's one half."""
    pool = Letters({"a1": "A", "a2": "C", "judge": "A"})
    rows = [row(i) for i in range(40)]
    agree = {"a1": RerollAnswer("A", True, 0.001, True),
             "a2": RerollAnswer("A", True, 0.001, True)}
    trainer, policy = Scripted(CASCADE), tmp_path / "policy"
    policy.mkdir()
    shares, sizes = [], []
    for seed in range(30):
        data = Counterfactual(rows, {f"k{i}": dict(agree) for i in range(0, 40, 2)},
                              list(pool.workers()))
        (tmp_path / str(seed)).mkdir()
        cells = broker(tmp_path / str(seed), pool, 1.0, rewarded_rows=21)
        exact = cells.scorable(trainer, [policy], data, seed=seed)
        assert trainer.needed(policy, exact) == {}  # every kept question scores exactly
        assert cells.log.pending.calls <= 21  # within the budget
        needy = sum(int(r.key[1:]) % 2 for r in exact.rows)
        shares.append(needy / len(exact.rows))
        sizes.append(len(exact.rows))
    assert 0.4 < np.mean(shares) < 0.6, np.mean(shares)
    assert 10 < np.mean(sizes) < 20  # about 7 needy and as many free
    # the next round walks the same order: what this round bought is free, and the new
    # allowance extends the prefix (with a question added, the order of the rest holds)
    data = Counterfactual(rows, {f"k{i}": dict(agree) for i in range(0, 40, 2)},
                          list(pool.workers()))
    (tmp_path / "again").mkdir()
    cells = broker(tmp_path / "again", pool, 1.0, rewarded_rows=21)
    first = cells.scorable(trainer, [policy], data, seed=7)
    cells.rewarded_rows += 21
    second = cells.scorable(trainer, [policy], Counterfactual(
        rows + [row(40)], data.answers, data.workers), seed=7)
    assert {r.key for r in first.rows} < {r.key for r in second.rows}
    assert cells.log.pending.calls <= 42
    # a cap below the allowance (the share kept for the anchors) holds
    (tmp_path / "cap").mkdir()
    cells = broker(tmp_path / "cap", pool, 1.0, rewarded_rows=21)
    capped = cells.scorable(trainer, [policy], Counterfactual(
        rows, {f"k{i}": dict(agree) for i in range(0, 40, 2)}, data.workers), seed=7, budget=5)
    assert cells.log.pending.calls <= 5 and cells.allowance() >= 16
    assert {r.key for r in capped.rows} <= {r.key for r in first.rows}
    # ... and the anchors, scored next as the loop does (`evaluation.anchor_share`), get
    # the rest: a larger sample than the capped traffic's, the round's total still within
    anchors = [row(i) for i in range(100, 140)]
    held = cells.scorable(trainer, [policy], Counterfactual(
        anchors, {f"k{i}": dict(agree) for i in range(100, 140, 2)}, data.workers), seed=7)
    assert cells.log.pending.calls <= 21 and len(held.rows) > len(capped.rows)
    assert trainer.needed(policy, held) == {}


# -- a loop round with the tiny model ----------------------------------------------------------


def log_rows(n, t0=1000.0):
    """Served by v1, which asked `good` (the served trace: one judged cell per question)."""
    served = json.dumps({"steps": [{"worker": "good", "subtask": ROUTER_SUBTASK, "access": [],
                                    "text": "The answer is (A)", "answer": "A", "cost": 0.001,
                                    "input_tokens": 1, "output_tokens": 1}]})
    return [{"request_id": f"r{i}", "status": 200, "model": "online", "policy_version": "v1",
             "question": f"What is {i} + {i}? (A) right (B) wrong", "query_id": None,
             "answer": "The answer is (A)", "cost": 0.001, "reward": None, "label": "A",
             "trace": served, "time": pd.Timestamp(t0 + i, unit="s", tz="UTC")}
            for i in range(n)]


@pytest.mark.parametrize("calls_per_row", [0.0, 1.0])
def test_a_budgeted_lm_round_fetches_what_its_plans_need_and_accounts_it(
        tmp_path, monkeypatch, calls_per_row):
    import ray_conductor.policy.conductor as pc
    import ray_conductor.rl.grpo as grpo
    import ray_conductor.rl.rollout as rollout
    from ray_conductor.online.loop import Retrainer, tier_trainer
    from ray_conductor.policy.loading import resolve_model_path
    from ray_conductor.policy.registry import PolicyRegistry

    engine = lambda cfg: PlanEngine([plan("good"), plan("cheap")])  # noqa: E731
    monkeypatch.setattr(rollout, "build_engine", engine)
    monkeypatch.setattr(pc, "build_engine", engine)
    batches = []
    real_step = grpo.grpo_step

    def spy(batch, *a, **k):
        batches.append(list(batch))
        return real_step(batch, *a, **k)

    monkeypatch.setattr(grpo, "grpo_step", spy)
    reg = PolicyRegistry(tmp_path / "registry")
    reg.promote(reg.publish(resolve_model_path("tiny-smollm2"), kind="lm", meta={
        "config": {"conductor": {"worker_ids": "name", "few_shot": False, "max_steps": 2,
                                 "max_resamples": 0, "fallback_worker": "good"}}}).version)
    cfg = RetrainConfig(app="a", model="online", state_dir=str(tmp_path / "state"))
    cfg.trigger.every_rows, cfg.trigger.every_minutes = 40, None
    cfg.evaluation.min_rows, cfg.training.min_rows = 3, 3
    cfg.reroll.calls_per_row = calls_per_row
    lm = cfg.training.lm
    lm.iterations, lm.questions, lm.group_size, lm.select_rows, lm.lr = 2, 3, 2, 4, 1e-3
    app = App(f"registry:{reg.root}@1")
    loop = Retrainer(cfg, app, lambda penalty, kind="lite": tier_trainer(cfg, penalty, kind),
                     read=lambda _: pd.DataFrame(log_rows(40)), clock=lambda: 2000.0)
    made = loop.round()
    trained = next(d for d in made if d["kind"] == "trained")
    t = trained["training"]
    assert t["plans_sampled"] == 2 * 3 * 2
    # decision log = what the pool was asked, within the budget; fetches came first
    assert sum(d["extra_calls"] for d in made) == app.pool.calls <= calls_per_row * 40
    assert trained["extra_calls"] == t["fetch_calls"]
    assert t["fetch_calls"] <= int(40 * calls_per_row * cfg.reroll.explore_share)
    if calls_per_row == 0:  # only the served `good` cells: every `cheap` plan unscored,
        # so no group keeps two scored plans: no update (not a lesson against `cheap`)
        assert t["plans_unscored"] == 2 * 3 and t["updates"] == 0 and batches == []
        assert app.pool.calls == 0 and t["cells_fetched"] == 0
    else:  # the `cheap` cells fetched: both updates on every sampled plan
        assert t["plans_unscored"] == 0 and t["updates"] == 2 and len(batches) == 2
        assert 0 < t["cells_fetched"] == t["fetch_calls"] <= 2 * 3
        for b in batches:
            by = {x.info["final_worker"]: x.reward for x in b}
            assert by == {"good": 1.0, "cheap": 0.0}  # the paper's reward: no penalty
    # the greedy plan (`good`) reads served cells only: the paired test scores exactly
    assert made[-1]["kind"] == "rejected" and made[-2]["n"] >= 3
