"""The prepared GPU check runs end to end on the CPU with the tiny model (`--device cpu
--tiny`), and a model that is not on this machine is skipped with its reason."""

from __future__ import annotations

import json

import pytest

from scripts import load_script


@pytest.mark.slow
def test_tiny_cpu_run_writes_a_report_and_skips_what_is_not_here(tmp_path):
    out = tmp_path / "gpu_check.json"
    rc = load_script("benchmarks/gpu_check.py").main(
        ["--device", "cpu", "--tiny", "--models", "tiny-smollm2", str(tmp_path / "no-model"),
         "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    tiny = report["models"]["tiny-smollm2"]
    assert tiny["generate"]["tokens"] > 0 and tiny["generate"]["tokens_per_s"] > 0
    assert tiny["learner"]["steps"] == 2 and tiny["learner"]["samples_per_s"] > 0
    assert tiny["embed"]["rows"] > 0 and tiny["embed"]["questions_per_s"] > 0  # program head
    assert "skipped" in report["models"][str(tmp_path / "no-model")]
    assert set(report["summary"]) == {"tiny-smollm2"}
    assert "skipped" in report["vllm"]  # no GPU here
