"""The cases of issue 21 for `bad_inputs.py`: poisoned recordings, lite policy files and
settings as command lines (each must exit 2 with one line, or, where the issue says the row is
counted, exit 0 with the count printed), and the online loop's damaged files, tried in
process (each must end in a quarantined, counted file or a one-line error)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Callable

RB = ["sample_id", "prompt", "eval_name", "m1", "m1|model_response", "m1|total_cost"]


def mmlu(qid: Any, text: str = "The answer is (A).") -> dict[str, Any]:
    return {"question_id": qid, "question": "Q?", "options": ["a", "b"], "answer": "A",
            "answer_index": 0, "category": "math", "src": "x", "pred": "A",
            "generated_text": text}


def build(root: Path) -> None:
    """The poisoned files, under `root/h21`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_conductor.data.pools import DEMO_PATH
    from ray_conductor.lite import default_policy_dir

    d = root / "h21"
    d.mkdir()
    demo = pq.read_table(DEMO_PATH)

    def poisoned(name: str, column: str, value: Any) -> None:
        vals = demo.column(column).to_pylist()
        vals[3] = value
        i = demo.column_names.index(column)
        pq.write_table(demo.set_column(i, column, pa.array(vals, demo.schema.field(column).type)),
                       d / name)

    poisoned("neg_cost.parquet", "cost", -0.019)
    poisoned("nan_cost.parquet", "cost", float("nan"))
    poisoned("huge_cost.parquet", "cost", 1e300)
    poisoned("neg_tokens.parquet", "output_tokens", -5)
    pq.write_table(pa.concat_tables([demo, demo]), d / "twice.parquet")
    pq.write_table(demo.slice(0, 0), d / "empty.parquet")
    rows = [["a", "['Q?']", "mbpp", "1", "['x']", "0.01"], ["b", "['Q2?']", "mbpp", "0", "['y']",
                                                             "-0.019"]]
    _csv(d / "neg_cost.csv", RB, rows)
    _csv(d / "huge_cost.csv", RB, [rows[0], rows[1][:5] + ["1e300"]])
    _csv(d / "dup_column.csv", RB + ["m1|total_cost"], [rows[0] + ["999"]])
    for name, recs in {"null_id": [mmlu(1), mmlu(None)], "dict_id": [mmlu({"id": 2})]}.items():
        (d / name).mkdir()
        (d / name / "model_outputs_gpt-4o_5shots.json").write_text(json.dumps(recs))
    (d / "surrogate").mkdir()
    (d / "surrogate" / "model_outputs_gpt-4o_5shots.json").write_text(
        json.dumps([mmlu(1)]).replace("Q?", "Q \\ud800?"))
    for name, field, value in (("max_calls", "max_calls", 1e9),
                               ("wrong_type", "workers", "abc"),
                               ("embed_model", "embed_model", "other/encoder")):
        shutil.copytree(default_policy_dir(), d / f"lite_{name}")
        meta = json.loads((d / f"lite_{name}" / "lite.json").read_text())
        meta[field] = value
        (d / f"lite_{name}" / "lite.json").write_text(json.dumps(meta))


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# (command, argv, expect): "exit2", or "counted:<text stdout must show>"
def corpus() -> list[tuple[str, list[str], str]]:
    h = "h21/"
    fast = ["policies=[cheapest]", "limit=3", "progress=false"]
    out = []
    for f in ("neg_cost", "nan_cost", "huge_cost", "neg_tokens", "empty"):
        out.append(("import", [f"pool=parquet:{h}{f}.parquet", f"out={h}o_{f}.parquet"], "exit2"))
        out.append(("eval", [f"pool=parquet:{h}{f}.parquet", *fast], "exit2"))
    for f in ("neg_cost", "huge_cost", "dup_column"):
        out.append(("import", [f"pool=routerbench:{h}{f}.csv", f"out={h}o_{f}.parquet"], "exit2"))
    for f in ("null_id", "dict_id"):
        out.append(("import", [f"pool=mmlu_pro:{h}{f}", f"out={h}o_{f}.parquet"], "exit2"))
    out.append(("import", [f"pool=parquet:{h}twice.parquet", f"out={h}o_twice.parquet"],
                "counted:were dropped"))
    out.append(("import", [f"pool=mmlu_pro:{h}surrogate", f"out={h}o_surrogate.parquet"],
                "counted:invalid Unicode"))
    for f in ("max_calls", "wrong_type", "embed_model"):
        out.append(("eval", [f"policies=[lite:{h}lite_{f}]", "limit=3", "progress=false"],
                    "exit2"))
    tl = ["progress=false", "run_dir=h21/run"]
    for a in (["cost_penalty=inf"], ["selector.k=-5"], ["ppo.lr=-1"], ["ppo.hidden=[]"],
              ["budget=1e-12"], [f"pool=parquet:{h}nan_cost.parquet"],
              ["max_calls=1000000000"]):
        out.append(("train-lite", a + tl, "exit2"))
    for a in (["once=true"], ["mode=actor"]):
        out.append(("retrain", a + ["ray.address=local", "ray.num_cpus=1",
                                    "state_dir=h21/online"], "exit2"))
    return out


# -- the online loop's files, in process ---------------------------------------------------------

def _one_line_error(fn: Callable[[], Any], needle: str) -> dict[str, Any]:
    from ray_conductor.errors import ConductorError

    try:
        fn()
    except ConductorError as e:
        msg = str(e)
        return {"outcome": "one_line_error", "ok": "\n" not in msg and needle in msg,
                "detail": msg[:300]}
    return {"outcome": "accepted", "ok": False, "detail": ""}


def online_cases(root: Path) -> list[dict[str, Any]]:
    """Each damaged file of the online loop: its outcome, and whether it kept the promise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_conductor.online.rewards import rewarded_rows
    from ray_conductor.online.state import LoopState
    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.serve.traffic import FEEDBACK_SCHEMA, TrafficLog, read_traffic, request_row

    base = root / "h21" / "online_files"
    log = TrafficLog(base / "traffic")
    for i in range(4):
        log.append(request_row(request_id=f"r{i}", time=1.7e9 + i, model="m", status=200,
                               question=f"q{i}", answer="The answer is (A)", cost=0.0))
        log.add_feedback(f"r{i}", None, 1e9 if i == 3 else 0.5, None)
    log.flush()
    day = next((base / "traffic" / "requests").iterdir())
    good = next(day.glob("part-*.parquet")).read_bytes()
    bad = {"zero-byte request part": (day, b""), "truncated request part": (day, good[:-40])}
    rows: list[dict[str, Any]] = []
    for i, (what, (folder, data)) in enumerate(bad.items()):
        (folder / f"part-000000000000{i}-bad{i:05d}.parquet").write_bytes(data)
    pq.write_table(pa.table({"x": [1]}), day / "part-0000000000007-foreign0.parquet")
    fday = next((base / "traffic" / "feedback").iterdir())
    pq.write_table(pa.table({"request_id": ["r0"], "time": pa.array([0], FEEDBACK_SCHEMA.field(
        "time").type), "key_id": [None], "reward": ["high"], "label": [None]}),
        fday / "part-0000000000008-strrew00.parquet")
    df = read_traffic(base / "traffic")
    moved = df.attrs["quarantined"]
    rows.append({"id": "online: zero-byte, truncated and foreign request parts, a feedback part "
                       "with a text reward", "outcome": f"quarantined {len(moved)}",
                 "ok": len(moved) == 4 and len(df) == 4 and all(m["moved_to"] for m in moved),
                 "detail": "; ".join(m["reason"][:60] for m in moved)})
    ignored: list[str] = []
    got = rewarded_rows(df, cost_penalty=0.0, reward_range=(-1.0, 1.0), ignored=ignored)
    rows.append({"id": "online: a posted reward of 1e9", "outcome": f"ignored {len(ignored)}",
                 "ok": ignored == ["r3"] and max(r.reward for r in got) <= 1.0, "detail": ""})
    reg = PolicyRegistry(base / "registry")
    for n in range(2):
        (base / f"p{n}").mkdir()
        (base / f"p{n}" / "lite.json").write_text("{}")
        reg.publish(base / f"p{n}", kind="lite")
        reg.promote(n + 1)
    (reg.root / "PROMOTED").write_text("{trunc")
    ok = reg.promoted().version == 2 and reg.rollback().version == 1
    rows.append({"id": "online: a damaged PROMOTED", "outcome": "rebuilt from the history",
                 "ok": ok, "detail": ""})
    (reg.root / "versions" / "v000002" / "VERSION.json").write_text("garbage")
    rows.append({"id": "online: a damaged VERSION.json", "outcome": "rebuilt from its directory",
                 "ok": reg.get(2).kind == "lite", "detail": ""})
    with open(reg.root / "history.jsonl", "a") as f:
        f.write('{"action": "prom')
    rows.append({"id": "online: a torn history.jsonl line", "outcome": "skipped",
                 "ok": len(reg.history()) == 3 and reg.promoted().version == 1, "detail": ""})
    (reg.root / "history.jsonl").write_text("")
    (reg.root / "PROMOTED").write_text("[]")
    rows.append({"id": "online: a damaged PROMOTED and no history",
                 **_one_line_error(reg.promoted, "PROMOTED: damaged")})
    (base / "state").mkdir()
    (base / "state" / "state.json").write_text('{"consumed": 7}')
    rows.append({"id": "online: a damaged state.json",
                 **_one_line_error(lambda: LoopState.load(base / "state"), "damaged online state")})
    (base / "state_file").write_text("x")
    rows.append({"id": "online: a state_dir that is a file",
                 **_one_line_error(lambda: LoopState.load(base / "state_file"), "is a file")})
    return rows
