"""Baseline policies on a hand-made three-query, three-worker world."""

from dataclasses import dataclass

import numpy as np
import pytest

from ray_conductor.errors import ConfigError
from ray_conductor.eval.evaluate import evaluate_policies
from ray_conductor.eval.policies import KNNRouter, make_policies
from ray_conductor.workers.base import Completion, WorkerInfo

WORKERS = [WorkerInfo("big", "", 10, 30), WorkerInfo("mid", "", 1, 2), WorkerInfo("tiny", "", .1, .2)]
# correct[q][w] and cost[q][w]
CORRECT = {"q0": [1, 1, 0], "q1": [1, 0, 0], "q2": [0, 0, 0]}
COST = {"q0": [0.3, 0.02, 0.001], "q1": [0.4, 0.03, 0.002], "q2": [0.5, 0.04, 0.003]}
NAMES = [w.name for w in WORKERS]


@dataclass
class Q:
    query_id: str
    query: str


@dataclass
class Rec:
    correct: bool
    cost: float


class FakeData:
    models = NAMES

    def record(self, qid, model):
        i = NAMES.index(model)
        return Rec(bool(CORRECT[qid][i]), COST[qid][i])

    def judge(self, qid, text):
        return text == "right"


class FakePool:
    def workers(self):
        return WORKERS

    async def complete(self, worker, messages, metadata=None, **kw):
        qid = metadata["query_id"]
        i = NAMES.index(worker)
        return Completion(worker, text="right" if CORRECT[qid][i] else "wrong", cost=COST[qid][i])


QUERIES = [Q("q0", "a"), Q("q1", "b"), Q("q2", "c")]


async def evaluate(names, **kw):
    pols = make_policies(names, FakeData(), WORKERS, **kw)
    return await evaluate_policies(pols, QUERIES, FakePool(), FakeData().judge, WORKERS,
                                   progress=False)


async def test_singles_cheapest_and_oracle_match_hand_computed_numbers():
    r = await evaluate(["singles", "cheapest", "oracle"])
    assert r["single:big"].accuracy == pytest.approx(2 / 3)
    assert r["single:big"].cost_per_query == pytest.approx(0.4)
    assert r["single:mid"].accuracy == pytest.approx(1 / 3)
    assert r["cheapest"].cost_per_query == pytest.approx(0.002)
    # oracle: q0 -> mid (cheapest correct), q1 -> big, q2 -> none correct -> tiny (cheapest)
    assert r["oracle"].accuracy == pytest.approx(2 / 3)
    assert r["oracle"].cost_per_query == pytest.approx((0.02 + 0.4 + 0.003) / 3)
    assert r["oracle"].calls_per_query == 1.0
    assert r["oracle"].final_workers == {"mid": 1, "big": 1, "tiny": 1}


async def test_random_is_seeded():
    a = await evaluate(["random"], seed=3)
    b = await evaluate(["random"], seed=3)
    assert a["random"].final_workers == b["random"].final_workers


def test_knn_picks_the_best_worker_among_neighbours_and_breaks_ties_by_cost():
    # two clusters of training queries: near x -> only "tiny" right; near y -> big and mid right
    emb = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    correct = np.array([[0, 0, 1], [0, 0, 1], [1, 1, 0], [1, 1, 0]], dtype=np.float32)
    cost = np.array([[3, 2, 1]] * 4, dtype=np.float32)
    knn = KNNRouter(emb, correct, cost, NAMES, embed=None, k=2)
    assert knn.choose(np.array([[1, 0], [0, 1]], dtype=np.float32)) == [2, 1]


def test_unknown_policy_and_worker_are_config_errors():
    with pytest.raises(ConfigError, match="unknown policy 'best'"):
        make_policies(["best"], FakeData(), WORKERS)
    with pytest.raises(ConfigError, match="unknown worker 'gpt-9'"):
        make_policies(["single:gpt-9"], FakeData(), WORKERS)
