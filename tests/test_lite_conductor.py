"""LiteConductor: turn-by-turn runs over a WorkerPool (the emitted Workflow and Trace), offline
rollouts, behaviour cloning, save/load and the pool check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ray_conductor.errors import ConfigError
from ray_conductor.eval.policies import SUBTASK
from ray_conductor.lite.bc import behaviour_clone, demonstrations
from ray_conductor.lite.conductor import LiteConductor
from ray_conductor.lite.episode import n_actions, state_dim
from ray_conductor.lite.net import LiteNet, Projection
from ray_conductor.lite.programs import Program, outcomes
from ray_conductor.lite.selector import Selector, fit_selector
from ray_conductor.lite.table import NO_ANSWER, LiteTable
from ray_conductor.workers.base import Completion, WorkerInfo
from ray_conductor.workflow.model import Step, Workflow

import lite_toy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORKERS = lite_toy.WORKERS
STRENGTH = lite_toy.STRENGTH
COST = {"cheap": 0.001, "mid": 0.01, "pricey": 0.1}


class ScriptedPool:
    """A WorkerPool whose workers give fixed texts (None: the call fails; an exception
    class: the pool raises it)."""

    def __init__(self, texts: dict):
        self.texts, self.calls = texts, []

    def workers(self):
        return [WorkerInfo(w, "", p, p) for w, p in zip(WORKERS, STRENGTH)]

    async def complete(self, worker, messages, **params):
        self.calls.append((worker, messages, params))
        text = self.texts[worker]
        if isinstance(text, type):
            raise text("provider exploded")
        if text is None:
            return Completion(worker=worker, error="no answer", error_code="missing_answer")
        return Completion(worker=worker, text=text, input_tokens=10, output_tokens=5,
                          cost=COST[worker])


def cascade_selector(dim: int = 4) -> Selector:
    """A selector whose every neighbour says: cascade(cheap, mid -> pricey) is right."""
    emb = np.random.default_rng(0).normal(size=(20, dim)).astype(np.float32)
    proj = Projection.fit(emb, 0, whiten=False)
    keys = proj(emb) / np.linalg.norm(proj(emb), axis=1, keepdims=True)
    programs = [Program((2,)), Program((0, 1, 2))]
    success = np.tile([False, True], (20, 1))
    return Selector(programs, proj, keys, success, np.array([0.1, 0.02]), k=5)


def selector_conductor() -> LiteConductor:
    sel = cascade_selector()
    return LiteConductor(WORKERS, STRENGTH, sel.projection, selector=sel, max_calls=4)


def run(conductor, pool, **kw):
    import asyncio

    return asyncio.run(conductor.run("Which letter? (A) a (B) b", pool, query_id="q7",
                                     embedding=np.ones(4, np.float32), **kw))


def test_run_disagreement_calls_the_third_worker_and_votes():
    pool = ScriptedPool({"cheap": "The answer is (A)", "mid": "The answer is (B)",
                         "pricey": "I think so. The answer is (B)"})
    wf, trace = run(selector_conductor(), pool)
    assert wf == Workflow((Step("cheap", SUBTASK, ()), Step("mid", SUBTASK, ()),
                           Step("pricey", SUBTASK, ()),
                           Step("vote", "Give the most common answer.", "all")))
    assert [s.worker for s in trace.steps] == ["cheap", "mid", "pricey", "vote"]
    assert trace.answer == "I think so. The answer is (B)"  # B: mid and pricey; pricey stronger
    assert trace.cost == pytest.approx(0.111)
    assert trace.steps[-1].access == [0, 1, 2]
    vote = trace.steps[-1]  # a program step: no call, no cost; the winner's answer
    assert vote.program and vote.winner == 2 and vote.answer == "B" and trace.calls == 3
    assert [s.answer for s in trace.steps[:3]] == ["A", "B", "B"]
    assert trace.final_worker == "pricey"
    worker, messages, params = pool.calls[0]
    assert worker == "cheap"
    assert params["metadata"] == {"query_id": "q7", "question": "Which letter? (A) a (B) b"}
    assert messages[0]["content"].startswith("Original question:\nWhich letter?")
    assert messages[0]["content"].endswith(SUBTASK)


def test_run_agreement_stops_after_two_calls():
    pool = ScriptedPool({"cheap": "(A)... The answer is (A)", "mid": "The answer is (A)",
                         "pricey": "The answer is (B)"})
    wf, trace = run(selector_conductor(), pool)
    assert wf.workers == ("cheap", "mid")
    assert trace.answer == "The answer is (A)"
    assert [c[0] for c in pool.calls] == ["cheap", "mid"]


def test_run_reads_the_recorded_answer_before_the_text():
    pool = ScriptedPool({"cheap": "The answer is (A)", "mid": "The answer is (B)",
                         "pricey": "x"})

    async def complete(worker, messages, **params):  # replay pools send meta["answer"]
        c = await ScriptedPool.complete(pool, worker, messages, **params)
        c.meta["answer"] = "B"
        return c

    pool.complete = complete
    wf, _ = run(selector_conductor(), pool)
    assert wf.workers == ("cheap", "mid")  # both "B" by their recorded answers: agreement


@pytest.mark.parametrize("failure", [None, RuntimeError])
def test_a_failed_call_is_state_not_an_exception(failure):
    pool = ScriptedPool({"cheap": failure, "mid": "The answer is (B)",
                         "pricey": "The answer is (C)"})
    wf, trace = run(selector_conductor(), pool)
    assert wf.workers == ("cheap", "mid", "pricey", "vote")
    assert trace.steps[0].error and trace.steps[0].text == ""
    assert trace.answer == "The answer is (C)"  # B vs C: pricey is stronger


def test_run_with_the_real_encoder():
    pool = ScriptedPool({"cheap": "The answer is (A)", "mid": "The answer is (A)",
                         "pricey": "-"})
    emb = np.random.default_rng(1).normal(size=(30, 384)).astype(np.float32)
    sel = cascade_selector()
    sel.projection = Projection.fit(emb, 4, whiten=False)
    conductor = LiteConductor(WORKERS, STRENGTH, sel.projection, selector=sel)
    import asyncio

    wf, trace = asyncio.run(conductor.run("What is 2 + 2? (A) 4 (B) 5", pool))
    assert wf.workers == ("cheap", "mid") and trace.answer == "The answer is (A)"


def toy_table() -> LiteTable:
    """The cheap worker is right when feature 0 is positive; the pricey one usually."""
    return lite_toy.toy_table(mid_rate=0.5)


def cloned_conductor(table: LiteTable, program: Program) -> LiteConductor:
    proj = Projection.fit(table.features, 0)
    net = LiteNet(proj.dim + state_dim(3, 4), n_actions(3), [32])
    conductor = LiteConductor(WORKERS, STRENGTH, proj, net=net, max_calls=4, cost_scale=0.1)
    demos = demonstrations(table.with_features(proj(table.features)), [program],
                           np.zeros(len(table), int), max_calls=4, cost_scale=0.1,
                           cost_penalty=1.0)
    stats = behaviour_clone(net, demos, steps=600, lr=3e-3, seed=0)
    assert stats["bc_agreement"] > 0.99
    return conductor


def test_behaviour_cloned_net_follows_its_teacher_offline_and_live():
    table = toy_table()
    program = Program((0, 1, 2))
    conductor = cloned_conductor(table, program)
    r = conductor.rollout(table)
    correct, cost = outcomes(table, [program])
    assert (r.correct == correct[:, 0]).mean() > 0.98
    assert r.cost.mean() == pytest.approx(cost.mean(), rel=0.02)
    pool = ScriptedPool({"cheap": "The answer is (A)", "mid": "The answer is (B)",
                         "pricey": "The answer is (B)"})
    wf, _ = run(conductor, pool)
    assert wf.workers == ("cheap", "mid", "pricey", "vote")


def test_save_load_round_trip(tmp_path):
    table = toy_table()
    conductor = cloned_conductor(table, Program((0, 1, 2)))
    conductor.prior = fit_selector(table, max_calls=4)  # saved and restored with it
    conductor.net = LiteNet(4 + 3 + state_dim(3, 4), n_actions(3), [32])
    conductor.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "lite.json").read_text())
    assert meta["workers"] == WORKERS and meta["name"] == "conductor-lite"
    assert meta["embed_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    loaded = LiteConductor.load(tmp_path / "p", [WorkerInfo(w) for w in reversed(WORKERS)])
    a, b = conductor.rollout(table), loaded.rollout(table)
    assert b.workflows == a.workflows and (a.correct == b.correct).all()
    assert np.allclose(loaded.question_features(table.features),
                       conductor.question_features(table.features), atol=1e-3)
    sel = selector_conductor()
    sel.save(tmp_path / "s")
    again = LiteConductor.load(tmp_path / "s", WORKERS)
    assert again.kind == "selector"
    assert (again.selector.success == sel.selector.success).all()


def test_load_refuses_another_pool_and_save_refuses_to_overwrite(tmp_path):
    selector_conductor().save(tmp_path / "p")
    with pytest.raises(ConfigError, match=r"lacks \['pricey'\] and adds \['gpt-4o'\]"):
        LiteConductor.load(tmp_path / "p", ["cheap", "mid", "gpt-4o"])
    with pytest.raises(ConfigError, match="already holds a lite policy"):
        selector_conductor().save(tmp_path / "p")
    with pytest.raises(ConfigError, match="not a lite policy"):
        LiteConductor.load(tmp_path / "nothing", WORKERS)
    meta = json.loads((tmp_path / "p" / "lite.json").read_text())
    del meta["selector"]["shrink"]  # written by another version
    (tmp_path / "p" / "lite.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"lite.json: `selector.shrink` must be a finite"):
        LiteConductor.load(tmp_path / "p", WORKERS)
    (tmp_path / "p" / "policy.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot read"):
        LiteConductor.load(tmp_path / "p", WORKERS)


def test_the_subtask_is_the_routers():
    from ray_conductor.lite import conductor

    assert conductor.SUBTASK == SUBTASK


def test_rollout_aligns_table_columns_by_worker_name():
    table = toy_table()
    conductor = selector_conductor()
    shuffled = table.reorder(["pricey", "cheap", "mid"])
    a, b = conductor.rollout(table), conductor.rollout(shuffled)
    assert (a.correct == b.correct).all() and np.allclose(a.cost, b.cost)
    assert NO_ANSWER == -1
