"""cluster/runtime_env.yaml: valid for Ray's own parser, and a small upload from a checkout."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
import yaml
from ray._private.runtime_env.packaging import create_package
from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
from ray.runtime_env import RuntimeEnv

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_ENV = ROOT / "cluster" / "runtime_env.yaml"
SECRET_NAME = re.compile(r"(^|_)(KEYS?|TOKEN|SECRET|PASSWORD)(_|$)")
MAX_UPLOAD_MB = 16  # the demo pool is ~8 MB of it; Ray refuses packages over 512 MiB


def job_runtime_env(working_dir: str = ".") -> dict:
    """What `ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml` sends:
    Ray's CLI parser, then Ray's validation."""
    env = parse_runtime_env_args(runtime_env=str(RUNTIME_ENV), working_dir=working_dir)
    return dict(RuntimeEnv(**env))


def package(root: Path, tmp: Path) -> zipfile.ZipFile:
    """The zip Ray would upload for `--working-dir root`, ignoring .gitignore (as Ray does
    with RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1): the excludes alone must keep it small."""
    out = tmp / "pkg.zip"
    create_package(str(root), out, include_gitignore=False,
                   excludes=job_runtime_env()["excludes"])
    return zipfile.ZipFile(out)


def test_rays_parser_accepts_it():
    env = job_runtime_env()
    assert env["working_dir"] == "."
    assert env["env_vars"] == {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1",
                               "TOKENIZERS_PARALLELISM": "false"}
    assert {".git/", ".venv/", ".cache/", "/runs/", "/reports/"} <= set(env["excludes"])


def test_rays_parser_would_refuse_a_broken_one(tmp_path):
    """The check above can fail: Ray rejects what it cannot use."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pip": ["x"], "conda": {"dependencies": []}}))
    env = parse_runtime_env_args(runtime_env=str(bad))
    with pytest.raises(ValueError, match="cannot be specified at the same time"):
        RuntimeEnv(**env)


def test_env_vars_are_the_makefiles_minus_ray_settings():
    """The job sees what `make` exports for every command, except RAY_AUTH_MODE (a setting
    of the cluster, not of the job)."""
    exported = dict(re.findall(r"^export (\w+) \?= (\S+)$", (ROOT / "Makefile").read_text(),
                               re.MULTILINE))
    exported.pop("RAY_AUTH_MODE")
    assert job_runtime_env()["env_vars"] == exported


def test_secrets_are_never_in_the_runtime_env():
    for name in job_runtime_env()["env_vars"]:
        assert not SECRET_NAME.search(name), name


def test_the_checkout_uploads_small_and_complete(tmp_path):
    z = package(ROOT, tmp_path)
    size_mb = (tmp_path / "pkg.zip").stat().st_size / 2**20
    names = set(z.namelist())
    biggest = sorted(z.infolist(), key=lambda i: -i.compress_size)[:5]
    assert size_mb < MAX_UPLOAD_MB, [(i.filename, i.compress_size) for i in biggest]
    for needed in ("jobs/evaluate.py", "jobs/_entry.py", "configs/train_gpu.yaml",
                   "cluster/runtime_env.yaml", "pyproject.toml", "ray_conductor/cli.py",
                   "ray_conductor/assets/demo_pool/mmlu_pro_demo.parquet"):
        assert needed in names, needed
    top = {n.split("/")[0] for n in names}
    assert not top & {".git", ".venv", ".cache", "runs", "reports", "tests", "benchmarks"}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_excludes_drop_build_output_and_keep_code(tmp_path):
    tree = tmp_path / "tree"
    files = {".venv/lib/torch.so": "x", ".git/objects/ab": "x", "runs/r1/ckpt.pt": "x",
             "reports/eval.json": "x", "pkg/__pycache__/a.cpython-311.pyc": "x",
             "pkg.egg-info/PKG-INFO": "x", ".cache/ray_conductor/emb.npy": "x",
             "pkg/a.py": "code", "pkg/runs/keep.py": "code", "jobs/train.py": "code"}
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    kept = {n for n in package(tree, tmp_path).namelist() if not n.endswith("/")}
    assert kept == {"pkg/a.py", "pkg/runs/keep.py", "jobs/train.py"}


def test_the_image_leaves_out_what_the_upload_leaves_out():
    """cluster/image/Dockerfile.dockerignore and the runtime env's excludes: one list."""
    def norm(p: str) -> str:
        return p.strip().removeprefix("**/").strip("/")

    ignore = [ln for ln in (ROOT / "cluster" / "image" / "Dockerfile.dockerignore")
              .read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert {norm(p) for p in ignore} == {norm(p) for p in job_runtime_env()["excludes"]}
