"""Smoke run of `benchmarks/plan_payoff.py` on a checkpoint of the tiny model trained with
constrained decoding: every plan runs, each is judged against its first step alone, and the
report's summary adds up. No quality is asserted (a benchmark is a report)."""

from __future__ import annotations

import json

from scripts import load_script, tiny_checkpoint


def test_tiny_checkpoint_writes_a_report_by_plan_shape(tmp_path):
    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "payoff.json"
    load_script("benchmarks/plan_payoff.py").main(
        ["--run-dir", str(ckpt), "--limit", "2", "--threads", "1", "--round-bf16",
         "--out", str(out)])
    report = json.loads(out.read_text())
    s, rows = report["summary"], report["rows"]
    assert len(rows) == 2 and s["all"]["n"] == 2 and s["all"]["fell_back"] == 0
    assert report["round_bf16"] and report["settings"]["constrain"]
    assert sum(s[k]["n"] for k in ("one_step", "multi_step", "conditional", "vote") if k in s) == 2
    assert s["pays"] == round(s["all"]["accuracy"] - s["all"]["first_step_alone"], 4)
    assert all(1 <= r["steps"] <= 3 and r["calls"] >= 1 for r in rows)
