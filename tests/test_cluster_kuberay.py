"""The KubeRay manifests under cluster/kuberay/: valid against the KubeRay CRD fields they use,
consistent with the configs they run (GPUs, the `proxy` resource, the runtime env, the Serve
config), carrying API keys by Secret name only, and applying as shipped: the image from one
place (the kustomize Component cluster/kuberay/image, rendered with `kubectl kustomize` where
kubectl is installed), `storage` and /dev/shm on every pod, no GPU node on apply.

No installed package ships the KubeRay CRD files (ray, the kubernetes client and codeflare-sdk
were checked), and this machine cannot fetch them, so the schema is still the subset below.

The schema below is a hand-written subset of the KubeRay v1 API (apiVersion ray.io/v1), read
from ray-project/kuberay ray-operator/apis/ray/v1/{rayjob,raycluster,rayservice}_types.go and
the CRDs generated from them (config/crd/bases/ray.io_rayjobs.yaml, ray.io_rayservices.yaml),
KubeRay v1.0 to v1.4. `required` is the union over those versions (v1.0 still requires
rayStartParams, minReplicas and maxReplicas). Objects reject fields outside the subset: the API
server silently prunes unknown fields, so a misspelt key would otherwise vanish unnoticed; a
field we start using is added here from the CRD. The pod template is the part of Kubernetes'
PodTemplateSpec our manifests use, with the API server's own checks (image, port names).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.runtime_env import RuntimeEnv

ROOT = Path(__file__).resolve().parent.parent
KUBERAY = ROOT / "cluster" / "kuberay"
SERVE_CONFIG = ROOT / "cluster" / "serve" / "conductor.yaml"
SECRET_NAME = re.compile(r"(^|_)(KEYS?|TOKEN|SECRET|PASSWORD)(_|$)")

# -- the schema subset --------------------------------------------------------------------------

STR, BOOL, NUM = {"type": "string"}, {"type": "boolean"}, {"type": "number"}
INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")}]}


def obj(props: dict[str, Any], *required: str) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


def strmap(value: dict[str, Any] = STR) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": value}


def arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


NAMED = obj({"name": STR, "optional": BOOL}, "name")
CONTAINER = obj({
    "name": STR, "image": STR, "imagePullPolicy": enum("Always", "IfNotPresent", "Never"),
    "command": arr(STR), "args": arr(STR),
    "env": arr(obj({"name": STR, "value": STR, "valueFrom": obj({
        "secretKeyRef": obj({"name": STR, "key": STR, "optional": BOOL}, "key")})}, "name")),
    "envFrom": arr(obj({"secretRef": NAMED, "configMapRef": NAMED, "prefix": STR})),
    "resources": obj({"limits": strmap(QUANTITY), "requests": strmap(QUANTITY)}),
    "ports": arr(obj({"containerPort": INT32, "name": {"type": "string", "maxLength": 15},
                      "protocol": enum("TCP", "UDP", "SCTP")}, "containerPort")),
    "volumeMounts": arr(obj({"name": STR, "mountPath": STR, "readOnly": BOOL, "subPath": STR},
                            "name", "mountPath")),
}, "name", "image")
POD_TEMPLATE = obj({
    "metadata": obj({"labels": strmap(), "annotations": strmap()}),
    "spec": obj({
        "containers": {**arr(CONTAINER), "minItems": 1},
        "volumes": arr(obj({"name": STR,
                            "persistentVolumeClaim": obj({"claimName": STR, "readOnly": BOOL},
                                                         "claimName"),
                            "emptyDir": obj({"medium": STR, "sizeLimit": QUANTITY})}, "name")),
        "tolerations": arr(obj({"key": STR, "operator": enum("Exists", "Equal"), "value": STR,
                                "effect": enum("NoSchedule", "PreferNoSchedule", "NoExecute"),
                                "tolerationSeconds": {"type": "integer"}})),
        "nodeSelector": strmap(), "serviceAccountName": STR,
    }, "containers"),
}, "spec")
HEAD_GROUP = obj({"rayStartParams": strmap(), "template": POD_TEMPLATE, "serviceType": STR,
                  "enableIngress": BOOL}, "rayStartParams", "template")
WORKER_GROUP = obj({
    "groupName": STR, "replicas": {**INT32, "minimum": 0}, "minReplicas": {**INT32, "minimum": 0},
    "maxReplicas": {**INT32, "minimum": 0}, "numOfHosts": {**INT32, "minimum": 1},
    "rayStartParams": strmap(), "template": POD_TEMPLATE, "suspend": BOOL,
}, "groupName", "minReplicas", "maxReplicas", "rayStartParams", "template")
CLUSTER_SPEC = obj({
    "rayVersion": STR, "enableInTreeAutoscaling": BOOL,
    "autoscalerOptions": obj({"idleTimeoutSeconds": INT32,
                              "upscalingMode": enum("Default", "Aggressive", "Conservative")}),
    "headGroupSpec": HEAD_GROUP, "workerGroupSpecs": arr(WORKER_GROUP),
    "headServiceAnnotations": strmap(), "suspend": BOOL,
}, "headGroupSpec")
METADATA = obj({"name": STR, "namespace": STR, "labels": strmap(), "annotations": strmap()},
               "name")


def resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return obj({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind},
                "metadata": METADATA, "spec": spec}, "apiVersion", "kind", "metadata", "spec")


SCHEMAS = {
    "RayJob": resource("RayJob", obj({
        "entrypoint": STR, "runtimeEnvYAML": STR, "jobId": STR, "metadata": strmap(),
        "submissionMode": enum("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"),
        "shutdownAfterJobFinishes": BOOL, "ttlSecondsAfterFinished": {**INT32, "minimum": 0},
        "activeDeadlineSeconds": {**INT32, "minimum": 1}, "backoffLimit": {**INT32, "minimum": 0},
        "entrypointNumCpus": NUM, "entrypointNumGpus": NUM, "entrypointResources": STR,
        "suspend": BOOL, "clusterSelector": strmap(), "rayClusterSpec": CLUSTER_SPEC})),
    "RayService": resource("RayService", obj({
        "serveConfigV2": STR, "rayClusterConfig": CLUSTER_SPEC,
        "upgradeStrategy": obj({"type": enum("NewCluster", "None", "IncrementalUpgrade")}),
        "excludeHeadPodFromServeSvc": BOOL,
        "rayClusterDeletionDelaySeconds": {**INT32, "minimum": 0}}, "rayClusterConfig")),
    "RayCluster": resource("RayCluster", CLUSTER_SPEC),
}


def check(doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError naming the path of the first problem."""
    if doc.get("kind") not in SCHEMAS:
        raise jsonschema.ValidationError(f"kind {doc.get('kind')!r}: not a KubeRay resource")
    jsonschema.validate(doc, SCHEMAS[doc["kind"]])


# -- the manifests ------------------------------------------------------------------------------

KINDS = ("raycluster", "rayjob-train", "rayservice")  # one directory (a kustomization) each
MANIFESTS = {f"{k}.yaml": yaml.safe_load((KUBERAY / k / f"{k}.yaml").read_text()) for k in KINDS}
IMAGE_COMPONENT = yaml.safe_load((KUBERAY / "image" / "kustomization.yaml").read_text())


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec


def groups(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The head group, then the worker groups."""
    cs = cluster_spec(doc)
    return [cs["headGroupSpec"], *cs.get("workerGroupSpecs", [])]


def start_resources(group: dict[str, Any]) -> dict[str, float]:
    """rayStartParams.resources, written as KubeRay wants it: a quoted JSON string."""
    raw = group["rayStartParams"].get("resources")
    return json.loads(json.loads(raw)) if raw else {}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for g in groups(doc) for c in g["template"]["spec"]["containers"]]


def test_the_three_kinds_are_there():
    kinds = {name: doc["kind"] for name, doc in MANIFESTS.items()}
    assert kinds == {"raycluster.yaml": "RayCluster", "rayjob-train.yaml": "RayJob",
                     "rayservice.yaml": "RayService"}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_matches_the_crd_fields(name):
    check(MANIFESTS[name])


BROKEN = {
    "misspelt field (pruned silently by the API server)":
        lambda d: d["spec"].update(shutdownAfterJobFinish=True),
    "number where the CRD has map[string]string":
        lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]
        .update({"num-gpus": 8}),
    "unknown submissionMode": lambda d: d["spec"].update(submissionMode="K8sJob"),
    "worker group without groupName":
        lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"),
    "head group without template":
        lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].pop("template"),
    "container without image": lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"][
        "template"]["spec"]["containers"][0].pop("image"),
    "bad quantity": lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["resources"]["limits"].update(memory="32 GB"),
    "negative ttl": lambda d: d["spec"].update(ttlSecondsAfterFinished=-1),
    "RayService spelling of the cluster in a RayJob":
        lambda d: d["spec"].update(rayClusterConfig=d["spec"]["rayClusterSpec"]),
}


@pytest.mark.parametrize("why", sorted(BROKEN))
def test_the_checker_refuses_a_broken_manifest(why):
    doc = copy.deepcopy(MANIFESTS["rayjob-train.yaml"])
    BROKEN[why](doc)
    with pytest.raises(jsonschema.ValidationError):
        check(doc)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_the_head_holds_every_worker_proxy_and_no_gpu(name):
    head, *workers = groups(MANIFESTS[name])
    assert start_resources(head).get("proxy", 0) > 0
    assert head["rayStartParams"].get("num-gpus") == "0"
    assert all("proxy" not in start_resources(w) for w in workers)  # proxies land on the head


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_each_group_tells_ray_what_kubernetes_gives_it(name):
    for g in groups(MANIFESTS[name]):
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert g["rayStartParams"].get("num-gpus", "0") == str(limits.get("nvidia.com/gpu", "0"))
        assert int(g["rayStartParams"]["num-cpus"]) <= int(limits["cpu"])


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_every_mount_names_a_volume_of_its_pod(name):
    for g in groups(MANIFESTS[name]):
        spec = g["template"]["spec"]
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes
            assert {"name": "RAY_CONDUCTOR_DATA", "value": "/data"} in c["env"]
            assert "/data" in {m["mountPath"] for m in c["volumeMounts"]}


def image() -> str:
    """The one image name: the kustomize Component's, REGISTRY a documented placeholder."""
    assert IMAGE_COMPONENT["kind"] == "Component"
    [entry] = IMAGE_COMPONENT["images"]
    assert entry["name"] == "ray-conductor" and entry["newName"] == "REGISTRY/ray-conductor"
    return f"{entry['newName']}:{entry['newTag']}"


def test_one_image_one_ray_version():
    """Every pod runs the image built from cluster/image/Dockerfile (Python 3.11), on the Ray we
    pin, named in one place; the Dockerfile, the launcher and the README name the same."""
    dockerfile = (ROOT / "cluster" / "image" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)$", dockerfile, re.MULTILINE).group(1)
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"ray[serve,rllib]=={ray.__version__}"' in pyproject
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)
    assert image() == f"REGISTRY/ray-conductor:{version}"
    for doc in MANIFESTS.values():
        assert cluster_spec(doc)["rayVersion"] == ray.__version__
        assert {c["image"] for c in containers(doc)} == {"ray-conductor"}  # the Component's
    assert f"-t {image()} ." in dockerfile
    launcher = yaml.safe_load((ROOT / "cluster" / "launcher" / "gpu-cluster.yaml").read_text())
    assert launcher["docker"]["image"] == image()
    readme = (ROOT / "README.md").read_text() + (ROOT / "cluster" / "README.md").read_text()
    named = set(re.findall(r"[\w./-]*ray-conductor:[\w.]+", readme))
    assert named == {image()}, named


@pytest.mark.parametrize("kind", KINDS)
def test_each_kustomization_applies_the_volumes_and_the_image(kind):
    k = yaml.safe_load((KUBERAY / kind / "kustomization.yaml").read_text())
    assert k["resources"] == ["../volumes", f"{kind}.yaml"] and k["components"] == ["../image"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("kind", KINDS)
def test_kustomize_renders_every_pod_with_the_one_image(kind):
    out = subprocess.run(["kubectl", "kustomize", str(KUBERAY / kind)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    [doc] = [d for d in docs if d["apiVersion"] == "ray.io/v1"]
    check(doc)
    assert {c["image"] for c in containers(doc)} == {image()}
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"} == {
        "conductor-data", "conductor-models", "conductor-storage"}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_every_pod_has_storage_and_shared_memory(name):
    """Outputs go to the shared volume (`storage`), never a pod's disk or Ray's upload cache;
    /dev/shm is in memory (Docker's default of 64 MB would starve the object store)."""
    for g in groups(MANIFESTS[name]):
        spec = g["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
        assert volumes["storage"]["persistentVolumeClaim"] == {"claimName": "conductor-storage"}
        for c in spec["containers"]:
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert mounts["/dev/shm"]["name"] == "dshm"
            assert mounts["/storage"]["name"] == "storage" and not mounts["/storage"].get(
                "readOnly")
            assert {"name": "RAY_CONDUCTOR_STORAGE", "value": "/storage"} in c["env"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayservice.yaml"])
def test_the_gpu_group_starts_empty_and_autoscales(name):
    cs = cluster_spec(MANIFESTS[name])
    assert cs["enableInTreeAutoscaling"] is True
    for w in cs["workerGroupSpecs"]:
        assert w["replicas"] == 0 and w["minReplicas"] == 0 and w["maxReplicas"] >= 1


def test_api_keys_come_from_a_secret_by_name_only():
    for path in sorted((ROOT / "cluster").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), path
    for doc in MANIFESTS.values():
        for c in containers(doc):
            assert c["envFrom"] == [{"secretRef": {"name": "conductor-api-keys",
                                                   "optional": True}}]
            for e in c.get("env", []):
                assert not (SECRET_NAME.search(e["name"]) and "value" in e), e["name"]


# -- the training job ---------------------------------------------------------------------------


def load_command_config(command: str, args: list[str]) -> Any:
    """The command's typed config from `args`, as the job would load it (keys and ranges)."""
    import importlib

    from ray_conductor.cli import COMMANDS
    from ray_conductor.config import load

    c = COMMANDS[command]
    schema = c.schema
    if isinstance(schema, str):
        module, name = schema.split(":")
        schema = getattr(importlib.import_module(module), name)
    return load(schema, args, defaults=c.defaults)


def test_the_training_job_runs_our_job_script_with_a_config_that_loads():
    job = MANIFESTS["rayjob-train.yaml"]["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"] and (ROOT / argv[1]).is_file()
    cfg = load_command_config("train", argv[2:])
    from ray_conductor.storage import output_path, resolve_storage

    assert cfg.model.startswith("/models/")  # the read-only models volume
    # run_dir is relative: under the pods' storage, the shared volume
    assert output_path(resolve_storage("/storage"), cfg.run_dir, "run_dir").startswith(
        "/storage/runs/")
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0


def test_the_gpu_group_fits_the_training_graph():
    """configs/train_gpu.yaml's rollout and learner actors fit the GPU group; its proxies ask
    for the head's `proxy` resource."""
    doc = MANIFESTS["rayjob-train.yaml"]
    cfg = load_command_config("train", shlex.split(doc["spec"]["entrypoint"])[2:])
    head, *workers = groups(doc)
    gpus = sum(float(w["rayStartParams"].get("num-gpus", 0)) * w["maxReplicas"] for w in workers)
    cpus = sum(float(w["rayStartParams"]["num-cpus"]) * w["maxReplicas"] for w in workers)
    roles = [cfg.graph.rollout, cfg.graph.learner]
    assert sum(r.num_gpus * r.count for r in roles) <= gpus
    assert sum(r.num_cpus * r.count for r in roles) <= cpus
    assert all(r.num_gpus > 0 for r in roles)  # so neither lands on the GPU-less head
    assert set(cfg.graph.worker_proxy.resources) == {"proxy"}
    assert set(cfg.graph.worker_proxy.resources) <= set(start_resources(head))


def test_the_training_job_uses_the_runtime_env_file():
    """runtimeEnvYAML is cluster/runtime_env.yaml with the image's checkout as working_dir."""
    job = yaml.safe_load(MANIFESTS["rayjob-train.yaml"]["spec"]["runtimeEnvYAML"])
    assert job.pop("working_dir") == "/home/ray/ray_conductor"
    assert "WORKDIR /home/ray/ray_conductor" in (ROOT / "cluster/image/Dockerfile").read_text()
    # Ray's own validation; it checks that a local working_dir exists, as it does in the
    # submitter pod (the image's checkout): here, this checkout stands in for it
    env = dict(RuntimeEnv(**job, working_dir=str(ROOT)))
    assert env == dict(RuntimeEnv(**yaml.safe_load((ROOT / "cluster/runtime_env.yaml")
                                                   .read_text()), working_dir=str(ROOT)))


# -- serving ------------------------------------------------------------------------------------


def test_serve_config_v2_is_the_serve_config_verbatim():
    """Fails while cluster/serve/conductor.yaml is missing or differs from the RayService's
    serveConfigV2 (fix: python cluster/kuberay/sync_rayservice.py)."""
    embedded = MANIFESTS["rayservice.yaml"]["spec"]["serveConfigV2"]
    source = SERVE_CONFIG.read_text()
    assert yaml.safe_load(embedded) == yaml.safe_load(source)
    assert embedded.rstrip("\n") == source.rstrip("\n")


def test_serve_config_v2_is_a_valid_serve_deploy_config():
    from ray.serve.schema import ServeDeploySchema

    cfg = ServeDeploySchema.model_validate(yaml.safe_load(
        MANIFESTS["rayservice.yaml"]["spec"]["serveConfigV2"]))
    assert cfg.http_options.port == 8000  # the port the head and worker pods expose
    for app in cfg.applications:
        working_dir = (app.runtime_env or {}).get("working_dir")
        # KubeRay cannot upload a local directory: only remote URIs work there
        assert working_dir is None or "://" in working_dir, working_dir
    for doc in (MANIFESTS["rayservice.yaml"],):
        head = groups(doc)[0]["template"]["spec"]["containers"][0]
        assert {"containerPort": 8000, "name": "serve"} in head["ports"]


def test_the_sync_script_embeds_any_serve_config_verbatim():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync", KUBERAY / "sync_rayservice.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    serve = "# a comment\nproxy_location: EveryNode\n\napplications:\n  - name: a\n" \
            "    import_path: m:f   # trailing comment\n"
    text = sync.embedded((KUBERAY / "rayservice" / "rayservice.yaml").read_text(), serve)
    doc = yaml.safe_load(text)
    assert doc["spec"]["serveConfigV2"] == serve
    assert doc["spec"]["rayClusterConfig"] == MANIFESTS["rayservice.yaml"]["spec"][
        "rayClusterConfig"]
    assert sync.embedded(text, serve) == text  # idempotent


def test_every_claim_is_declared_in_volumes_yaml():
    claims = {d["metadata"]["name"]: d for d in
              yaml.safe_load_all((KUBERAY / "volumes" / "volumes.yaml").read_text())}
    assert all(d["kind"] == "PersistentVolumeClaim" and d["apiVersion"] == "v1"
               and d["spec"]["accessModes"] == ["ReadWriteMany"]  # every node mounts them
               for d in claims.values())
    used = {v["persistentVolumeClaim"]["claimName"] for doc in MANIFESTS.values()
            for g in groups(doc) for v in g["template"]["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v}
    assert used == set(claims)


def test_the_serve_config_pins_proxies_and_builds_a_small_retrainable_app(ray_cluster, tmp_path):
    """The shipped Serve config: worker proxies ask for the head's `proxy` resource; built
    (as `serve deploy` builds it, storage from the environment) it seeds the registry model
    `conductor` follows with the lite policy, resolves the traffic log under storage, and
    asks for a fraction of a CPU: lite and kNN plan in the ingress, no planner deployment."""
    from ray.serve._private.build_app import build_app as serve_build

    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.serve.app import app_builder
    from ray_conductor.serve.config import as_serve_config

    [app] = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    config = app["args"]["config"]
    head = groups(MANIFESTS["rayservice.yaml"])[0]
    proxy = config["graph"]["worker_proxy"]["resources"]
    assert set(proxy) == {"proxy"} and 0 < proxy["proxy"] <= start_resources(head)["proxy"]
    assert "log_dir" not in config and "storage" not in config  # both from the environment
    assert not any("user_config" in d for d in app["deployments"])  # the builder's
    args = copy.deepcopy(app["args"])
    args["config"]["storage"] = str(tmp_path)
    # the builder creates the app's actors through the graph: on this test's cluster, which
    # has no `proxy` resource, and in a namespace of its own
    args["config"]["graph"]["worker_proxy"]["resources"] = {}
    args["config"]["ray"] = {"namespace": "test_kuberay_build"}
    try:
        built = serve_build(app_builder(args), name=app["name"]).deployments
    finally:
        from ray_conductor.graph import stop_worker_proxies
        from ray_conductor.serve.actors import close_app_actors

        close_app_actors(config.get("app_name", "conductor"), "test_kuberay_build", timeout_s=30)
        stop_worker_proxies("test_kuberay_build")
    assert [d.name for d in built] == ["Ingress"]
    [ingress] = built
    assert 0 < ingress.ray_actor_options["num_cpus"] < 1
    reg = PolicyRegistry(tmp_path / "registries" / "conductor")
    assert reg.promoted().kind == "lite" and reg.promoted().meta["source"] == "lite:default"
    policies = ingress._deployment_config.user_config["policies"]
    assert policies == {"conductor": f"registry:{reg.root}", "conductor-knn": "knn",
                        "conductor-lite": "lite:default"}  # the latter: ServeConfig.policies
    settings = ingress.init_args[1]
    assert settings["config"]["storage"] == str(tmp_path)
    assert as_serve_config(settings["config"]).log_dir == str(tmp_path / "traffic" / "conductor")
