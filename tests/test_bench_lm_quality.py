"""`benchmarks/lm_quality.py`: how closely the LM cloned its teacher (program keys and the
agreement table), and a `--judge-only` smoke run that judges an already trained tiny
conductor on two test questions beside the baselines without training again. No quality is
asserted (a benchmark is a report)."""

from __future__ import annotations

import json

import pytest
from scripts import load_script, tiny_checkpoint


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/lm_quality.py")


def test_agreement_counts_the_teacher_program_per_question(bench):
    keys = {"a": "pro", "b": "pro", "c": "flash > pro > vote", "d": "pro"}
    rows = [{"query_id": "a", "program": "pro"}, {"query_id": "b", "program": "flash"},
            {"query_id": "c", "program": "flash > pro > vote"},
            {"query_id": "d", "program": "pro"}]
    got = bench.agreement(rows, keys)
    assert got["overall"] == 0.75
    assert got["by_teacher_program"] == {"pro": {"n": 3, "agreed": round(2 / 3, 4)},
                                         "flash > pro > vote": {"n": 1, "agreed": 1.0}}


def test_judge_only_needs_a_trained_run(bench, tmp_path):
    with pytest.raises(SystemExit, match="metrics.jsonl is missing"):
        bench.main(["--judge-only", "--run-dir", str(tmp_path / "none"),
                    "--out", str(tmp_path / "r.json"), "--limit", "1"])


def test_judge_only_reports_a_trained_tiny_conductor(bench, tmp_path):
    run = tiny_checkpoint(tmp_path)
    (run / "metrics.jsonl").write_text(
        json.dumps({"iteration": -1, "warm_start": 1, "learner/sft_loss": 0.5}) + "\n"
        + json.dumps({"iteration": 0, "reward_mean": 0.75, "time/iteration_s": 2.0}) + "\n")
    out = tmp_path / "lmq.json"
    out.write_text(json.dumps({"warm_start": {"examples": 16, "steps": 1},
                               "wall_s": {"train_s": 9.0, "eval_lm_s": 99.0}}))
    assert bench.main(["--judge-only", "--run-dir", str(run), "--out", str(out),
                       "--limit", "2", "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    s = report["summary"]
    assert s["n"] == 2 and set(s) >= {"lm", "gpt4o", "lite", "knn", "oracle", "teacher"}
    assert report["warm_start"] == {"examples": 16, "steps": 1}
    assert report["wall_s"]["train_s"] == 9.0 and report["wall_s"]["eval_lm_s"] != 99.0
    assert [r["iteration"] for r in report["curve"]] == [0]
    agreed = report["teacher_agreement"]
    assert sum(v["n"] for v in agreed["by_teacher_program"].values()) == 2
    assert 0.0 <= agreed["overall"] <= 1.0
    assert sum(report["lm_programs"].values()) == 2
