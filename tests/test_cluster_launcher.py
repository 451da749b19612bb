"""cluster/launcher/gpu-cluster.yaml: what `ray up` accepts, in the same shape as the KubeRay
manifests (a CPU head with the `proxy` resource, GPU nodes for the training graph)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "cluster" / "launcher" / "gpu-cluster.yaml"


def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def validated(cfg: dict) -> dict:
    """`ray up`'s own steps before it touches a cloud: fill in the provider's defaults, then
    check against ray/autoscaler/ray-schema.json."""
    cfg = prepare_config(copy.deepcopy(cfg))
    validate_config(cfg)
    return cfg


def test_ray_up_accepts_it():
    cfg = validated(launcher())
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"]["proxy"] > 0 and head["resources"]["GPU"] == 0
    gpu = [t for t in cfg["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu and all("proxy" not in t["resources"] for t in gpu)


def test_ray_ups_schema_would_refuse_a_broken_one():
    broken = launcher()
    broken["available_node_types"]["head"]["resources"]["proxy"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        validated(broken)
    broken = launcher()
    broken["available_node_types"]["head"].pop("node_config")
    with pytest.raises(jsonschema.ValidationError):
        validated(broken)


def test_the_gpu_nodes_fit_the_training_graph():
    from ray_conductor.config import load
    from ray_conductor.rl.trainer import TrainConfig

    cfg = load(TrainConfig, ["config=train_gpu"])
    gpu = [t for t in launcher()["available_node_types"].values() if t["resources"].get("GPU")]
    roles = [cfg.graph.rollout, cfg.graph.learner]
    assert sum(r.num_gpus * r.count for r in roles) <= sum(
        t["resources"]["GPU"] * t["max_workers"] for t in gpu)
    assert sum(r.num_cpus * r.count for r in roles) <= sum(
        t["resources"]["CPU"] * t["max_workers"] for t in gpu)


def test_the_head_starts_with_the_autoscaler_and_the_nodes_get_the_checkout():
    cfg = launcher()
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard` (SSH)
    [(remote, local)] = cfg["file_mounts"].items()
    assert local == "." and any(remote in c and "pip install" in c
                                for c in cfg["setup_commands"])
    assert {".git", ".venv", "runs"} <= set(cfg["rsync_exclude"])


def test_ray_is_stopped_by_its_own_pid_never_by_ray_stop():
    """`ray stop` ends every Ray on the machine; the launcher stops the one it started."""
    cfg = launcher()
    for key, pid in (("head_start_ray_commands", "~/ray_head.pid"),
                     ("worker_start_ray_commands", "~/ray_worker.pid")):
        commands = " ".join(cfg[key])
        assert "ray stop" not in commands and "pkill" not in commands
        assert "ray start" in commands and "--block" in commands
        assert f"echo $! > {pid}" in commands and f'kill "$(cat {pid})"' in commands


def test_every_node_runs_our_image_with_python_311_and_storage():
    """Ray's default AMI has no Python 3.11: Ray runs in our image (rayproject/ray ...-py311),
    with `storage` on the host's shared file system at /storage."""
    import re

    cfg = validated(launcher())
    docker = cfg["docker"]
    assert docker["image"] == "REGISTRY/ray-conductor:0.1.0"  # cluster/kuberay/image's name
    base = re.search(r"^FROM (\S+)$", (ROOT / "cluster" / "image" / "Dockerfile").read_text(),
                     re.MULTILINE).group(1)
    assert base.endswith("-py311-gpu")
    opts = " ".join(docker["run_options"])
    assert "--env RAY_CONDUCTOR_STORAGE=/storage" in opts and "--volume /storage:/storage" in opts
    assert "--shm-size" not in opts  # the launcher sizes /dev/shm from the node's memory
    [(remote, _)] = cfg["file_mounts"].items()
    assert remote.startswith("/home/ray/")  # the container's home, over the image's checkout
