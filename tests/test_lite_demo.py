"""The shipped lite policy (ray_conductor/assets/lite_demo): small, loads for the demo pool
and nothing else, and its live runs over the replay pool score what its offline rollout
says."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ray_conductor.errors import ConfigError
from ray_conductor.lite import LiteConductor, default_policy_dir
from ray_conductor.lite.table import build_table


@pytest.fixture(scope="module")
def demo():
    from ray_conductor.data.pools import load_pool

    return load_pool("demo")


def test_shipped_policy_is_small_and_refuses_other_pools(demo):
    size = sum(p.stat().st_size for p in default_policy_dir().iterdir())
    assert size < 2_000_000
    policy = LiteConductor.load(default_policy_dir(), demo.worker_infos())
    assert policy.kind == "ppo" and policy.name == "conductor-lite"
    assert policy.embed_model == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(ConfigError, match="different pool"):
        LiteConductor.load(default_policy_dir(), [w.name for w in demo.worker_infos()][:-1])


def test_shipped_policy_runs_live_as_it_rolls_out_offline(demo):
    from ray_conductor.data.replay import ReplayPool

    policy = LiteConductor.load(default_policy_dir(), demo.worker_infos())
    queries = demo.queries("test")[:24]
    results = asyncio.run(policy.run_batch(queries, ReplayPool(demo)))

    class Only:  # the same 24 queries as a table
        def __init__(self, data):
            self.data = data

        def __getattr__(self, name):
            return getattr(self.data, name)

        def queries(self, split):
            return queries

    table = build_table(Only(demo), "test", lambda texts: policy.embed(texts))
    offline = policy.rollout(table)
    correct = [demo.judge(q.query_id, trace.answer) for q, (_, trace) in zip(queries, results)]
    assert correct == offline.correct.tolist()
    assert np.allclose([t.cost for _, t in results], offline.cost)
    for (wf, trace), calls in zip(results, offline.workflows):
        assert [policy.workers.index(w) for w in wf.workers if w != "vote"] == list(calls)
        assert 1 <= len(trace.steps) <= policy.max_calls + 1
