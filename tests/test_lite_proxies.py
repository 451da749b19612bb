"""The shipped lite policy deciding turn by turn over the shared `WorkerProxy` actors: the
same workflows, answers and dollars as over the in-process replay pool, and every call it
made is in the proxies' accounting."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.ray


def test_a_lite_workflow_runs_through_the_worker_proxies(ray_cluster):
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.graph import GraphSpec, make_ray_pool, stop_worker_proxies
    from ray_conductor.lite import LiteConductor, default_policy_dir
    from ray_conductor.workers.config import WorkerPoolConfig, replay_workers

    ns = "test_lite_proxies"
    data = load_pool("demo")
    queries = select_queries(data, "test", 12)
    spec = GraphSpec.from_config(namespace=ns)
    proxies = make_ray_pool(spec, WorkerPoolConfig(
        workers=replay_workers("demo", data.worker_infos()), replay="demo"))
    lite = LiteConductor.load(default_policy_dir(), proxies.workers())
    try:
        remote = asyncio.run(lite.run_batch(queries, proxies, params={"temperature": 0}))
        local = asyncio.run(lite.run_batch(queries, ReplayPool(data)))
        for (wf_r, tr_r), (wf_l, tr_l) in zip(remote, local):
            assert wf_r == wf_l and tr_r.answer == tr_l.answer
            assert tr_r.cost == pytest.approx(tr_l.cost)
        assert any(len(wf) > 1 for wf, _ in remote)  # it does call more than one worker
        stats = proxies.stats()
        assert sum(s["calls"] for s in stats.values()) == sum(t.calls for _, t in remote)
    finally:
        stop_worker_proxies(ns)
