"""Kill the training job mid-run and resume: it continues from the last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["model=tiny-smollm2", "pool=demo", "backend=local", "iterations=5",
        "questions_per_iter=2", "group_size=2", "checkpoint_every=2", "eval_at_end=false",
        "progress=false", "conductor.max_new_tokens=16"]


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return subprocess.Popen(
        [sys.executable, "jobs/train.py", *ARGS, f"run_dir={run_dir}", *extra],
        cwd=Path(__file__).resolve().parent.parent, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_job_resumes_from_its_last_checkpoint(tmp_path):
    proc = start(tmp_path)
    first = tmp_path / "checkpoints" / "iter_000001" / "COMPLETE"
    deadline = time.time() + 240
    while not first.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-run
    proc.wait(timeout=30)
    assert not (tmp_path / "checkpoints" / "iter_000004").exists()

    proc = start(tmp_path, "resume=true")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "resumed from" in out and "iter_000001" in out
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4]  # each iteration logged once
    state = json.loads((tmp_path / "checkpoints" / "iter_000004" / "trainer_state.json")
                       .read_text())
    assert state["iteration"] == 4 and state["weights_version"] == 5
