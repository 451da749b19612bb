"""The architecture, checked: the graph module is the only place an actor class is
instantiated (Serve deployments are composed only in `serve.app`), every Ray actor class is
a role of the graph and takes its resources only from there, no two public classes share a
name, no module is over 500 lines; and a whole graph built from one config (serve, online
and training roles) runs only actors the spec declared, with the declared resources."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ray_conductor"
GRAPH = ROOT / "graph"
MAX_LINES = 500


def sources() -> dict[Path, ast.AST]:
    return {p: ast.parse(p.read_text()) for p in sorted(ROOT.rglob("*.py"))}


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def decorated(node: ast.ClassDef, *names: str) -> ast.expr | None:
    """The decorator of `node` that is one of `names` (`ray.remote`, `serve.deployment`),
    bare or called."""
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if ast.unparse(target) in names:
            return d
    return None


def classes_with(*names: str) -> dict[str, str]:
    """Class name -> "module:Class" of every class decorated with one of `names`."""
    out = {}
    for path, tree in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and decorated(node, *names) is not None:
                out[node.name] = f"{module_of(path)}:{node.name}"
    return out


def test_actors_are_created_only_in_the_graph_module():
    """`.options(...).remote(...)` on a class, or `Class.remote(...)`, outside `graph/`. A
    method call (`handle.method.remote`, `handle.stream.options(...).remote`) is not one."""
    actors = set(classes_with("ray.remote"))
    assert actors, "no actor class found: the scan is broken"
    bad = []
    for path, tree in sources().items():
        if GRAPH in path.parents:
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "remote"):
                continue
            target = node.func.value
            if (isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute)
                    and target.func.attr == "options"):
                target = target.func.value
            if isinstance(target, ast.Name) and (target.id in actors or target.id[0].isupper()
                                                 or target.id == "cls"):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)[:80]}")
    assert bad == []


def test_every_actor_class_is_a_graph_role_with_its_resources_only_there():
    from ray_conductor.graph import ACTOR_CLASSES

    found = classes_with("ray.remote")
    assert set(found.values()) == set(ACTOR_CLASSES.values())
    for path, tree in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                d = decorated(node, "ray.remote")
                assert d is None or not isinstance(d, ast.Call), (
                    f"{path.relative_to(ROOT)}: @ray.remote(...) on {node.name}: its resources "
                    "belong in the graph's declaration")


def test_serve_deployments_are_composed_only_in_build_app():
    from ray_conductor.graph.spec import SERVE_ROLES

    deployments = classes_with("serve.deployment")
    assert set(deployments.values()) == set(SERVE_ROLES.values())
    bad = []
    for path, tree in sources().items():
        spans = [(f.lineno, f.end_lineno) for f in ast.walk(tree)
                 if path == ROOT / "serve" / "app.py" and isinstance(f, ast.FunctionDef)
                 and f.name in ("build_app", "_planner_deployment")]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("bind", "run")):
                target = node.func.value
                if isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute):
                    target = target.func.value
                name = ast.unparse(target)
                inside = any(a <= node.lineno <= b for a, b in spans)
                if (name in deployments or name == "serve") and not inside:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bad == []


def test_replicas_build_no_actor_in_their_constructors():
    """Neither deployment's `__init__` reaches a builder of the graph (handles come through
    `.bind()`)."""
    builders = ("worker_pool", "make_ray_pool", "build_worker_proxies", "limits_actor",
                "traffic_actor", "build", "build_all", "get_actor")
    for rel in ("serve/ingress.py", "serve/planner.py"):
        tree = ast.parse((ROOT / rel).read_text())
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                    and decorated(n, "serve.deployment")):
            init = next(f for f in cls.body if isinstance(f, ast.FunctionDef)
                        and f.name == "__init__")
            calls = {n.func.attr if isinstance(n.func, ast.Attribute) else
                     getattr(n.func, "id", "") for n in ast.walk(init) if isinstance(n, ast.Call)}
            assert not calls & set(builders), (rel, calls & set(builders))


def test_no_two_public_classes_share_a_name():
    where: dict[str, list[str]] = defaultdict(list)
    for path, tree in sources().items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where[node.name].append(module_of(path))
    assert {n: m for n, m in where.items() if len(m) > 1} == {}


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_graph_declares_every_role_with_class_resources_count_restarts_and_name():
    from ray_conductor.graph import GraphSpec

    spec = GraphSpec.from_config()
    assert set(spec.roles) == {"worker_proxy", "rollout", "learner", "planner", "ingress",
                               "key_limits", "traffic_writer", "online_retrainer",
                               "rllib_env_runner", "rllib_learner"}
    assert {r.kind for r in spec.roles.values()} == {"actor", "serve", "rllib"}
    limits, writer = spec.role("key_limits"), spec.role("traffic_writer")
    assert limits.detached and limits.max_restarts == -1 and limits.num_cpus == 0
    assert writer.max_concurrency == 1000  # an async actor: feedback waits must not queue
    assert spec.role("online_retrainer").detached and spec.role("online_retrainer").num_cpus == 1
    assert spec.role("ingress").num_cpus == 0.1 and spec.role("ingress").max_count == 4
    assert spec.rllib_settings()["env_runners"]["num_env_runners"] == 0


def test_rllib_reads_its_runners_and_learners_from_the_spec():
    from ray_conductor.graph import ppo_graph
    from ray_conductor.lite.ppo import PPOSettings

    spec = ppo_graph(PPOSettings(num_env_runners=3, num_cpus_per_env_runner=0.5,
                                 num_learners=2, num_gpus_per_learner=1))
    got = spec.rllib_settings()
    assert got["env_runners"] == {"num_env_runners": 3, "num_cpus_per_env_runner": 0.5,
                                  "num_gpus_per_env_runner": 0.0}
    assert got["learners"] == {"num_learners": 2, "num_cpus_per_learner": 1.0,
                               "num_gpus_per_learner": 1}


# -- the whole graph on a cluster ------------------------------------------------------------


def _running() -> list[dict]:
    """Every live actor on the cluster, read from the GCS actor table (this test cluster has
    no dashboard for `ray.util.state`): class_name, name, ray_namespace, required_resources."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    out = []
    for raw in accessor.get_actor_table(None, "ALIVE"):
        a = gcs_pb2.ActorTableData.FromString(raw)
        out.append({"class_name": a.class_name, "name": a.name,
                    "ray_namespace": a.ray_namespace,
                    "required_resources": dict(a.required_resources)})
    return out


@pytest.mark.ray
@pytest.mark.slow
def test_the_whole_graph_from_one_config_runs_only_declared_actors(ray_cluster, tmp_path):
    """One `ServeConfig` (its `graph` declares serve, online and training roles): the app
    (proxies, key limits, traffic writer, the ingress), the online retrainer beside it and
    the training learners. Every live actor of those namespaces is a declared role, with
    the declared resources."""
    import ray

    from ray_conductor.graph import GraphSpec, stop_worker_proxies
    from ray_conductor.online.actor import build_retrainer
    from ray_conductor.online.config import as_retrain_config
    from ray_conductor.rl.learner import LearnerConfig
    from ray_conductor.serve.actors import close_app_actors
    from ray_conductor.serve.command import free_port, start, stop
    from ray_conductor.serve.config import as_serve_config

    ns, app = "test_architecture", "arch"
    cfg = as_serve_config({
        "app_name": app, "port": free_port(), "blocking": False, "log_dir": str(tmp_path / "traffic"),
        "api_keys": ["sk-architecture-test-key"], "policies": {"conductor": "lite:default"},
        "ray": {"namespace": ns}, "ingress": {"max_replicas": 1, "num_cpus": 0.05},
        "graph": {"workers_per_proxy": 12, "learner": {"num_cpus": 0.25, "count": 2},
                  "online_retrainer": {"num_cpus": 0.25}}})
    spec = GraphSpec.from_config(cfg.graph, ns, ingress=cfg.ingress)
    running = start(cfg)
    built = []
    try:
        retrain = as_retrain_config({"app": app, "model": "conductor",
                                     "state_dir": str(tmp_path / "online"),
                                     "ray": {"namespace": ns}})
        built.append(build_retrainer(retrain, spec))
        built += spec.build_all("learner", LearnerConfig(), "cpu")
        ray.get([h.__ray_ready__.remote() for h in built], timeout=300)
        declared = spec.declared()
        by_role = defaultdict(list)
        for a in _running():
            cls = a["class_name"]
            if a.get("ray_namespace") not in (ns, "serve") and not cls.startswith(
                    ("ServeReplica:", "WorkerProxy")):
                continue
            if cls.startswith("ServeReplica:"):
                if cls.split(":")[1] != app:
                    continue  # another test's app
                cls = f"ServeReplica:*:{cls.split(':')[2]}"
            elif cls in ("ServeController", "ProxyActor"):
                continue  # Serve's own system actors
            elif a.get("ray_namespace") != ns:
                continue
            assert cls in declared, f"{cls} runs in {ns!r} but the spec declares no such role"
            role = declared[cls]
            need = a.get("required_resources") or {}
            assert need.get("CPU", 0.0) == pytest.approx(role.num_cpus), (cls, need)
            assert need.get("GPU", 0.0) == pytest.approx(role.num_gpus), (cls, need)
            by_role[role.role].append(a)
        assert len(by_role["worker_proxy"]) == 1  # the demo pool's workers, 12 to a process
        assert [a["name"] for a in by_role["key_limits"]][0].startswith(f"serve/{app}/key")
        assert len(by_role["traffic_writer"]) == 1 and len(by_role["ingress"]) == 1
        assert len(by_role["online_retrainer"]) == 1 and len(by_role["learner"]) == 2
    finally:
        for h in built:
            ray.kill(h, no_restart=True)
        stop(running, shutdown_ray=False)
        close_app_actors(app, ns, timeout_s=30)
        stop_worker_proxies(ns)
