"""`storage`: one setting every output resolves under (ray_conductor/storage.py), through
pyarrow.fs; nothing lands in a Ray job's working-directory cache."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import pytest

from ray_conductor.errors import ConfigError
from ray_conductor.storage import (
    STORAGE_ENV,
    fill,
    output_path,
    place,
    resolve_reference,
    resolve_storage,
)

CACHE = "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_abc"


@dataclass
class Inner:
    eval_out: str = "reports/demo.json"


@dataclass
class Cfg:
    storage: str | None = None
    app_name: str = "conductor"
    log_dir: str = "traffic/{app_name}"
    out: str | None = None
    policies: dict = field(default_factory=lambda: {"a": "lite:default", "b": "knn"})
    demo: Inner = field(default_factory=Inner)


def test_the_default_is_the_environment_then_home(monkeypatch):
    monkeypatch.setenv(STORAGE_ENV, "/srv/rc")
    assert resolve_storage(None).uri == "/srv/rc"
    monkeypatch.delenv(STORAGE_ENV)
    assert resolve_storage("").uri == os.path.expanduser("~/ray_conductor")


def test_a_relative_storage_is_this_directory_but_never_a_job_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_storage("out").uri == str(tmp_path / "out")
    cache = tmp_path / CACHE.lstrip("/")
    cache.mkdir(parents=True)
    monkeypatch.chdir(cache)
    with pytest.raises(ConfigError, match="relative, and this job's working directory is "
                                          "Ray's upload cache"):
        resolve_storage("runs")
    with pytest.raises(ConfigError, match="inside Ray's working-directory cache"):
        resolve_storage(str(cache / "x"))
    assert resolve_storage(str(tmp_path / "elsewhere")).local


def test_a_uri_goes_through_pyarrow_fs():
    s = resolve_storage("mock:///bucket/rc")
    assert not s.local and s.root == "bucket/rc"
    assert s.join("runs/x") == "mock:///bucket/rc/runs/x"
    assert resolve_storage("file:///srv/rc").uri == "/srv/rc"
    with pytest.raises(ConfigError, match="pyarrow.fs cannot open it"):
        resolve_storage("nosuchscheme://x/y")


def test_outputs_resolve_under_storage_and_refuse_the_job_cache(tmp_path):
    s = resolve_storage(str(tmp_path))
    assert output_path(s, "runs/x", "run_dir") == str(tmp_path / "runs" / "x")
    assert output_path(s, "/abs/x", "run_dir") == "/abs/x"
    with pytest.raises(ConfigError, match=r"run_dir=.*_ray_pkg_abc/runs.*write under storage"):
        output_path(s, f"{CACHE}/runs", "run_dir")
    with pytest.raises(ConfigError, match="out= is empty"):
        output_path(s, " ", "out")


def test_placeholders_name_the_commands_settings():
    assert fill("traffic/{app_name}/{nope}", Cfg()) == "traffic/conductor/{nope}"


def test_references_point_at_what_earlier_commands_wrote(tmp_path, monkeypatch):
    s = resolve_storage(str(tmp_path / "store"))
    (tmp_path / "store" / "runs" / "lite" / "policy").mkdir(parents=True)
    here = tmp_path / "checkout"
    (here / "plans").mkdir(parents=True)
    (here / "plans" / "p.json").write_text("{}")
    monkeypatch.chdir(here)
    store = tmp_path / "store"
    assert resolve_reference("lite:runs/lite/policy", s) == f"lite:{store}/runs/lite/policy"
    assert resolve_reference("registry:registries/c@3", s) == f"registry:{store}/registries/c@3"
    assert resolve_reference("registry:registries/c", s) == f"registry:{store}/registries/c"
    assert resolve_reference("scripted:plans/p.json", s) == f"scripted:{here}/plans/p.json"
    for as_given in ("knn", "lite:default", "single:openai/gpt-4o", "smollm2",
                     "registry:/abs/reg@2", "HuggingFaceTB/SmolLM2-135M"):
        assert resolve_reference(as_given, s) == as_given


def test_place_rewrites_outputs_and_references_in_the_config(tmp_path):
    cfg = Cfg(storage=str(tmp_path), policies={"a": "registry:reg", "b": "knn"})
    placed = place(cfg, ("log_dir", "out", "demo.eval_out"), ("policies",))
    assert cfg.log_dir == str(tmp_path / "traffic" / "conductor") and cfg.out is None
    assert cfg.demo.eval_out == str(tmp_path / "reports" / "demo.json")
    assert cfg.policies == {"a": f"registry:{tmp_path}/reg", "b": "knn"}
    assert placed.outputs["log_dir"] == cfg.log_dir and placed.finish() == []
    assert f"storage {tmp_path}; log_dir=" in placed.describe()
    again = Cfg(**{k: getattr(cfg, k) for k in ("storage", "log_dir", "policies")})
    place(again, ("log_dir",), ("policies",))  # idempotent: what is absolute stays
    assert again.log_dir == cfg.log_dir and again.policies == cfg.policies


def test_remote_storage_stages_and_uploads(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_CONDUCTOR_CACHE", str(tmp_path / "cache"))
    cfg = Cfg(storage="mock:///bucket/rc", out="reports/r.json", log_dir="runs/x")
    placed = place(cfg, ("out", "log_dir"))
    assert cfg.out.startswith(str(tmp_path / "cache" / "staging"))
    os.makedirs(os.path.dirname(cfg.out))
    with open(cfg.out, "w") as f:
        f.write("{}")
    os.makedirs(os.path.join(cfg.log_dir, "policy"))
    with open(os.path.join(cfg.log_dir, "policy", "w.pt"), "w") as f:
        f.write("w")
    assert placed.finish() == ["mock:///bucket/rc/reports/r.json", "mock:///bucket/rc/runs/x"]
    fs = placed.storage.fs
    with fs.open_input_stream("bucket/rc/reports/r.json") as f:
        assert f.read() == b"{}"
    assert fs.get_file_info("bucket/rc/runs/x/policy/w.pt").type == pafs.FileType.File
    with pytest.raises(ConfigError, match="object storage does not offer"):
        place(Cfg(storage="mock:///bucket/rc"), ("log_dir",), remote_ok=False,
              command="serving")


def test_a_command_prints_where_its_outputs_went(tmp_path, capsys):
    from ray_conductor.cli import main

    rc = main(["eval", "pool=demo", "split=test", "limit=3", "policies=[cheapest]",
               "progress=false", "out=reports/e.json", f"storage={tmp_path}"])
    assert rc == 0
    report = tmp_path / "reports" / "e.json"
    assert report.is_file() and (tmp_path / "reports" / "e.png").is_file()
    assert f"ray-conductor eval: outputs under storage {tmp_path}; out={report}" in \
        capsys.readouterr().out
