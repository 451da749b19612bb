"""Smoke run of `benchmarks/trainer_throughput.py` on the tiny model: both trainers run and the
report has its summary and details. No timing is asserted (a benchmark is a report)."""

from __future__ import annotations

import json

import pytest

from scripts import load_script


def _bench():
    return load_script("benchmarks/trainer_throughput.py")


@pytest.mark.slow
def test_tiny_run_writes_a_full_report(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "bench.json"
    _bench().main(["--model", "tiny-smollm2", "--iterations", "1", "--questions", "1",
                   "--group", "2", "--max-new-tokens", "4", "--threads", "1",
                   "--out", str(out)])
    report = json.loads(out.read_text())
    s = report["summary"]
    for side in ("ours", "trl"):
        part = report["sides"][side]
        assert "error" not in part, part
        assert s[f"{side}_samples_per_s"] > 0
        assert len(part["iteration_s"]) == 2  # warm-up + 1 timed
        assert part["timed_iterations"] == 1
        assert 0.0 <= part["mean_reward"] <= 1.0
        assert part["mean_cpu_s_per_iteration"] > 0
        assert all("cpu_s" in row for row in part["per_iteration"])
    assert s["ratio"] == pytest.approx(s["ours_samples_per_s"] / s["trl_samples_per_s"], rel=1e-2)
    assert report["sides"]["trl"]["same_questions_as_ours"]
    assert report["environment"]["cpu_count"] >= 1
    assert report["config"]["samples_per_iteration"] == 2
