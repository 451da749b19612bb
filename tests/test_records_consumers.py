"""Every consumer of a pool on a records pool of number answers (votes possible): `eval` with
the baselines and a pinned vote workflow (`scripted:FILE`), kNN, the lite conductor (table,
selector, live runs, and `lite:RUN_DIR`), the LM conductor's rollouts and online
retraining's anchors and re-rolls. Expected figures are computed by hand from the rules that
made the recordings."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest

from ray_conductor.data.pools import load_pool
from ray_conductor.data.replay import ReplayPool
from ray_conductor.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 60
WORKERS = {"cheap": 0.001, "mid": 0.004, "pricey": 0.02}  # recorded dollars per answer


def right(worker: str, i: int) -> bool:
    return {"cheap": i % 3 != 0, "mid": i % 2 == 0, "pricey": i % 5 != 0}[worker]


def vote_right(i: int) -> bool:
    n = sum(right(w, i) for w in WORKERS)
    return n >= 2 or (n == 1 and right("pricey", i))


def wrong_answer(worker: str, i: int) -> int:
    return 2 * i + {"cheap": 1, "mid": 2, "pricey": 3}[worker]  # wrong answers all differ


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "numbers.jsonl"
    with open(path, "w") as f:
        for i in range(N):
            for w, cost in WORKERS.items():
                got = 2 * i if right(w, i) else wrong_answer(w, i)
                f.write(json.dumps({"query_id": f"n/{i}", "query": f"What is {i} + {i}?",
                                    "model": w, "response": f"Adding... #### {got}",
                                    "answer_format": "number", "reference": str(2 * i),
                                    "cost": cost}) + "\n")
    return path


@pytest.fixture(scope="module")
def data(records, tmp_path_factory):
    return load_pool(f"records:{records}", cache_dir=tmp_path_factory.mktemp("cache"))


VOTE = ('model_id = ["cheap", "mid", "pricey", "vote"]\n'
        'subtasks = ["Answer.", "Answer.", "Answer.", "Pick."]\n'
        'access_list = [[], [], [], "all"]\n')


def test_eval_judges_baselines_and_a_pinned_vote_workflow(records, tmp_path, monkeypatch):
    from ray_conductor.eval.command import EvalConfig, run_eval

    monkeypatch.chdir(tmp_path)
    (tmp_path / "vote3.txt").write_text(VOTE)
    cfg = EvalConfig(pool=f"records:{records}", split="all", progress=False,
                     policies=["singles", "cheapest", "oracle", "scripted:vote3.txt"],
                     out=str(tmp_path / "eval.json"))
    rep = run_eval(cfg)["policies"]
    for w, cost in WORKERS.items():
        assert rep[f"single:{w}"]["accuracy"] == pytest.approx(
            sum(right(w, i) for i in range(N)) / N)
        assert rep[f"single:{w}"]["cost_per_query"] == pytest.approx(cost)
    assert rep["cheapest"]["accuracy"] == rep["single:cheap"]["accuracy"]
    assert rep["oracle"]["accuracy"] == pytest.approx(
        sum(any(right(w, i) for w in WORKERS) for i in range(N)) / N)
    # the vote is right where two workers are (wrong answers never agree), or where only
    # pricey is: three different answers tie, and the tie goes to the strongest worker
    vote = rep["scripted:vote3.txt"]
    assert vote["accuracy"] == pytest.approx(sum(vote_right(i) for i in range(N)) / N)
    assert vote["cost_per_query"] == pytest.approx(sum(WORKERS.values()))
    assert vote["calls_per_query"] == 3 and vote["parse_rate"] == 1.0


def test_a_pinned_workflow_with_a_typo_is_refused_before_any_call(records, tmp_path,
                                                                 monkeypatch):
    from ray_conductor.eval.command import EvalConfig, run_eval

    monkeypatch.chdir(tmp_path)
    (tmp_path / "typo.txt").write_text(VOTE.replace('"mid"', '"midd"'))
    cfg = EvalConfig(pool=f"records:{records}", split="all", progress=False,
                     policies=["scripted:typo.txt"], out=str(tmp_path / "eval.json"))
    with pytest.raises(ConfigError, match=r"scripted policy typo.txt: plan 1 of 1 does not "
                                          r"parse over this pool's workers .*'midd'"):
        run_eval(cfg)
    assert not (tmp_path / "eval.json").exists()


def fake_embed(texts):
    """Questions about even and odd numbers land in two clusters."""
    odd = np.array([int(re.search(r"\d+", t).group()) % 2 for t in texts], dtype=np.float32)
    return np.stack([1 - odd, odd, np.full_like(odd, 0.01)], axis=1)


def test_knn_and_the_baselines_accept_a_records_pool(data):
    from ray_conductor.eval.policies import make_policies

    workers = data.worker_infos()
    odd = [int(q.query_id[2:]) % 2 for q in data.queries("train")]
    k = min(odd.count(0), odd.count(1))  # the neighbours of a question: its own cluster
    pols = make_policies(["knn", "singles", "random", "oracle"], data, workers, knn_k=k,
                         embed=fake_embed)
    knn = pols[0]
    qs = data.queries("test")
    picks = [p.workflow.workers[0] for p in knn.plan_batch(qs, workers)]
    # among even questions mid is always right and cheap 2/3 of the time: mid; odd: pricey
    # (4/5) beats cheap (2/3)
    assert picks == ["mid" if int(q.query_id[2:]) % 2 == 0 else "pricey" for q in qs]
    correct, cost = data.matrix("all")
    assert correct.sum() == sum(right(w, i) for w in WORKERS for i in range(N))
    assert data.answers("all")[0].tolist() == ["1", "0", "3"]  # n/0: only mid is right


def test_the_lite_conductor_votes_on_number_records(data, tmp_path):
    from ray_conductor.eval.command import check_policies
    from ray_conductor.eval.policies import LitePolicy
    from ray_conductor.lite.conductor import LiteConductor
    from ray_conductor.lite.selector import SelectorConfig, fit_selector
    from ray_conductor.lite.table import NO_ANSWER, build_table

    table = build_table(data, "all", fake_embed)
    assert table.comparable and table.answer_format == "number"
    assert (table.answers != NO_ANSWER).all()  # every recorded answer has a code
    assert table.correct.sum() == sum(right(w, i) for w in WORKERS for i in range(N))
    selector = fit_selector(table, max_calls=3, cfg=SelectorConfig(k=10))
    assert any(len(p.workers) > 1 for p in selector.programs)  # cascades: votes are possible
    selector.penalty = 0.0  # accuracy only: the votes win
    conductor = LiteConductor(table.workers, table.strength, selector.projection,
                              selector=selector, max_calls=3, comparable=table.comparable,
                              featurizer=None, info={"answer_format": "number"})
    conductor.embed = lambda texts, cache=False: fake_embed(texts)
    pool = ReplayPool(data)
    runs = asyncio.run(conductor.run_batch(data.queries("all")[:12], pool))
    assert all(data.judge(q.query_id, trace.answer) == any(
        s.answer == str(2 * int(q.query_id[2:])) and s.text == trace.answer
        for s in trace.steps) for q, (_, trace) in zip(data.queries("all")[:12], runs))
    assert any(s.program for _, trace in runs for s in trace.steps)  # it voted
    # `lite:RUN_DIR`: a train-lite run directory is read through its policy/
    run_dir = tmp_path / "run"
    conductor.save(run_dir / "policy")
    check_policies([f"lite:{run_dir}"], data, data.models)
    assert LitePolicy.load(str(run_dir), data.worker_infos()).name == "lite:run"
    with pytest.raises(ConfigError, match=rf"nor a train-lite run directory \(no "
                                          rf"{tmp_path}/elsewhere/policy\)"):
        LiteConductor.load(tmp_path / "elsewhere")


def test_lm_conductor_rollouts_score_number_records(data):
    from ray_conductor.policy.conductor import ConductorConfig
    from ray_conductor.policy.scripted_engine import ScriptedEngine
    from ray_conductor.rl.rewards import RewardConfig
    from ray_conductor.rl.rollout import RolloutWorker

    cfg = ConductorConfig(engine="scripted", programs=True, recursion_depth=0)
    worker = RolloutWorker(cfg, RewardConfig(), ReplayPool(data), data.judge,
                           engine=ScriptedEngine([], VOTE))
    qs = data.queries("all")[:10]
    trajs = asyncio.run(worker.rollout(qs, 2, iteration=0))
    for q, t in zip([q for q in qs for _ in range(2)], trajs):
        won = vote_right(int(q.query_id[2:]))
        assert t.correct == won and t.reward == (1.0 if won else 0.5)
        assert t.cost == pytest.approx(sum(WORKERS.values()))


def test_online_anchors_and_rerolls_on_number_records(data):
    from ray_conductor.online.anchor import anchor_rows
    from ray_conductor.online.reroll import AnswerCache, Reroller, build_table

    rows = anchor_rows(data, "all", rows=20, holdout=0.0)
    assert len(rows) == 20 and {r.judge.answer_format for r in rows} == {"number"}
    pool = ReplayPool(data)
    reroller = Reroller(pool, {w: "fp" for w in data.models}, AnswerCache(), data)
    answers, stats = reroller.answers(rows, budget=1000)
    assert stats.complete == 20 and stats.calls == 60
    table = build_table(rows, answers, np.zeros((20, 2)), data.models,
                        [1.0, 2.0, 3.0])
    assert table.comparable and table.answer_format == "number"
    for j, r in enumerate(rows):
        i = int(r.query_id[2:])
        assert table.correct[j].tolist() == [right(w, i) for w in data.models]
        codes, oks = table.answers[j], [right(w, i) for w in data.models]
        for a in range(3):  # equal codes exactly where both are right (wrong ones all differ)
            for b in range(a + 1, 3):
                assert (codes[a] == codes[b]) == (oks[a] and oks[b])


@pytest.mark.slow
def test_train_lite_on_a_records_pool_votes_live_as_offline(ray_cluster, tmp_path):
    """`train-lite pool=records:...` end to end (the real encoder, RLlib PPO): the policy
    knows its format, and its live runs score what its offline rollouts predict."""
    from ray_conductor.config import load
    from ray_conductor.lite.conductor import LiteConductor
    from ray_conductor.lite.train import LiteTrainConfig, pool_table, train_lite

    path = tmp_path / "numbers.jsonl"
    with open(path, "w") as f:
        for i in range(160):
            for w, cost in WORKERS.items():
                got = 2 * i if right(w, i) else wrong_answer(w, i)
                f.write(json.dumps({"query_id": f"n/{i}", "query": f"What is {i} + {i}?",
                                    "model": w, "response": f"#### {got}", "cost": cost,
                                    "answer_format": "number", "reference": 2 * i}) + "\n")
    spec, run_dir = f"records:{path}", tmp_path / "run"
    train_lite(load(LiteTrainConfig, [
        f"pool={spec}", f"run_dir={run_dir}", "iterations=1", "progress=false",
        "bc_steps=50", "cost_penalty=0", "selector.k=20", "ppo.train_batch_size=128",
        "ppo.minibatch_size=64", "ppo.num_epochs=1", "ppo.hidden=[16]", "projection_dim=4",
        "ppo.num_envs_per_env_runner=2", "val_fraction=0.2", "check_rows=40"]))
    data = load_pool(spec, cache_dir=tmp_path / "cache")
    for kind in ("policy", "selector"):
        policy = LiteConductor.load(run_dir / kind, data.worker_infos())
        assert policy.comparable and policy.info["answer_format"] == "number"
        queries = data.queries("test")
        live = asyncio.run(policy.run_batch(queries, ReplayPool(data)))
        offline = policy.rollout(pool_table(data, "test", policy.featurizer))
        for i, (q, (wf, trace)) in enumerate(zip(queries, live)):
            assert data.judge(q.query_id, trace.answer) == offline.correct[i]
            assert trace.cost == pytest.approx(offline.cost[i])
