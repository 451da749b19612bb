"""A Serve app's life on a shared cluster: built with absolute paths under `storage`, its
registry seeded, refused at build time when a reference names nothing; stopped within a job's
stop window, deleting only itself and its own named actors; never adopting a stale actor
built for another config; and the online loop against an app deployed from a hand-written
Serve config, recording every failed round."""

from __future__ import annotations

import json
import shutil

import pytest

from ray_conductor.errors import ConfigError
from ray_conductor.policy.registry import PolicyRegistry
from ray_conductor.serve.app import _with_policy, prepare, seed_registries
from ray_conductor.serve.command import stop_budget_s
from ray_conductor.serve.config import as_serve_config


def scripted_registry(root, versions=1):
    reg = PolicyRegistry(root)
    src = root.parent / f"{root.name}_src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "plans.json").write_text('{"rules": [], "default": "model_id = [0]"}')
    for _ in range(versions):
        reg.publish(src, kind="scripted")
    reg.promote(versions)
    return reg


def test_the_app_is_built_with_absolute_paths_under_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a replica's own directory must not matter
    reg = scripted_registry(tmp_path / "store" / "registries" / "x")
    cfg = as_serve_config({"storage": str(tmp_path / "store"), "app_name": "x",
                           "policies": {"conductor": "registry:registries/x", "k": "knn"}})
    settings = prepare(cfg)
    assert settings["config"]["log_dir"] == str(tmp_path / "store" / "traffic" / "x")
    assert settings["user_config"]["policies"]["conductor"] == f"registry:{reg.root}@1"
    assert settings["user_config"]["policies"]["k"] == "knn"


@pytest.mark.parametrize("ref, why", [
    ("lite:runs/nowhere/policy", "no lite policy directory"),
    ("scripted:nowhere.json", "no plan file"),
    ("registry:registries/empty", "holds no version yet"),
    ("registry:registries/x@7", "has no version 7"),
])
def test_a_reference_that_names_nothing_fails_the_build(tmp_path, ref, why):
    scripted_registry(tmp_path / "registries" / "x")
    cfg = as_serve_config({"storage": str(tmp_path), "policies": {"conductor": ref}})
    with pytest.raises(ConfigError, match=why):
        prepare(cfg)


def test_a_seed_fills_an_empty_registry_once_and_the_model_follows_it(tmp_path):
    cfg = {"storage": str(tmp_path), "policies": {"conductor": "registry:registries/c"},
           "seed": {"conductor": "lite:default"}}
    settings = prepare(as_serve_config(cfg))
    reg = PolicyRegistry(tmp_path / "registries" / "c")
    assert [v.kind for v in reg.versions()] == ["lite"] and reg.promoted().version == 1
    assert settings["user_config"]["policies"]["conductor"] == f"registry:{reg.root}"  # unpinned
    reg.promote(reg.publish(reg.get(1).path, kind="lite").version)  # online retraining
    prepare(as_serve_config(cfg))  # a redeploy: no new seed, the promoted version is served
    assert [v.version for v in reg.versions()] == [1, 2]
    with pytest.raises(ConfigError, match="a seed goes into the registry a model serves"):
        seed_registries({"conductor": "lite:default"}, {"conductor": "knn"})
    with pytest.raises(ConfigError, match="serves unpinned"):
        seed_registries({"conductor": "lite:default"}, {"conductor": f"registry:{reg.root}@1"})


def test_a_swap_keeps_the_other_models_of_a_config_that_names_none():
    schema = {"name": "a", "deployments": [{"name": "Ingress", "max_ongoing_requests": 9}]}
    live = {"conductor": "registry:/r@1", "knn": "knn"}
    out = _with_policy(schema, "conductor", "lite:/p", lambda: live)
    [ingress] = out["deployments"]
    assert ingress["user_config"]["policies"] == {"conductor": "lite:/p", "knn": "knn"}
    assert ingress["max_ongoing_requests"] == 9
    named = {"name": "a", "deployments": [{"name": "Ingress",
                                           "user_config": {"policies": {"conductor": "x"}}}]}
    again = _with_policy(named, "conductor", "knn", lambda: live)
    assert again["deployments"][0]["user_config"]["policies"] == {"conductor": "knn"}


def test_the_stop_fits_the_jobs_stop_window():
    job = {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}
    assert stop_budget_s(job) == 2.0  # Ray's default window of 3 s, less a second to exit
    assert stop_budget_s({**job, "RAY_JOB_STOP_WAIT_TIME_S": "30"}) == 29.0
    assert stop_budget_s({**job, "RAY_JOB_STOP_WAIT_TIME_S": "1"}) == 1.0
    assert stop_budget_s({}) == 60.0  # Ctrl-C on a laptop: no one will kill it


@pytest.mark.ray
def test_named_actors_carry_their_config_and_a_stale_one_is_retired(ray_cluster, tmp_path):
    import ray

    from ray_conductor.graph import GraphSpec
    from ray_conductor.serve.actors import app_actor, app_actors, close_app_actors, traffic_actor
    from ray_conductor.serve.traffic import request_row

    ns = "test_lifecycle"
    graph = GraphSpec.from_config(None, ns)
    old = traffic_actor(graph, "app", str(tmp_path / "old"), 10, 60.0)
    ray.get(old.append.remote([request_row(request_id="r1", time=1e9, model="m")]))
    assert app_actors("app", ns)["traffic"][0].startswith("serve/app/traffic@")
    same = traffic_actor(graph, "app", str(tmp_path / "old"), 10, 60.0)
    assert same._actor_id == old._actor_id  # the same config: the same actor
    new = traffic_actor(graph, "app", str(tmp_path / "new"), 10, 60.0)  # another log: not adopted
    [name] = app_actors("app", ns)["traffic"]
    assert ray.get(new.stats.remote())["root"] == str(tmp_path / "new")
    assert ray.get(app_actor("app", "traffic", ns).stats.remote())["root"] == str(
        tmp_path / "new")
    assert list((tmp_path / "old").rglob("*.parquet"))  # the stale one flushed before it went
    other = traffic_actor(graph, "app/b", str(tmp_path / "b"), 10, 60.0)
    close_app_actors("app", ns, timeout_s=30)
    assert app_actors("app", ns) == {}
    assert app_actors("app/b", ns)["traffic"]  # another app whose name starts alike: kept
    close_app_actors("app/b", ns, timeout_s=30)
    del other


def test_the_loop_prepares_an_app_deployed_from_a_hand_written_config(tmp_path):
    from ray_conductor.online.serving import ServeApp

    app = ServeApp("conductor")
    args = {"config": {"app_name": "conductor", "pool": "demo", "storage": str(tmp_path),
                       "policies": {"conductor": "knn"}}}
    settings = app._prepare(args)
    assert settings["pool_config"]["replay"] == "demo" and settings["pool_config"]["workers"]
    assert settings["config"]["log_dir"] == str(tmp_path / "traffic" / "conductor")
    with pytest.raises(ConfigError, match="no args.config"):
        app._prepare({})
    with pytest.raises(ConfigError, match="cannot be prepared here"):
        app._prepare({"config": {"pool": None, "workers": None}})


def test_a_round_that_crashes_after_adopting_records_failed(tmp_path):
    from online_stubs import App

    from ray_conductor.online.config import RetrainConfig
    from ray_conductor.online.loop import Retrainer
    from ray_conductor.lite import default_policy_dir

    lite = tmp_path / "lite"
    shutil.copytree(default_policy_dir(), lite)
    app = App(f"lite:{lite}")

    def read(_log_dir):
        raise KeyError("pool_config")

    cfg = RetrainConfig(app="a", model="online", state_dir=str(tmp_path / "state"))
    cfg.training.cost_penalty = 0.0
    loop = Retrainer(cfg, app, lambda penalty, kind="lite": None, read=read)
    with pytest.raises(KeyError):
        loop.round()
    rows = [json.loads(line) for line in (tmp_path / "state" / "decisions.jsonl").read_text()
            .splitlines()]
    assert [r["kind"] for r in rows] == ["adopted", "failed"]
    assert rows[1]["reason"] == "KeyError: 'pool_config'"
    assert app.ref == f"registry:{tmp_path / 'state' / 'registry'}@1"  # the app had switched


@pytest.mark.slow
def test_a_sigterm_handler_set_before_ray_starts_still_runs(tmp_path):
    """`ray.init` installs Ray's crash handler for SIGTERM over Python's; `init_ray` puts the
    Python one back, so `ray job stop` unwinds the CLI and the server (their clean-up runs)
    instead of ending the process on the spot."""
    import os
    import subprocess
    import sys

    code = (
        "import os, signal, threading, time\n"
        "def stop(s, f): raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "from ray_conductor.config import RayConfig\n"
        "from ray_conductor.runtime import init_ray\n"
        "init_ray(RayConfig(num_cpus=1))\n"
        "threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        "try:\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    print('cleaned up')\n")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=180, env=env, cwd=tmp_path, check=False)
    assert "cleaned up" in out.stdout, out.stderr[-2000:]
