"""Load a script that is not part of the package (`benchmarks/*.py`, `jobs/*.py`) as a module,
so tests can call its functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_script(relpath: str) -> ModuleType:
    """The module of `ROOT/relpath`, executed fresh (its own name: the file's stem)."""
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_checkpoint(parent: Path) -> Path:
    """A trained-checkpoint directory (`parent/iter_000001`) holding the tiny model and a
    conductor that writes constrained programs with worker names: what the plan benchmarks
    load as `--run-dir` without training."""
    import json

    from ray_conductor.policy.loading import resolve_model_path

    ckpt = parent / "iter_000001"
    ckpt.mkdir()
    (ckpt / "model").symlink_to(resolve_model_path("tiny-smollm2"), target_is_directory=True)
    conductor = {"constrain": True, "programs": True, "worker_ids": "name", "few_shot": False,
                 "max_subtask_chars": 8, "max_new_tokens": 200, "max_steps": 3,
                 "batch_size": 8}
    (ckpt / "trainer_state.json").write_text(json.dumps({"config": {"conductor": conductor}}))
    return ckpt
