"""Hostile inputs of issue 21, each kept closed by a test: poisoned recordings, policy files
and settings, and the files the online loop reads. Each ends in a one-line error naming the
place, or in a counted (and for traffic parts, quarantined) row, with nothing written.
A hypothesis strategy over recording rows (text, numbers, NaN/inf, Unicode) holds the
import checks to the same promise. (The code checkers' forgeries: test_sandbox_boundary.)"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_conductor.config import load
from ray_conductor.data.checks import MAX_COST, plain_id
from ray_conductor.data.pools import DEMO_PATH, load_pool
from ray_conductor.data.routerbench import import_routerbench
from ray_conductor.data.table import COLUMNS, TableBuilder, read_table
from ray_conductor.errors import ConfigError, DataError, TrainingError
from ray_conductor.lite import LiteConductor, default_policy_dir
from ray_conductor.lite.train import LiteTrainConfig, _check_budget, _finite
from ray_conductor.online.decisions import DecisionLog
from ray_conductor.online.state import LoopState
from ray_conductor.policy.registry import PolicyRegistry
from ray_conductor.serve.traffic import (
    FEEDBACK_SCHEMA, QUARANTINE, TrafficLog, read_traffic, request_row)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


def demo():
    return pq.read_table(DEMO_PATH)


def with_value(table: pa.Table, row: int, column: str, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.column_names.index(column)
    return table.set_column(i, column, pa.array(values, table.schema.field(column).type))


# -- recordings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("column, value, needle", [
    ("cost", -0.019, "column cost: -0.019"), ("cost", float("nan"), "column cost: nan"),
    ("cost", 1e300, "column cost: 1e+300"), ("cost", float("inf"), "column cost: inf"),
    ("input_tokens", -1, "column input_tokens: -1"),
    ("output_tokens", -5, "column output_tokens: -5"), ("query_id", "  ", "column query_id"),
])
def test_a_poisoned_parquet_value_is_a_one_line_error(tmp_path, column, value, needle):
    path = tmp_path / "poisoned.parquet"
    pq.write_table(with_value(demo(), 7, column, value), path)
    with pytest.raises(DataError) as e:
        read_table(path)
    msg = one_line(e)
    assert str(path) in msg and "row 7" in msg and needle in msg
    with pytest.raises(DataError):  # streamed (eval, train) as well as read whole (import)
        load_pool(f"parquet:{path}")


def test_duplicated_parquet_rows_are_counted_and_dropped(tmp_path):
    path = tmp_path / "twice.parquet"
    pq.write_table(pa.concat_tables([demo(), demo()]), path)
    table, report = read_table(path)
    assert table.num_rows == demo().num_rows and report.duplicate_rows == demo().num_rows
    assert any("dropped" in n for n in report.notes)
    data = load_pool(f"parquet:{path}")
    assert data.report.duplicate_rows == demo().num_rows  # counted when streamed too


def test_a_zero_row_table_and_duplicated_columns_are_refused(tmp_path):
    pq.write_table(demo().slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="has no rows"):
        read_table(tmp_path / "empty.parquet")
    t = demo()
    pq.write_table(pa.table([*t.columns, t.column("cost")], names=[*t.column_names, "cost"]),
                   tmp_path / "twocost.parquet")
    with pytest.raises(DataError) as e:
        read_table(tmp_path / "twocost.parquet")
    assert "'cost' appears 2 times" in one_line(e)


def test_invalid_utf8_in_parquet_is_replaced_and_counted(tmp_path):
    t = demo().slice(0, 20)
    raw = pa.array([b"bad \xff\xfe answer"] + [b"ok"] * 19, pa.binary()).view(pa.string())
    pq.write_table(t.set_column(t.column_names.index("response"), "response", raw),
                   tmp_path / "bad.parquet")
    table, report = read_table(tmp_path / "bad.parquet")
    assert report.invalid_unicode == 1 and "\ufffd" in table.column("response")[0].as_py()


RB_HEADER = ["sample_id", "prompt", "eval_name", "m1", "m1|model_response", "m1|total_cost"]


def write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_routerbench_negative_cost_and_duplicated_column(tmp_path, monkeypatch):
    from ray_conductor.data import pricing

    monkeypatch.setattr(pricing, "count_tokens", lambda text: len(text or "") // 4)
    monkeypatch.setattr(pricing, "token_counter_name", lambda: "len/4")
    bad = write_csv(tmp_path / "neg.csv", RB_HEADER,
                    [["a", "['Q?']", "mbpp", "1", "['x']", "0.01"],
                     ["b", "['Q2?']", "mbpp", "1", "['y']", "-0.019"]])
    with pytest.raises(DataError) as e:
        import_routerbench([bad])
    assert "column cost: -0.019" in one_line(e) and "routerbench/b" in str(e.value)
    dup = write_csv(tmp_path / "dup.csv", RB_HEADER + ["m1|total_cost"],
                    [["a", "['Q?']", "mbpp", "1", "['x']", "0.01", "999"]])
    with pytest.raises(DataError) as e:
        import_routerbench([dup])
    assert "'m1|total_cost' appears 2 times" in one_line(e)


@pytest.mark.parametrize("qid", [None, {"id": 1}, True, "", 1.5])
def test_an_mmlu_pro_id_that_is_not_plain_is_refused(tmp_path, qid):
    from ray_conductor.data.mmlu_pro import import_mmlu_pro

    rec = {"question_id": qid, "question": "Q?", "options": ["a", "b"], "answer": "A",
           "answer_index": 0, "category": "math", "src": "x", "pred": "A",
           "generated_text": "The answer is (A)."}
    (tmp_path / "model_outputs_gpt-4o_5shots.json").write_text(json.dumps([rec]))
    with pytest.raises(DataError) as e:
        import_mmlu_pro([tmp_path])
    assert "record 0: `question_id` must be a non-empty string or an integer" in one_line(e)


def test_a_lone_surrogate_in_mmlu_pro_json_is_replaced_and_counted(tmp_path):
    from ray_conductor.data.mmlu_pro import import_mmlu_pro

    (tmp_path / "model_outputs_gpt-4o_5shots.json").write_text(
        '[{"question_id": 1, "question": "Q \\ud800?", "options": ["a", "b"], "answer": "A", '
        '"answer_index": 0, "category": "math", "src": "x", "pred": "A", '
        '"generated_text": "The answer is (A). \\udc01"}]')
    table, report = import_mmlu_pro([tmp_path])
    assert report.invalid_unicode == 2 and table.num_rows == 1
    assert "\ufffd" in table.column("query")[0].as_py()
    pq.write_table(table, tmp_path / "ok.parquet")  # valid UTF-8 now


# the rows an importer could hand the canonical table: any text, any number
texts = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**6)
ids = st.one_of(texts, st.integers(-5, 10**12), st.none(), st.booleans(),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
recording_row = st.fixed_dictionaries({
    "qid": ids, "model": st.sampled_from(["m1", "m2", " "]) | texts, "query": texts,
    "response": st.none() | texts, "cost": numbers,
    "input_tokens": st.integers(-10, 10**6), "output_tokens": st.integers(-10, 10**6)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(recording_row, max_size=8))
def test_any_recording_is_refused_in_one_line_or_imported_clean(rows):
    b = TableBuilder()
    try:
        for r in rows:
            b.add(query_id=f"src/{plain_id(r['qid'], 'rows.json: record')}", query=r["query"],
                  task="t", answer_format="mc", reference="A", model=r["model"],
                  response=r["response"], correct=None, input_tokens=r["input_tokens"],
                  output_tokens=r["output_tokens"], cost=float(r["cost"]),
                  cost_source="recorded")
        table = b.table("rows.json")
    except DataError as e:
        assert "\n" not in str(e) and str(e).startswith("rows.json")
        return
    costs = table.column("cost").to_pylist()
    assert table.num_rows >= 1 and all(math.isfinite(c) and 0 <= c <= MAX_COST for c in costs)
    assert min(table.column("input_tokens").to_pylist()) >= 0
    keys = list(zip(table.column("query_id").to_pylist(), table.column("model").to_pylist()))
    assert len(keys) == len(set(keys))
    assert table.validate(full=True) is None and table.column_names == COLUMNS
    for v in table.column("query").to_pylist() + table.column("response").to_pylist():
        assert v is None or isinstance(v.encode("utf-8"), bytes)  # no lone surrogate left


# -- policy files and settings ------------------------------------------------------------------

@pytest.fixture
def policy(tmp_path):
    """A copy of the shipped lite policy whose `lite.json` a test may poison."""
    import shutil

    shutil.copytree(default_policy_dir(), tmp_path / "p")
    path = tmp_path / "p"
    return path, json.loads((path / "lite.json").read_text())


@pytest.mark.parametrize("field, value, needle", [
    ("max_calls", 1e9, "`max_calls` must be an integer in [1, 64]"),
    ("max_calls", 1000000000, "`max_calls` must be an integer in [1, 64]"),
    ("max_calls", 5, "`net.obs_dim` must be"),  # the net was built for 4
    ("workers", "abc", "`workers` must be a non-empty list"),
    ("strength", ["x"] * 12, "`strength[0]` must be a finite number"),
    ("cost_scale", -1, "`cost_scale` must be a finite number > 0"),
    ("embed_model", "other/encoder", "`embed_model` is 'other/encoder'"),
    ("net", {"obs_dim": 76, "n_actions": 14, "hidden": "x"}, "`net.hidden`"),
    ("kind", "oracle", "`kind` must be one of ppo, selector"),
])
def test_a_poisoned_lite_json_is_a_one_line_error_before_any_work(policy, field, value,
                                                                  needle):
    path, meta = policy
    meta[field] = value
    (path / "lite.json").write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        LiteConductor.load(path)
    assert needle in one_line(e) and "lite.json" in str(e.value)
    assert time.perf_counter() - t0 < 30


def test_non_finite_weights_are_refused_on_load_and_never_saved(policy, tmp_path):
    path, _ = policy
    weights = torch.load(path / "policy.pt", weights_only=True)
    weights["net"]["pi.0.weight"][0, 0] = float("nan")
    torch.save(weights, path / "policy.pt")
    with pytest.raises(ConfigError, match="`net.pi.0.weight` must hold finite numbers only"):
        LiteConductor.load(path)
    good = LiteConductor.load(default_policy_dir())
    with torch.no_grad():
        good.net.pi[0].weight[0, 0] = float("inf")
    with pytest.raises(TrainingError) as e:
        good.save(tmp_path / "out")
    assert "not saving" in one_line(e) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, needle", [
    (["cost_penalty=inf"], "cost_penalty=inf: must be a finite number"),
    (["budget=inf"], "budget=inf: must be a finite number"),
    (["selector.k=-5"], "selector.k=-5: must be >= 1"),
    (["ppo.lr=-1"], "ppo.lr=-1.0: must be > 0"),
    (["ppo.hidden=[]"], "ppo.hidden=[]: must not be empty"),
    (["ppo.hidden=[0,-3]"], "ppo.hidden=[0, -3]: must hold numbers >= 1"),
    (["max_calls=1000000000"], "max_calls=1000000000: must be <= 64"),
    (["ppo.gamma=2"], "ppo.gamma=2.0: must be <= 1"),
    (["cost_penalty=nan"], "cost_penalty=nan: must be >= 0"),
])
def test_train_lite_settings_are_range_checked_at_load(argv, needle):
    with pytest.raises(ConfigError) as e:
        load(LiteTrainConfig, argv)
    assert needle in one_line(e)


def test_an_unreachable_budget_is_refused_before_training():
    cfg = LiteTrainConfig(budget=1e-12)
    with pytest.raises(ConfigError) as e:
        _check_budget(load_pool("demo"), cfg)
    assert "budget=1e-12: below the cheapest answer on this pool" in one_line(e)
    _check_budget(load_pool("demo"), LiteTrainConfig(budget=1.0))


def test_a_diverged_iteration_stops_training():
    with pytest.raises(TrainingError) as e:
        _finite({"policy_loss": float("nan")}, {"w": torch.ones(2)}, 3)
    assert "PPO iteration 3: policy_loss turned non-finite" in one_line(e)
    with pytest.raises(TrainingError, match="w turned non-finite"):
        _finite({"policy_loss": 0.1}, {"w": torch.tensor([1.0, float("inf")])}, 4)
    _finite({"policy_loss": 0.1}, {"w": torch.ones(2)}, 5)


# -- the online loop's files --------------------------------------------------------------------

def traffic(tmp_path: Path) -> Path:
    log = TrafficLog(tmp_path / "traffic")
    for i in range(3):
        log.append(request_row(request_id=f"r{i}", time=1.7e9 + i, model="m", status=200,
                               question=f"q{i}", answer="The answer is (A)", cost=0.0))
        log.add_feedback(f"r{i}", None, 0.5, None)
    log.flush()
    return tmp_path / "traffic"


def test_unreadable_traffic_and_feedback_parts_are_quarantined_and_the_rest_read(tmp_path):
    root = traffic(tmp_path)
    day = next((root / "requests").iterdir())
    good = next(day.glob("part-*.parquet"))
    (day / "part-0000000000001-zero0000.parquet").write_bytes(b"")
    (day / "part-0000000000002-trunc000.parquet").write_bytes(good.read_bytes()[:-40])
    pq.write_table(pa.table({"x": [1, 2]}), day / "part-0000000000003-foreign0.parquet")
    fday = next((root / "feedback").iterdir())
    bad_fb = pa.table({"request_id": ["r0"], "time": pa.array([0], pa.timestamp("us", tz="UTC")),
                       "key_id": [None], "reward": ["high"], "label": [None]},
                      schema=FEEDBACK_SCHEMA.set(3, pa.field("reward", pa.string())))
    pq.write_table(bad_fb, fday / "part-0000000000004-strrew00.parquet")
    df = read_traffic(root)
    assert sorted(df["request_id"]) == ["r0", "r1", "r2"] and list(df["reward"]) == [0.5] * 3
    moved = df.attrs["quarantined"]
    assert len(moved) == 4 and all(Path(m["moved_to"]).is_file() for m in moved)
    assert all(QUARANTINE in m["moved_to"] for m in moved)
    assert len(read_traffic(root).attrs["quarantined"]) == 0  # moved once, read again clean


def test_a_feedback_owner_lookup_skips_an_unreadable_part(tmp_path):
    root = traffic(tmp_path)
    day = next((root / "requests").iterdir())
    (day / "part-9999999999999-zero0000.parquet").write_bytes(b"")  # sorts first (newest)
    log = TrafficLog(root)
    assert log.owner_on_disk("r1") == (True, None)
    assert log.owner_on_disk("nope") == (False, None)


def test_the_loop_logs_quarantined_parts_and_ignores_out_of_range_rewards(tmp_path):
    """A logged reward of 1e9 must not keep a worse version past its live watch."""
    from test_online_loop import kinds, setup

    loop, app, log, trainer, reg = setup(tmp_path, gain=0.2)
    loop.cfg.rollback.test = "welch"
    log.add(40, "v1", 0.5)
    assert kinds(loop.round())[-1] == "promoted"
    log.add(1, "v2", 1e9, start=100, label=None)  # first in the watch window
    log.add(10, "v2", 0.0, start=101, label=None)
    made = loop.round()
    assert kinds(made) == ["quarantined", "rolled_back"]
    assert made[0]["rows"] == 1 and "outside [-1, 1]" in made[0]["reason"]
    assert kinds(loop.round()) == []  # reported once

    moved = [{"file": "x", "moved_to": "y", "reason": "ArrowInvalid: bad"}]
    read = loop.read
    loop.read = lambda d: (lambda df: (df.attrs.update(quarantined=moved), df)[1])(read(d))
    assert kinds(loop.round()) == ["quarantined"]


def test_the_loop_takes_the_apps_feedback_range_unless_told_otherwise(tmp_path):
    from types import SimpleNamespace

    from test_online_loop import setup

    from ray_conductor.online.rewards import reward_range

    loop, app, *_ = setup(tmp_path, gain=0.0)
    assert reward_range(loop.cfg.feedback, app) == (-1.0, 1.0)  # an app without the setting
    app.config = lambda: SimpleNamespace(feedback_reward_range=[-5.0, 5.0])
    assert reward_range(loop.cfg.feedback, app) == (-5.0, 5.0)  # the door's range
    loop.cfg.feedback.reward_max = 2.0
    assert reward_range(loop.cfg.feedback, app) == (-5.0, 2.0)


def test_a_damaged_promoted_pointer_is_rebuilt_and_rollback_still_works(tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    for n in range(3):
        d = tmp_path / f"p{n}"
        d.mkdir()
        (d / "lite.json").write_text("{}")
        reg.publish(d, kind="lite")
    reg.promote(1)
    reg.promote(2)
    reg.promote(3)
    (reg.root / "PROMOTED").write_text('{"version": "three"')
    assert reg.promoted().version == 3
    with open(reg.root / "history.jsonl", "a") as f:
        f.write('{"action": "promote", "vers')  # a torn last line
    assert reg.rollback(reason="test").version == 2
    assert reg.promoted().version == 2 and reg.rollback().version == 1
    (reg.root / "versions" / "v000003" / "VERSION.json").write_text("garbage")
    v3 = reg.get(3)
    assert v3.kind == "lite" and v3.meta["rebuilt"]
    (reg.root / "history.jsonl").write_text("")
    (reg.root / "PROMOTED").write_text("[]")
    with pytest.raises(ConfigError) as e:
        reg.promoted()
    assert "PROMOTED: damaged" in one_line(e)


def test_damaged_loop_state_is_a_one_line_error(tmp_path):
    (tmp_path / "state_file").write_text("x")
    with pytest.raises(ConfigError) as e:
        LoopState.load(tmp_path / "state_file")
    assert "is a file, not a directory" in one_line(e)
    (tmp_path / "s").mkdir()
    for bad in ('{"consumed": "r1"}', '{"rounds": -1}', '{"cost_penalty": "x"}', "[1]",
                '{"watch": {"version": "v"}}'):
        (tmp_path / "s" / "state.json").write_text(bad)
        with pytest.raises(ConfigError) as e:
            LoopState.load(tmp_path / "s")
        assert "damaged online state" in one_line(e)


def test_a_torn_decision_line_is_skipped(tmp_path):
    log = DecisionLog(tmp_path / "decisions.jsonl")
    log.append("kept", "m", version="v1")
    with open(log.path, "a") as f:
        f.write('{"time": 1, "kind": "prom')
    assert [d["kind"] for d in log.read()] == ["kept"]


def test_retrain_without_a_serve_app_is_a_one_line_error(ray_cluster):
    from ray_conductor.online.serving import ServeApp

    with pytest.raises(ConfigError) as e:
        ServeApp("nowhere").settings()
    assert "no Serve app 'nowhere' is running" in one_line(e)


@pytest.mark.parametrize("mode", ["once=true", "mode=actor", "mode=loop"])
def test_retrain_on_a_new_local_cluster_is_refused_before_ray_starts(mode, capsys,
                                                                     monkeypatch):
    import ray

    import ray_conductor.runtime
    from ray_conductor.cli import main

    def no_ray(*a, **kw):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    monkeypatch.setattr(ray_conductor.runtime, "init_ray", no_ray)
    assert main(["retrain", mode, "ray.address=local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no Serve app runs to retrain" in err


def test_rewarded_rows_skip_rewards_out_of_range():
    from ray_conductor.online.rewards import rewarded_rows

    df = pd.DataFrame([{"request_id": f"r{i}", "status": 200, "model": "m", "answer": "A",
                        "question": "q", "query_id": None, "cost": 0.0, "reward": r,
                        "label": None, "policy_version": "v1",
                        "time": pd.Timestamp(i, unit="s", tz="UTC")}
                       for i, r in enumerate([0.5, 1e9, -3.0, float("inf"), -1.0])])
    ignored: list[str] = []
    rows = rewarded_rows(df, cost_penalty=0.0, reward_range=(-1.0, 1.0), ignored=ignored)
    assert [r.reward for r in rows] == [0.5, -1.0] and ignored == ["r1", "r2", "r3"]
    assert np.isclose(sum(r.reward for r in rewarded_rows(df, cost_penalty=0.0)[:1]), 0.5)
