"""The LM conductor's tier of the online loop: plans of any shape scored over re-rolled
answers (exact rewards with a scripted engine), and a real round with the tiny model: GRPO
continued from a registry version of kind lm, the paired test, a promotion that keeps the
conductor settings, a served-policy load of the new version, and the paired live watch.
(Whether the LM tier's rounds improve a policy is a benchmark's question, not a test's.)"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from online_stubs import App

from ray_conductor.errors import ConfigError
from ray_conductor.online.config import RetrainConfig
from ray_conductor.online.lm_trainer import CounterfactualPool, LMTrainer
from ray_conductor.online.loop import Retrainer, tier_trainer
from ray_conductor.online.reroll import RerollAnswer
from ray_conductor.online.rewards import LABEL, Judge, LoggedRow
from ray_conductor.online.trainer import Counterfactual
from ray_conductor.policy.conductor import Conductor, ConductorConfig
from ray_conductor.policy.registry import PolicyRegistry
from ray_conductor.policy.scripted_engine import ScriptedEngine
from ray_conductor.workers.base import WorkerInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORKERS = [WorkerInfo("cheap", "", 0.1, 0.1), WorkerInfo("good", "", 5.0, 5.0),
           WorkerInfo("down", "", 1.0, 1.0)]
ANSWERS = {"cheap": RerollAnswer("B", False, 0.0001, True), "good": RerollAnswer("A", True, 0.002, True),
           "down": RerollAnswer(None, False, 0.0, False)}


def row(i: int) -> LoggedRow:
    return LoggedRow(f"r{i}", float(i), "online", "v1", f"question {i}", None, f"k{i}",
                     "The answer is (A)", 0.0, 1.0, LABEL, Judge(LABEL, "mc", reference="A"))


def data(n: int = 3) -> Counterfactual:
    rows = [row(i) for i in range(n)]
    return Counterfactual(rows, {r.key: dict(ANSWERS) for r in rows}, WORKERS)


@pytest.mark.parametrize("plan,reward", [
    ("model_id = [1]\nsubtasks = ['Solve it.']\naccess_list = [[]]", 1 - 10 * 0.002),
    ("model_id = [0]\nsubtasks = ['Solve it.']\naccess_list = [[]]", -10 * 0.0001),
    # a chain: the last step's answer is the plan's, every step is paid for
    ("model_id = [1, 0]\nsubtasks = ['Draft.', 'Check.']\naccess_list = [[], [0]]",
     -10 * 0.0021),
    ("model_id = [0, 1]\nsubtasks = ['Draft.', 'Check.']\naccess_list = [[], [0]]",
     1 - 10 * 0.0021),
    # a worker that gave no answer when re-asked: nothing to be right with
    ("model_id = [2]\nsubtasks = ['Solve it.']\naccess_list = [[]]", 0.0),
])
def test_plans_are_scored_over_the_re_rolled_answers(plan, reward):
    d = data()
    conductor = Conductor(ScriptedEngine([], plan), ConductorConfig(engine="scripted"))
    got = LMTrainer(RetrainConfig().training.lm, cost_penalty=10.0).rewards(conductor, d)
    np.testing.assert_allclose(got, [reward] * 3)


def test_the_counterfactual_pool_answers_per_question_and_judges_by_answer():
    d = data(1)
    d.answers["k0"]["cheap"] = RerollAnswer("A", True, 0.0001, True)  # cheap is right here
    pool = CounterfactualPool(d)
    import asyncio

    c = asyncio.run(pool.complete("cheap", [], metadata={"query_id": "k0"}))
    assert c.error is None and c.meta["answer"] == "A" and c.cost == 0.0001
    assert pool.judge("k0", c.text) and not pool.judge("k0", "The answer is (B).")
    miss = asyncio.run(pool.complete("good", [], metadata={"query_id": "nope"}))
    assert miss.error_code == "unknown_query"
    down = asyncio.run(pool.complete("down", [], metadata={"query_id": "k0"}))
    assert down.error_code == "missing_answer"


# -- a real round with the tiny model ----------------------------------------------------------


def log_rows(n, version, start=0, t0=1000.0):
    return [{"request_id": f"r{version}{i}", "status": 200, "model": "online",
             "policy_version": version, "question": f"What is {i} + {i}? (A) right (B) wrong",
             "query_id": None, "answer": "The answer is (A)", "cost": 0.001, "reward": None,
             "label": "A", "time": pd.Timestamp(t0 + i, unit="s", tz="UTC")}
            for i in range(start, start + n)]


# unconstrained: the random tiny model rarely writes a plan (each falls back to one call),
# and constrained decoding of a random model is slow; the settings must survive promotion
SETTINGS = {"worker_ids": "name", "few_shot": False, "max_steps": 2, "max_new_tokens": 48,
            "max_resamples": 0, "batch_size": 8, "fallback_worker": "good"}


def test_a_served_lm_conductor_is_retrained_promoted_and_watched(tmp_path):
    from ray_conductor.policy.loading import resolve_model_path
    from ray_conductor.policy.runner import load_conductor

    reg = PolicyRegistry(tmp_path / "registry")
    reg.promote(reg.publish(resolve_model_path("tiny-smollm2"), kind="lm",
                            meta={"config": {"conductor": SETTINGS}}).version)
    cfg = RetrainConfig(app="a", model="online", state_dir=str(tmp_path / "state"))
    cfg.trigger.every_rows, cfg.trigger.every_minutes = 40, None
    cfg.evaluation.min_rows, cfg.training.min_rows = 5, 5
    cfg.evaluation.min_gain = -10.0  # any candidate passes: this test is about the plumbing
    cfg.rollback.window, cfg.rollback.min_paired = 8, 5
    lm = cfg.training.lm
    lm.iterations, lm.questions, lm.group_size, lm.select_rows, lm.lr = 1, 3, 2, 4, 1e-3
    rows = log_rows(40, "v1")
    clock = {"t": 2000.0}
    app = App(f"registry:{reg.root}@1")
    loop = Retrainer(cfg, app, lambda penalty, kind="lite": tier_trainer(cfg, penalty, kind),
                     read=lambda _: pd.DataFrame(rows), clock=lambda: clock["t"])
    made = loop.round()
    assert [d["kind"] for d in made] == ["trained", "evaluated", "promoted"], made
    trained, evaluated, _ = made
    t = trained["training"]
    assert t["cost_penalty"] == 0.0  # the paper's reward: no dollar penalty
    assert len(t["curve"]) == 2 and 0.0 <= t["steps"][0]["parsed"] <= 1.0
    # a fallback plan asks `good`, which is right: 1.0 on every question, unless a plan parsed
    assert t["calls_replayed"] > 0 and app.pool.calls == 40 * 2
    assert t["micro_batch_size"] == 2  # one GRPO group per micro-batch: its prompt runs once
    assert 5 <= evaluated["n"] < 40 and np.isfinite(evaluated["candidate_mean"])
    v2 = reg.get(2)
    assert v2.kind == "lm" and v2.meta["conductor"]["fallback_worker"] == "good"
    assert v2.meta["parent"] == 1 and reg.promoted().version == 2
    assert json.loads((tmp_path / "registry" / "versions" / "v000002" / "conductor.json")
                      .read_text())["worker_ids"] == "name"
    conductor, tag = load_conductor(f"registry:{reg.root}@2")  # as the server loads it
    assert tag == "v2" and conductor.cfg.worker_ids == "name" and conductor.cfg.max_steps == 2
    (plan,) = conductor.plan_many(["What is 2 + 2?"], app.pool.workers(), temperature=0.0)
    assert 1 <= len(plan.workflow) <= 2

    # the promoted version answers 8 rewarded questions: the paired watch replays v1 on them
    clock["t"] = 3000.0
    rows += log_rows(8, "v2", start=100, t0=2500.0)
    (watch,) = loop.round()
    assert watch["kind"] in ("kept", "rolled_back") and watch["test_kind"] == "paired"
    assert watch["n"] == 8 and watch["live_mean"] == 1.0  # answered (A), labelled A
    with pytest.raises(ConfigError, match="needs no growing"):
        loop.grow([WorkerInfo("new", "", 1.0, 1.0)])


def test_the_loop_actor_asks_for_a_gpu_only_for_an_lm_on_cuda():
    from ray_conductor.online.actor import gpus_for

    cfg = RetrainConfig()
    assert gpus_for(cfg) == 0
    cfg.training.lm.device = "cuda:0"
    assert gpus_for(cfg) == 1
