"""`ray-conductor eval` end to end: the report's shape, clean errors, and backend=ray giving
the same numbers as the in-process replay pool."""

import json

import pytest

from ray_conductor.cli import main
from ray_conductor.config import load
from ray_conductor.eval.command import EvalConfig, run_eval

POLICIES = "policies=[single:gpt-4o,single:Phi-3-mini-4k-instruct,cheapest,random,oracle]"


def test_eval_writes_the_report_and_plot(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "pool=demo", "split=test", "limit=40", POLICIES, f"out={out}",
                 "progress=false"]) == 0
    report = json.loads(out.read_text())
    assert report["pool"] == "demo" and report["split"] == "test"
    pols = report["policies"]
    assert set(pols) == {"single:gpt-4o", "single:Phi-3-mini-4k-instruct", "cheapest", "random",
                         "oracle"}
    for p in pols.values():
        assert {"accuracy", "cost_per_query", "calls_per_query", "n"} <= set(p)
        assert p["n"] == 40 and p["calls_per_query"] == 1.0
    assert pols["oracle"]["accuracy"] >= max(p["accuracy"] for p in pols.values())
    phi = pols["single:Phi-3-mini-4k-instruct"]  # the lowest list price in the demo pool
    assert (pols["cheapest"]["accuracy"], pols["cheapest"]["cost_per_query"]) == (
        phi["accuracy"], phi["cost_per_query"])
    assert (tmp_path / "eval.png").stat().st_size > 10_000
    assert "oracle" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["eval", "pool=nosuchformat:x"], "nosuchformat"),
    (["eval", "pool=routerbench:/nonexistent.csv"], "/nonexistent.csv"),
    (["eval", "split=validation"], "validation"),
    (["eval", "policies=[best]"], "unknown policy 'best'"),
    (["eval", "colour=blue"], "colour"),
    (["eval", "limit"], "key=value"),
])
def test_bad_input_is_one_clear_line_and_exit_2(argv, needle, capsys):
    assert main(argv + ["progress=false", "out=/tmp/never.json"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_unknown_command_exits_2(capsys):
    assert main(["serve-the-moon"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_backend_ray_gives_the_same_numbers_as_in_process(ray_cluster, tmp_path):
    common = ["pool=demo", "split=test", "limit=25", POLICIES, "progress=false"]
    local = run_eval(load(EvalConfig, common + [f"out={tmp_path}/local.json"]))
    # six workers per proxy process: two processes import litellm instead of twelve
    remote = run_eval(load(EvalConfig, common + ["backend=ray", f"out={tmp_path}/ray.json",
                                                 "graph.workers_per_proxy=6",
                                                 "ray.namespace=test_cli_eval"]))
    for name, p in local["policies"].items():
        q = remote["policies"][name]
        assert q["accuracy"] == p["accuracy"], name
        assert q["cost_per_query"] == pytest.approx(p["cost_per_query"], rel=1e-9), name
        assert q["calls_per_query"] == p["calls_per_query"]
