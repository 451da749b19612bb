"""Smoke run of `benchmarks/online_lm.py` with the tiny model: a checkpoint serves replay
questions, one online round trains it further with GRPO, tests the candidate on the
held-back slice and decides; the report adds up. No quality is asserted (a benchmark is a
report)."""

from __future__ import annotations

import json

import pytest
from scripts import load_script

from ray_conductor.policy.loading import resolve_model_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_one_online_round_of_the_lm_tier_on_replay_data(tmp_path):
    ckpt = tmp_path / "iter_000001"
    ckpt.mkdir()
    (ckpt / "model").symlink_to(resolve_model_path("tiny-smollm2"), target_is_directory=True)
    conductor = {"few_shot": False, "max_new_tokens": 24, "max_resamples": 0, "batch_size": 16}
    (ckpt / "trainer_state.json").write_text(json.dumps({"config": {"conductor": conductor}}))
    out = tmp_path / "online_lm.json"
    load_script("benchmarks/online_lm.py").main(
        ["--run-dir", str(ckpt), "--rows", "50", "--holdout", "0.5", "--iterations", "1",
         "--questions", "2", "--group-size", "2", "--select-rows", "4", "--threads", "1",
         "--work", str(tmp_path / "work"), "--out", str(out)])
    report = json.loads(out.read_text())
    (r,) = report["rounds"]
    assert r["served"]["questions"] == 50 and r["served"]["version"] == "v1"
    assert r["decisions"][:2] == ["trained", "evaluated"]
    assert r["decisions"][2] in ("promoted", "rejected")
    assert r["train_rows"] + r["held_rows"] == 50 and len(r["curve"]) == 2
    s = report["summary"]
    assert s["promotions"] + s["rejections"] == 1 and s["last"] == r
    assert report["setup"]["settings"]["max_new_tokens"] == 24
    assert report["setup"]["cost_penalty"] == 0.0
