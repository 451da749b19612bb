"""`ray-conductor train` refuses bad input before it deletes, creates or starts anything, and
its run directory leaves no half-written files behind."""

import json
import os
import subprocess
import sys
import time

import pytest

from ray_conductor.cli import main
from ray_conductor.rl.checkpoint import RunDir


def err_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def old_run(tmp_path):
    """A run directory holding an earlier run: metrics and a checkpoint."""
    run = RunDir(tmp_path / "run")
    run.log(0, {"reward_mean": 0.5})
    tmp = run.begin_checkpoint(0)
    run.commit_checkpoint(tmp, 0, {"iteration": 0, "weights_version": 1})
    return run


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail the test if Ray is started or a model is loaded: the checks must come first."""
    def boom(*a, **k):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr("ray_conductor.runtime.init_ray", boom)
    monkeypatch.setattr("ray_conductor.policy.loading.load_causal_lm", boom)


@pytest.mark.parametrize("bad", ["pool=nosuch:x", "model=/nonexistent/model",
                                 "eval_baselines=[best]", "split=validation",
                                 "reward.name=nope", "conductor.device=cuda"])
def test_overwrite_with_a_bad_option_keeps_the_old_run(old_run, bad, nothing_starts, capsys):
    assert main(["train", f"run_dir={old_run.path}", "overwrite=true", bad,
                 "progress=false"]) == 2
    err_line(capsys)
    assert old_run.metrics()[0]["reward_mean"] == 0.5
    assert [p.name for p in old_run.checkpoints()] == ["iter_000000"]


def test_a_bad_model_is_one_line_before_any_actor_starts(tmp_path, nothing_starts, capsys):
    t0 = time.perf_counter()
    assert main(["train", "model=/nonexistent/model", f"run_dir={tmp_path}/new",
                 "progress=false"]) == 2
    assert "model='/nonexistent/model': no such directory" in err_line(capsys)
    (tmp_path / "notamodel").mkdir()
    assert main(["train", f"model={tmp_path}/notamodel", f"run_dir={tmp_path}/new"]) == 2
    assert "has no config.json" in err_line(capsys)
    assert main(["train", "model=no-such-org/no-such-model", f"run_dir={tmp_path}/new"]) == 2
    assert "nothing is downloaded" in err_line(capsys)
    assert time.perf_counter() - t0 < 60


def test_a_rejected_run_creates_nothing(tmp_path, nothing_starts, capsys):
    run_dir = tmp_path / "never"
    assert main(["train", "pool=nosuch:x", f"run_dir={run_dir}", "progress=false"]) == 2
    err_line(capsys)
    assert not run_dir.exists()  # not even run_dir/checkpoints


@pytest.mark.parametrize("where, needle", [
    ("/sys/ray_conductor_run", "cannot write in /sys"),
    ("{file}", "is a file, not a directory"),
    ("{file}/sub", "is a file"),
])
def test_a_run_dir_that_cannot_be_made_is_one_line(tmp_path, where, needle, nothing_starts,
                                                   capsys):
    f = tmp_path / "a_file"
    f.write_text("keep")
    assert main(["train", f"run_dir={where.format(file=f)}", "progress=false"]) == 2
    assert needle in err_line(capsys) and f.read_text() == "keep"


def test_a_run_dir_among_the_pool_inputs_is_refused(tmp_path, nothing_starts, capsys):
    (tmp_path / "mmlu").mkdir()
    assert main(["train", f"pool=mmlu_pro:{tmp_path}/mmlu", f"run_dir={tmp_path}/mmlu/run",
                 "progress=false"]) == 2
    assert "is inside the pool's input" in err_line(capsys)
    assert not (tmp_path / "mmlu" / "run").exists()


# -- the run directory ----------------------------------------------------------------------


def dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)
    return int(p.stdout)


def test_a_killed_runs_temporary_checkpoint_is_removed_on_the_next_run(tmp_path):
    run = RunDir(tmp_path)
    stale = tmp_path / "checkpoints" / f".tmp_iter_000003_{dead_pid()}"
    stale.mkdir(parents=True)
    (stale / "learner.pt").write_text("half")
    mine = run.begin_checkpoint(4)  # this process's: alive, kept by prepare
    stale_file = tmp_path / f".metrics.jsonl.{dead_pid()}.0123abcd.tmp"
    stale_file.write_text("half")
    run.prepare()
    assert not stale.exists() and not stale_file.exists() and mine.exists()
    run.close()  # an interrupted run removes its own unfinished checkpoint on exit
    assert not mine.exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == []


def test_a_torn_metrics_line_is_skipped_and_dropped_on_resume(tmp_path):
    run = RunDir(tmp_path)
    for it in range(3):
        run.log(it, {"reward_mean": it})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "rew')  # killed mid-append
    assert [r["iteration"] for r in run.metrics()] == [0, 1, 2]
    run.truncate_metrics(2)
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    run = RunDir(tmp_path)
    for it in range(2):
        run.commit_checkpoint(run.begin_checkpoint(it), it, {"iteration": it})
    (run.checkpoint_dir(1) / "trainer_state.json").write_text("{torn")
    path, state = run.latest()
    assert path.name == "iter_000000" and state == {"iteration": 0}


@pytest.mark.slow
def test_sigterm_mid_checkpoint_leaves_no_temporary_directory(tmp_path):
    """`kill` (SIGTERM) unwinds the CLI, so the run's `finally` removes what it was writing."""
    code = f"""
import sys, time
from ray_conductor import cli
from ray_conductor.rl.checkpoint import RunDir
def run(cfg):
    r = RunDir({str(tmp_path)!r}).prepare()
    try:
        r.begin_checkpoint(7)
        print("writing", flush=True)
        time.sleep(60)
    finally:
        r.close()
import dataclasses
@dataclasses.dataclass
class C:
    pass
cli.COMMANDS["slow"] = cli.Command(C, run, "sleep mid-checkpoint")
sys.exit(cli.main(["slow"]))
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    assert first.startswith("ray-conductor slow: outputs under"), first  # where outputs go
    assert p.stdout.readline().strip() == "writing"
    assert any(x.name.startswith(".tmp_iter") for x in (tmp_path / "checkpoints").iterdir())
    os.kill(p.pid, 15)
    assert p.wait(30) == 143
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_overwrite_clears_the_old_runs_evaluations_too(tmp_path):
    run = RunDir(tmp_path)
    run.log(0, {"reward_mean": 1.0})
    (tmp_path / "eval_untrained.json").write_text(json.dumps({"old": True}))
    run.clear()
    assert not (tmp_path / "eval_untrained.json").exists() and run.metrics() == []
