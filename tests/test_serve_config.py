"""The serve configs: the Serve config YAML under cluster/ is one `serve deploy` accepts and its
`import_path` builds the app; configs/serve.yaml is a valid `ServeConfig`; what a deploy
carries holds key digests only; the policies live in the ingress, and the planner deployment
(only for an LM conductor) takes its resources from the graph declaration."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ray_conductor.config import load
from ray_conductor.errors import ConfigError
from ray_conductor.serve.config import ServeConfig, as_serve_config, served_policies

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster" / "serve" / "conductor.yaml"


NS = "test_serve_config"


def cleanup(app):
    """The actors `build_app` created (it builds them through the graph)."""
    from ray_conductor.graph import stop_worker_proxies
    from ray_conductor.serve.actors import close_app_actors

    close_app_actors(app, NS, timeout_s=30)
    stop_worker_proxies(NS)


def _deployment(app, name):
    return next(d for d in app.deployments if d.name == name)


@pytest.mark.ray
def test_the_cluster_serve_config_validates_and_builds(ray_cluster):
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from ray_conductor.serve.app import app_builder

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CLUSTER_YAML.read_text()))
    (app,) = schema.applications
    assert app.import_path == "ray_conductor.serve.app:app_builder"
    assert [d.name for d in app.deployments] == ["Ingress"]  # lite and kNN plan in the ingress
    assert "user_config" not in app.deployments[0].model_fields_set  # the builder sets it
    args = dict(app.args)  # the builder creates the app's actors: on this cluster, which has
    args["config"] = {**args["config"], "graph": {},  # no `proxy` resource for its proxies
                      "ray": {"namespace": NS}}
    try:
        built = app_builder(args)
    finally:
        cleanup(args["config"].get("app_name", "conductor"))
    assert isinstance(built, Application)


def test_the_default_config_file_loads():
    cfg = as_serve_config(load(ServeConfig, ["port=9000", "policy=cheapest"], defaults="serve"))
    assert cfg.port == 9000 and cfg.pool == "demo" and cfg.graph.workers_per_proxy == 16
    assert served_policies(cfg) == {"conductor": "cheapest", "conductor-lite": "lite:default"}
    with pytest.raises(ConfigError, match="ingress"):
        as_serve_config({"ingress": {"max_ongoing_requests": "many"}})


def test_a_deploy_carries_key_digests_and_pinned_versions_only(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.serve.app import app_schema, prepare
    from ray_conductor.serve.keys import load_keys

    src = tmp_path / "v"
    src.mkdir()
    (src / "plans.json").write_text('{"rules": [], "default": "model_id = [0]"}')
    reg = PolicyRegistry(tmp_path / "reg")
    reg.publish(src, kind="scripted")
    reg.publish(src, kind="scripted")
    reg.promote(2)
    cfg = as_serve_config({"api_keys": ["sk-secret-key-1"],
                           "policies": {"conductor": f"registry:{tmp_path / 'reg'}"}})
    settings = prepare(cfg, keys=[r.to_dict() for r in load_keys(cfg.api_keys)])
    text = repr(settings)
    assert "sk-secret-key-1" not in text and settings["config"]["api_keys"] == []
    assert settings["user_config"]["policies"]["conductor"].endswith("@2")  # pinned
    deploy = {"applications": [app_schema(cfg, settings)]}
    ServeDeploySchema.model_validate(deploy)


@pytest.mark.ray
def test_an_lm_conductor_plans_in_a_planner_with_the_graphs_resources(ray_cluster, tmp_path):
    from ray.serve._private.build_app import build_app as serve_build

    from ray_conductor.serve.app import app_schema, build_app, prepare

    graph = {"planner": {"num_cpus": 2, "num_gpus": 1, "count": 2, "max_concurrency": 8}}
    lm = str(tmp_path / "my_conductor_run")  # a run directory: an LM conductor
    cfg = as_serve_config({"graph": graph, "ingress": {"max_ongoing_requests": 300},
                           "policies": {"conductor": lm, "router": "cheapest"},
                           "ray": {"namespace": NS}})
    try:
        built = serve_build(build_app(cfg, prepare(cfg)), name="x")
    finally:
        cleanup(cfg.app_name)
    planner, ingress = _deployment(built, "Planner"), _deployment(built, "Ingress")
    assert planner.num_replicas == 2 and planner.max_ongoing_requests == 8
    assert planner.ray_actor_options["num_gpus"] == 1
    assert planner.ray_actor_options["num_cpus"] == 2
    assert planner._deployment_config.user_config == {"policies": {"conductor": lm}}
    served = ingress._deployment_config.user_config["policies"]
    assert served["conductor"] == lm and served["router"] == "cheapest"  # (and the defaults)
    assert ingress.max_ongoing_requests == 300
    assert ingress._deployment_config.autoscaling_config.max_replicas == 4
    names = [d["name"] for d in app_schema(cfg, prepare(cfg))["deployments"]]
    assert names == ["Ingress", "Planner"]
    local = as_serve_config({"graph": graph, "policies": {"conductor": "cheapest"},
                             "ray": {"namespace": NS}})
    try:
        built = serve_build(build_app(local, prepare(local)), name="y")
    finally:
        cleanup(local.app_name)
    assert [d.name for d in built.deployments] == ["Ingress"]  # no LM: no planner, no GPU


def test_serving_imports_no_training_code_and_the_core_no_ray():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import ray_conductor.serve.gateway, ray_conductor.serve.traffic, "
        "ray_conductor.serve.policies, ray_conductor.serve.host, ray_conductor.serve.limits\n"
        "assert 'ray' not in sys.modules, 'the pure core imported ray'\n"
        "import ray_conductor.serve.app, ray_conductor.serve.command, "
        "ray_conductor.serve.ingress, ray_conductor.serve.planner\n"
        "bad = [m for m in sys.modules if m.startswith('ray_conductor.rl')]\n"
        "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_job_entrypoint_refuses_bad_arguments_in_one_line():
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "jobs/serve.py", "nonsense"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2
    assert "not key=value" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_the_load_benchmark_pairs_rounds_and_finds_the_slowest_chain():
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load",
                                                  ROOT / "benchmarks" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    steps = [{"latency_s": 0.2, "access": []}, {"latency_s": 0.3, "access": []},
             {"latency_s": 0.1, "access": [0, 1]}]
    assert bench._slowest_chain(steps) == pytest.approx(0.4)

    def side(rps):
        return {"rps": rps, "p50_ms": 10.0, "p99_ms": 20.0, "errors": 0, "warmup_errors": 0}

    rounds = {"conductor": [side(40), side(10)], "cheapest": [side(50), side(20)],
              "pass_through": [side(60), side(30)], "bare": [side(100), side(20)]}
    chain = {"p50_ms": 600.0, "p99_ms": 700.0, "measured_chain_p50_ms": 550.0, "errors": 0}
    summary = bench.summarize(rounds, chain, argparse.Namespace(worker_latency_s=0.25))
    assert summary["throughput_ratio_vs_bare_serve"] == pytest.approx(0.45)  # (0.4+0.5)/2
    assert summary["overhead_ratio_vs_critical_path"] == pytest.approx(1.2)
    assert summary["errors"] == 0


def test_a_swap_names_the_deployments_that_plan():
    from ray_conductor.errors import ConfigError as Err
    from ray_conductor.serve.app import _with_policy

    schema = {"name": "a", "deployments": [
        {"name": "Ingress", "user_config": {"policies": {"c": "knn", "m": "/lm"}}},
        {"name": "Planner", "user_config": {"policies": {"m": "/lm"}}}]}
    to_local = _with_policy(schema, "m", "cheapest")
    assert to_local["deployments"][0]["user_config"]["policies"] == {"c": "knn",
                                                                     "m": "cheapest"}
    assert to_local["deployments"][1]["user_config"]["policies"] == {}
    to_lm = _with_policy(schema, "c", "/other_lm")
    assert to_lm["deployments"][1]["user_config"]["policies"] == {"m": "/lm",
                                                                  "c": "/other_lm"}
    with pytest.raises(Err, match="has none"):
        _with_policy({"name": "a", "deployments": [{"name": "Ingress"}]}, "c", "/lm")


def test_the_stream_benchmark_takes_the_workers_time_out_of_its_overhead():
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_stream",
                                                  ROOT / "benchmarks" / "serve_stream.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [{"shape": "one_step", "ttft_s": 0.06, "total_s": 1.0, "ttft_overhead_s": 0.01,
             "final_first_token_s": 0.05},
            {"shape": "three_step", "ttft_s": 0.5, "total_s": 1.4, "ttft_overhead_s": 0.02,
             "final_first_token_s": 0.05}]
    out = bench.summarize(rows, argparse.Namespace(tokens=20, token_delay_s=0.05,
                                                   first_token_s=0.0, concurrency=1))
    assert out["one_step"]["ttft_over_total_p50"] == pytest.approx(0.06)
    assert out["three_step"]["ttft_overhead_ms_p50"] == pytest.approx(20.0)
    assert out["stream_s"] == pytest.approx(1.0) and out["errors"] == 0
