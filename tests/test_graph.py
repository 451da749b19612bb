"""The one actor graph: every role built from one `GraphSpec`; proxies shared across drivers,
outliving their creator, refusing a different config, coming back after SIGKILL with no call
lost; several workers per proxy process; a recursive workflow through the rollout actors;
an engine failure surfacing as an error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import ray.cloudpickle

from ray_conductor.errors import ConfigError, EngineError
from ray_conductor.graph import (
    GraphConfig, GraphSpec, RoleConfig, build_worker_proxies, make_ray_pool, proxy_name,
    running_proxies, stop_worker_proxies)
from ray_conductor.workers.config import WorkerConfig, WorkerPoolConfig, replay_workers

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
MSG = [{"role": "user", "content": "hi"}]


def echo(name: str, url: str, **kw) -> WorkerConfig:
    return WorkerConfig(name=name, model=f"openai/{name}", api_base=url, **kw)


# -- pure: the spec ----------------------------------------------------------------------------


def test_spec_reads_every_role_from_one_config():
    spec = GraphSpec.from_config(GraphConfig(
        rollout=RoleConfig(num_cpus=2, count=3, torch_threads=2),
        learner=RoleConfig(num_gpus=1, count=4)), namespace="ns")
    assert spec.namespace == "ns"
    assert spec.role("rollout").count == 3 and spec.role("learner").num_gpus == 1
    proxy = spec.role("worker_proxy")
    assert proxy.detached and proxy.max_restarts == -1 and proxy.max_task_retries > 0
    opts = spec.role("rollout").options(namespace="ns")
    assert opts["num_cpus"] == 2 and opts["runtime_env"]["env_vars"] == {
        "RAY_CONDUCTOR_TORCH_THREADS": "2"}
    assert proxy.options(name="worker_proxy/a")["lifetime"] == "detached"
    with pytest.raises(ConfigError, match="count and max_concurrency >= 1"):
        GraphSpec.from_config(GraphConfig(rollout=RoleConfig(count=0)))
    with pytest.raises(ConfigError, match="workers_per_proxy"):
        GraphSpec.from_config(GraphConfig(workers_per_proxy=0))


def test_worker_names_that_would_break_proxy_names_are_refused():
    from ray_conductor.workers.config import validate

    with pytest.raises(ConfigError, match="may not contain"):
        validate([WorkerConfig(name="a+b", model="openai/x")])


# -- on the shared cluster ---------------------------------------------------------------------


@pytest.mark.ray
def test_a_gpu_role_on_a_cpu_cluster_is_a_clear_config_error(ray_cluster):
    spec = GraphSpec.from_config(GraphConfig(rollout=RoleConfig(num_gpus=1)))
    with pytest.raises(ConfigError, match="graph.rollout asks for 1 GPU.*has no GPU.*num_gpus=0"):
        spec.check_resources(["rollout", "learner"])
    GraphSpec.from_config().check_resources(["rollout", "learner"])  # CPU roles are fine


@pytest.mark.ray
def test_a_proxy_of_the_same_name_with_another_config_is_refused(ray_cluster, fault_server):
    spec = GraphSpec.from_config(namespace="test_graph_fingerprint")
    first = WorkerPoolConfig(workers=[echo("fp", fault_server.url, rpm=600)])
    build_worker_proxies(spec, first)
    again = build_worker_proxies(spec, first)  # the same config: reused
    assert again["fp"]._actor_id == build_worker_proxies(spec, first)["fp"]._actor_id
    changed = WorkerPoolConfig(workers=[echo("fp", fault_server.url, rpm=60)])
    with pytest.raises(ConfigError, match="runs worker 'fp' with another config"):
        build_worker_proxies(spec, changed)
    assert stop_worker_proxies("test_graph_fingerprint") == [proxy_name(["fp"])]
    build_worker_proxies(spec, changed)  # after stopping, the new config takes the name
    stop_worker_proxies("test_graph_fingerprint")


@pytest.mark.ray
async def test_one_process_hosts_several_workers_each_with_its_own_limit(ray_cluster,
                                                                          fault_server):
    ns = "test_graph_grouped"
    spec = GraphSpec.from_config(GraphConfig(workers_per_proxy=2), namespace=ns)
    cfg = WorkerPoolConfig(workers=[echo("g1", fault_server.url, rpm=600),
                                    echo("g2", fault_server.url, fallbacks=["g3"]),
                                    echo("g3", fault_server.url)])
    pool = make_ray_pool(spec, cfg)
    assert running_proxies(ns) == {"g1": "worker_proxy/g1+g2", "g2": "worker_proxy/g1+g2",
                                   "g3": "worker_proxy/g3"}
    assert pool.handle("g1")._actor_id == pool.handle("g2")._actor_id
    results = await asyncio.gather(*(pool.complete("g1", MSG) for _ in range(3)),
                                   pool.complete("g2", MSG))
    assert all(c.ok for c in results)
    stats = pool.stats()
    assert stats["g1"]["calls"] == 3 and stats["g2"]["calls"] == 1  # separate accounting
    # separate limiters: g1's window holds its 3 requests, g2's (no limit) counts none
    assert stats["g1"]["requests_in_window"] == 3 and stats["g2"]["requests_in_window"] == 0
    fault_server.configure(model="g2", rate_5xx=1.0)  # g2 fails; its fallback lives elsewhere
    c = await pool.complete("g2", MSG)
    assert c.ok and c.served_by == "g3"
    regrouped = GraphSpec.from_config(namespace=ns)  # one worker per process
    with pytest.raises(ConfigError, match="already served by proxy 'worker_proxy/g1\\+g2'"):
        build_worker_proxies(regrouped, cfg)
    stop_worker_proxies(ns)


SECOND_DRIVER = textwrap.dedent("""
    import asyncio, json, sys, ray
    from ray_conductor.data.pools import load_pool
    from ray_conductor.graph import GraphConfig, GraphSpec, make_ray_pool
    from ray_conductor.workers.config import WorkerPoolConfig, replay_workers
    address, ns, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ray.init(address=address, namespace=ns, log_to_driver=False)
    cfg = WorkerPoolConfig(workers=replay_workers("demo", load_pool("demo").worker_infos()),
                           replay="demo")
    spec = GraphSpec.from_config(GraphConfig(workers_per_proxy=12), namespace=ns)
    pool = make_ray_pool(spec, cfg)
    meta = {"question": "not in the pool"}
    async def go():
        return await asyncio.gather(*(pool.complete("gpt-4o", [{"role": "user", "content": "x"}],
                                                    metadata=meta) for _ in range(calls)))
    asyncio.run(go())
    print(json.dumps({"id": pool.handle("gpt-4o")._actor_id.hex(),
                      "calls": pool.stats()["gpt-4o"]["calls"]}))
""")


def second_driver(ns: str, calls: int) -> dict:
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", SECOND_DRIVER, address, ns, str(calls)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.ray
@pytest.mark.slow
def test_the_whole_graph_from_one_spec_shares_its_proxies_with_a_second_driver(ray_cluster,
                                                                                tmp_path):
    """Training's graph (proxies, rollouts, learners) and another driver process use the same
    proxy actor: the same actor id and one set of counters. The other driver created the
    proxy and exited before training started: detached proxies outlive their creator."""
    from ray_conductor.config import load
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.rl.rollout_group import build_training_graph
    from ray_conductor.rl.trainer import TrainConfig

    ns = "test_graph_whole"
    first = second_driver(ns, calls=3)  # creates the proxy, calls it 3 times, exits
    cfg = load(TrainConfig, ["config=train_cpu", "model=tiny-smollm2", f"ray.namespace={ns}",
                             "conductor.max_new_tokens=8", "graph.workers_per_proxy=12",
                             "graph.rollout.torch_threads=1", "graph.learner.torch_threads=1",
                             f"run_dir={tmp_path}"])
    cfg.conductor.model = cfg.learner.model = cfg.model
    data = load_pool("demo")
    graph = build_training_graph(cfg, data)
    try:
        assert graph.proxies["gpt-4o"]._actor_id.hex() == first["id"] and first["calls"] == 3
        stats = ray.get(graph.proxies["gpt-4o"].stats.remote())["gpt-4o"]
        assert stats["calls"] == 3  # the counters the other driver left
        trajs = graph.rollouts.rollout(select_queries(data, "train", 2), 2, iteration=0, seed=0)
        assert len(trajs) == 4
        graph.sync_weights(1)
        later = second_driver(ns, calls=2)
        gpt = sum(t.info["final_worker"] == "gpt-4o" for t in trajs)
        assert later["id"] == first["id"] and later["calls"] == 3 + gpt + 2
    finally:
        graph.shutdown()
        stop_worker_proxies(ns)


@pytest.mark.ray
@pytest.mark.slow
async def test_a_killed_proxy_comes_back_under_its_name_and_no_call_is_lost(ray_cluster,
                                                                           fault_server):
    ns = "test_graph_kill"
    spec = GraphSpec.from_config(namespace=ns)
    fault_server.configure(model="victim", latency_s=0.5)
    pool = make_ray_pool(spec, WorkerPoolConfig(workers=[echo("victim", fault_server.url)]))
    handle = pool.handle("victim")
    pid = await handle.pid.remote()
    calls = [asyncio.create_task(pool.complete("victim", [{"role": "user", "content": f"{i}"}]))
             for i in range(40)]
    await asyncio.sleep(0.3)  # calls are in flight at the provider
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    t_kill = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*calls), 180)
    assert len(results) == 40  # nothing raised, nothing hung
    for c in results:
        assert c.ok or (c.error and c.error_code), c
    assert sum(c.ok for c in results) >= 35  # retried on the restarted actor
    back = ray.get_actor(proxy_name(["victim"]), namespace=ns)
    assert await back.pid.remote() != pid
    fresh = await pool.complete("victim", MSG)
    assert fresh.ok and time.monotonic() - t_kill < 180
    stop_worker_proxies(ns)


# -- rollouts: recursion and engine failures --------------------------------------------------


def scripted(tmp_path, default: str, rules=()) -> str:
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"default": default,
                                "rules": [{"match": m, "plan": p} for m, p in rules]}))
    return str(path)


OUTER = 'model_id = ["conductor"]\nsubtasks = ["Plan the answer."]\naccess_list = [[]]'
INNER = 'model_id = ["gpt-4o"]\nsubtasks = ["Answer."]\naccess_list = [[]]'


@pytest.mark.ray
def test_a_depth_one_recursive_workflow_runs_through_the_actor_graph(ray_cluster, tmp_path):
    from functools import partial

    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.policy.conductor import ConductorConfig
    from ray_conductor.rl.rewards import RewardConfig
    from ray_conductor.rl.rollout_group import RolloutGroup, _replay_judge

    ns = "test_graph_recursion"
    spec = GraphSpec.from_config(namespace=ns)
    data = load_pool("demo")
    gpt = [w for w in data.worker_infos() if w.name == "gpt-4o"]
    pool = make_ray_pool(spec, WorkerPoolConfig(workers=replay_workers("demo", gpt),
                                                replay="demo"), priority="rollout")
    cfg = ConductorConfig(engine="scripted", recursion_depth=1, max_resamples=0,
                          model=scripted(tmp_path, OUTER, [("An earlier workflow", INNER)]))
    actor = spec.build("rollout", cfg, RewardConfig(), pool, partial(_replay_judge, "demo", None))
    group = RolloutGroup([actor])
    q = next(q for q in select_queries(data, "test") if data.record(q.query_id, "gpt-4o").response)
    [(plan, trace)] = group.run([q])
    assert plan.workflow.workers == ("conductor",) and not plan.fell_back
    step = trace.steps[0]
    assert step.worker == "conductor" and step.error is None
    assert trace.answer == data.record(q.query_id, "gpt-4o").response  # via the inner plan
    assert step.cost == pytest.approx(data.record(q.query_id, "gpt-4o").cost)
    [t1, t2] = group.rollout([q], 2, iteration=0)
    assert t1.parsed and t1.calls == 1 and t1.correct == data.judge(q.query_id, trace.answer)
    group.shutdown()
    stop_worker_proxies(ns)


class FailingEngine:
    tokenizer = None

    def generate(self, *a, **kw):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def load_state_dict(self, sd):
        pass


async def test_a_failing_engine_is_an_error_in_rollouts_and_a_fallback_in_serving():
    from ray_conductor.data.replay import Query
    from ray_conductor.policy.conductor import Conductor, ConductorConfig
    from ray_conductor.rl.rewards import RewardConfig
    from ray_conductor.rl.rollout import RolloutWorker
    from ray_conductor.workers.base import WorkerInfo

    class Pool:
        def workers(self):
            return [WorkerInfo("a")]

    cfg = ConductorConfig(recursion_depth=0)
    w = RolloutWorker(cfg, RewardConfig(), Pool(), lambda q, t: False, engine=FailingEngine())
    with pytest.raises(EngineError, match="engine failed: RuntimeError: CUDA out of memory"):
        await w.rollout([Query("q", "What?")], 2, iteration=0)
    plan = Conductor(FailingEngine(), cfg).plan("What?", [WorkerInfo("a")])
    assert plan.fell_back and plan.errors == ["engine_error"]  # serving keeps answering
