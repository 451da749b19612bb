"""`benchmarks/lite_quality.py`: its pure parts on hand-made numbers, and a tiny smoke run on
the demo pool (two lite runs of one PPO iteration, the whole test split judged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import ROOT, load_script


def _bench():
    return load_script("benchmarks/lite_quality.py")


def _p(acc: float, cost: float) -> dict:
    return {"accuracy": acc, "cost_per_query": cost}


def test_pareto_frontier_keeps_only_undominated_points():
    pts = {"a": _p(0.5, 1.0), "b": _p(0.7, 2.0), "c": _p(0.6, 3.0),  # c: b is cheaper, better
           "d": _p(0.5, 0.5), "e": _p(0.9, 10.0), "f": _p(0.7, 2.0)}  # f ties b: one of them
    assert _bench().pareto_frontier(pts) == ["d", "b", "e"]


def test_goal_check_reads_the_reference_and_the_cost_factor():
    b = _bench()
    table = {"single:big": _p(0.72, 0.004), "knn": _p(0.70, 0.002),
             "lite:a": _p(0.73, 0.0019), "lite:b": _p(0.73, 0.0021), "lite:c": _p(0.71, 0.001)}
    g = b.goal_check("best_single", table, "single:big", ["lite:a", "lite:b", "lite:c"])
    assert g["cost_limit"] == pytest.approx(0.002)
    assert [g[n]["met"] for n in ("lite:a", "lite:b", "lite:c")] == [True, False, False]
    assert (g["lite:b"]["accuracy_ok"], g["lite:b"]["cost_ok"]) == (True, False)
    assert (g["lite:c"]["accuracy_ok"], g["lite:c"]["cost_ok"]) == (False, True)
    k = b.goal_check("knn", table, "knn", ["lite:b", "lite:c"])
    assert k["cost_limit"] == pytest.approx(0.002)
    assert (k["lite:b"]["met"], k["lite:c"]["met"]) == (False, True)


def test_discover_pools_pairs_each_routerbench_task(tmp_path):
    rb = tmp_path / "routerbench"
    rb.mkdir()
    for name in ("mbpp_train.csv", "mbpp_test.csv", "gsm8k-train.csv", "gsm8k-test.csv",
                 "hellaswag.csv", "notes.txt"):
        (rb / name).write_text("x")
    (tmp_path / "mmlu_pro").mkdir()
    b = _bench()
    specs = b.discover_pools(tmp_path)
    assert specs[0] == f"mmlu_pro:{tmp_path / 'mmlu_pro'}"
    assert specs[1:] == [f"routerbench:{rb / 'gsm8k-test.csv'},{rb / 'gsm8k-train.csv'}",
                         f"routerbench:{rb / 'hellaswag.csv'}",
                         f"routerbench:{rb / 'mbpp_test.csv'},{rb / 'mbpp_train.csv'}"]
    assert [b.pool_tag(s) for s in specs] == ["mmlu_pro", "routerbench_gsm8k",
                                               "routerbench_hellaswag", "routerbench_mbpp"]
    assert [b.goal_kind(s) for s in specs[:2]] == ["best_single", "knn"]


TINY = ["iterations=1", "bc_steps=50", "selector.k=20", "ppo.train_batch_size=256",
        "ppo.minibatch_size=128", "ppo.num_epochs=1", "ppo.hidden=[16]",
        "ppo.num_envs_per_env_runner=4", "projection_dim=8", "check_rows=50"]


@pytest.mark.slow
def test_tiny_run_on_the_demo_pool_writes_report_and_plot(ray_cluster, tmp_path):
    out = tmp_path / "lite_quality.json"
    assert _bench().main(["--pools", "demo", "--out", str(out), "--runs-dir",
                          str(tmp_path / "runs"), "--sweep", "0.5", "--sweep-iterations", "1",
                          "--main-ratio", "0.45", *TINY]) == 0
    report = json.loads(out.read_text())
    res, s = report["pools"]["demo"], report["summary"]["demo"]
    pol = res["policies"]
    names = {"cheapest", "random", "knn", "oracle", "lite:policy", "lite:selector",
             "lite:policy@0.5x", "lite:selector@0.5x"}
    assert names <= set(pol) and sum(n.startswith("single:") for n in pol) == 12
    assert all(p["n"] == res["n_test"] > 300 for p in pol.values())  # the whole test split
    assert all(0 <= p["accuracy"] <= 1 and p["cost_per_query"] > 0 for p in pol.values())
    assert res["sweep"][0]["iterations"] == 1 and res["main"]["iterations"] == 1
    ref = res["budget_reference"]
    assert res["sweep"][0]["budget"] == pytest.approx(0.5 * ref["train_cost_per_query"])
    assert res["main"]["budget"] == pytest.approx(0.45 * ref["train_cost_per_query"])
    # the goal's reference is the best single on train, and its booleans follow the numbers
    g = res["goal"]
    assert g["reference"] == "single:" + max(res["train_singles"], key=lambda m: (
        res["train_singles"][m]["accuracy"], -res["train_singles"][m]["cost_per_query"]))
    lite = pol["lite:policy"]
    assert s["goal"]["lite:policy_met"] == g["lite:policy"]["met"] == (
        lite["accuracy"] >= g["reference_accuracy"]
        and lite["cost_per_query"] <= 0.5 * g["reference_cost_per_query"])
    # offline outcomes reproduce the judge's numbers, and the paired gain is their difference
    assert all(g[n]["offline_matches_judge"] for n in (g["reference"], "lite:policy",
                                                        "lite:selector"))
    pg = g["lite:policy"]["paired_vs_reference"]
    assert pg["accuracy_gain"] == pytest.approx(
        lite["accuracy"] - g["reference_accuracy"], abs=2e-4)
    assert pg["wins"] - pg["losses"] == round(pg["accuracy_gain"] * res["n_test"])
    assert 0 < pg["gain_se"] < 0.05
    # the frontier: nothing listed is dominated, everything left out is
    front = res["pareto_frontier"]
    assert "oracle" not in front

    def dominated(n):
        return any(pol[m]["cost_per_query"] <= pol[n]["cost_per_query"]
                   and pol[m]["accuracy"] >= pol[n]["accuracy"] and
                   (pol[m]["cost_per_query"], pol[m]["accuracy"]) !=
                   (pol[n]["cost_per_query"], pol[n]["accuracy"])
                   for m in pol if m != "oracle")

    assert not any(dominated(n) for n in front)
    assert all(dominated(n) for n in pol if n not in front and n != "oracle"
               and not any(pol[f]["accuracy"] == pol[n]["accuracy"] and
                           pol[f]["cost_per_query"] == pol[n]["cost_per_query"] for f in front))
    # the LM conductor's result was measured on this very split: the same recorded gpt-4o
    lm = res["lm_conductor"]
    assert lm["same_questions_as_this_table"] and lm["n"] == res["n_test"]
    measured = json.loads((ROOT / "benchmarks" / "results" / "train_quality_48_iterations.json")
                          .read_text())["summary"]["best_single"]
    assert pol["single:gpt-4o"]["accuracy"] == pytest.approx(measured["accuracy"], abs=1e-4)
    assert pol["single:gpt-4o"]["cost_per_query"] == pytest.approx(measured["cost_per_query"],
                                                                   rel=1e-3)
    plot = Path(res["plot"])
    assert plot.parent == tmp_path and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
