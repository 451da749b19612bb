"""Bad-input census: a corpus of wrong `ray-conductor` invocations (eval, import, train,
train-lite, retrain: bad keys, types, ranges, paths, pools, damaged files, and issue 21's
poisoned recordings, lite policy files and settings: `_hostile.py`), each run as a subprocess
of the installed entry point with a timeout, in a sandbox of files built here; then the
online loop's damaged files (traffic parts, feedback, registry, state), tried in process.

Per invocation it records the exit code, the number of stderr lines, whether a traceback
appeared, whether it hung, and whether any file that existed before was changed or removed
(or a `.tmp` file left behind). Most must end in exit 2 with one stderr line; a few (rows the
issue says are counted: duplicated rows, invalid Unicode) must exit 0 and print their count.
Summary: `tried`, `one_line_exit_2` (exit 2, exactly one stderr line, no traceback),
`counted`, `as_expected`, `tracebacks`, `hangs`, `data_lost`, `litter`, the ids of every
invocation that broke its promise, and `online_files` (each damaged file quarantined,
rebuilt or a one-line error). Train invocations must fail at validation: each has
`progress=false` and a short timeout.

    python benchmarks/bad_inputs.py --out benchmarks/results/bad_inputs.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _hostile  # noqa: E402  (the cases of issue 21, beside this script)
CLI = REPO / ".venv" / "bin" / "ray-conductor"
if not CLI.exists():  # a worktree beside the checkout that holds the venv: the one on PATH
    CLI = Path(shutil.which("ray-conductor") or CLI)
FAST_EVAL = ["policies=[cheapest]", "limit=3", "progress=false"]
RB_HEADER = ["", "sample_id", "prompt", "eval_name", "m1", "m2", "m1|model_response",
             "m2|model_response", "m1|total_cost", "m2|total_cost", "oracle_model_to_route_to"]
RB_ROW = ["0", "mbpp.dev.1", "['Write f.']", "mbpp", "1.0", "0.0", "['def f(): pass']",
          "['hello world']", "0.01", "0.002", "m1"]


def mmlu_rec(qid: int, pred: Any = "A") -> dict[str, Any]:
    return {"question_id": qid, "question": f"Q{qid}?", "options": ["w", "x", "y", "z"],
            "answer": "A", "answer_index": 0, "category": "math", "src": "ori",
            "cot_content": "", "pred": pred, "generated_text": "The answer is (A). " * 5}


def build_sandbox(root: Path) -> None:
    """The files the corpus points at: damaged data, junk configs, outputs not to lose."""
    from ray_conductor.data.pools import DEMO_PATH
    from ray_conductor.data.splits import split_of

    (root / "adir").mkdir()
    (root / "adir" / "keep.txt").write_text("keep me\n")
    (root / "precious.txt").write_text("precious data, not a report\n")
    (root / "notaparquet.txt").write_text("just text\n")
    shutil.copy(DEMO_PATH, root / "pool.parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(DEMO_PATH)  # only the test split's questions: kNN has nothing to fit
    test_only = [split_of(q) == "test" for q in table.column("query_id").to_pylist()]
    pq.write_table(table.filter(pa.array(test_only)), root / "test_only.parquet")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("model_outputs_alpha_5shots.json", json.dumps([mmlu_rec(i) for i in range(30)]))
    data = bytearray(buf.getvalue())
    data[200] ^= 0xFF  # inside the member: the zip's directory still reads, its CRC fails
    (root / "model_outputs_alpha_5shots.zip").write_bytes(bytes(data))
    (root / "nonstring").mkdir()
    (root / "nonstring" / "model_outputs_alpha_5shots.json").write_text(
        json.dumps([mmlu_rec(1), mmlu_rec(2, pred=5)]))
    (root / "mmlu_dir").mkdir()
    (root / "mmlu_dir" / "model_outputs_alpha_5shots.json").write_text(
        json.dumps([mmlu_rec(i) for i in range(3)]))
    with open(root / "latin1.csv", "w", newline="", encoding="latin-1") as fh:
        w = csv.writer(fh)
        w.writerow(RB_HEADER)
        w.writerow(RB_ROW[:2] + ["['Écrire café.']"] + RB_ROW[3:])
    with open(root / "short_rows.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(RB_HEADER)
        w.writerow(RB_ROW)
        w.writerow(RB_ROW[:4])
    run = root / "run_old"
    (run / "checkpoints" / "iter_000000").mkdir(parents=True)
    (run / "checkpoints" / "iter_000000" / "COMPLETE").write_text("ok\n")
    (run / "checkpoints" / "iter_000000" / "trainer_state.json").write_text(
        json.dumps({"iteration": 0, "weights_version": 1}))
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 0, "reward_mean": 0.5}) + "\n")
    (root / "ro").mkdir()
    os.chmod(root / "ro", 0o555)
    files = {"tabs.yaml": "concurrency: 3\n\t: [\n", "list.yaml": "- a\n- b\n",
             "unknown_key.yaml": "colour: blue\n", "bad_range.yaml": "concurrency: 0\n",
             "scalar.yaml": "42\n", "bad_type.yaml": "ray:\n  num_cpus: lots\n",
             "bad_workers.yaml": "workers: [\n",
             "slow_workers.yaml": "workers:\n  - name: a\n    model: openai/x\n    rpm: 0.001\n",
             "nameless_workers.yaml": "workers:\n  - model: openai/x\n",
             "odd_worker_key.yaml": "workers:\n  - name: a\n    model: openai/x\n    colour: 1\n"}
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "junk.yaml").write_bytes(bytes(range(256)) * 4)
    _hostile.build(root)


def corpus() -> list[tuple[str, list[str], str]]:
    """(id, argv, expect) for every bad invocation; expect "exit2" or "counted:<stdout>"."""
    E = [("eval", a) for a in [
        ["concurrency=0"], ["concurrency=-5"], ["concurrency="], ["concurrency=abc"],
        ["concurrency=1.5"], ["limit=-1"], ["limit=0"], ["limit=abc"], ["knn_k=0"],
        ["knn_k=-3"], ["split=validation"], ["split="], ["backend=spark"], ["policies=[]"],
        ["policies=[best]"], ["policies=singles"], ["policies=[single:nobody]"],
        ["policies=[conductor:/nonexistent/model]"], ["policies=[conductor:runs_missing]"],
        ["colour=blue"], ["concurency=4"], ["limit"], ["--verbose"], ["ray=3"],
        ["ray.namespace="], ["ray.num_cpus=0"], ["ray.object_store_memory_mb=1"],
        ["graph.workers_per_proxy=0"], ["graph.worker_proxy.count=0"], ["graph.rollout=7"],
        ["pool=nosuch:x"], ["pool=routerbench:/nonexistent.csv"],
        ["pool=parquet:notaparquet.txt"], ["pool=parquet:test_only.parquet", "policies=[knn]"],
        ["out=adir"], ["out=/sys/eval.json"], ["out=precious.txt"],
        ["pool=parquet:pool.parquet", "out=pool.parquet"], ["out=x.png"], ["plot=adir"],
        ["out=precious.txt/sub/x.json"], ["workers=workers_example"],
        ["backend=ray", "workers=nosuch.yaml"], ["backend=ray", "workers=bad_workers.yaml"],
        ["backend=ray", "workers=slow_workers.yaml"],
        ["backend=ray", "workers=nameless_workers.yaml"],
        ["backend=ray", "workers=odd_worker_key.yaml"], ["config=nosuch"],
        ["config=tabs.yaml"], ["config=list.yaml"], ["config=junk.yaml"],
        ["config=unknown_key.yaml"], ["config=bad_range.yaml"], ["config=scalar.yaml"],
        ["config=bad_type.yaml"], ["out=${oc.env:NO_SUCH_VAR_XYZ}"], ["limit=${nope}"],
        ["split=[a]"], ["seed=1e400"], ["data_dir=null"], ["pool="]]]
    I = [("import", a) for a in [
        ["pool=mmlu_pro:model_outputs_alpha_5shots.zip", "out=t.parquet"],
        ["pool=routerbench:latin1.csv", "out=t.parquet"],
        ["pool=routerbench:short_rows.csv", "out=t.parquet"],
        ["pool=mmlu_pro:nonstring", "out=t.parquet"], ["pool=demo", "out=adir"],
        ["pool=demo", "out=precious.txt"],
        ["pool=parquet:pool.parquet", "out=pool.parquet", "overwrite=true"],
        ["pool=demo", "out=/sys/t.parquet"], ["pool=mmlu_pro:/nonexistent", "out=t.parquet"],
        ["overwrite=maybe"], ["out="], ["pool=mmlu_pro:mmlu_dir", "out=mmlu_dir/x.json"]]]
    T = [("train", a + ["progress=false"]) for a in [
        ["model=/nonexistent/model", "run_dir=r_new"], ["model=not-a-model/xyz", "run_dir=r_new"],
        ["model=precious.txt", "run_dir=r_new"], ["model=adir", "run_dir=r_new"],
        ["model=", "run_dir=r_new"], ["run_dir=/sys/run"], ["run_dir=precious.txt"],
        ["run_dir=precious.txt/sub"], ["run_dir=run_old"],
        ["run_dir=run_old", "overwrite=true", "pool=nosuch:x"],
        ["run_dir=run_old", "overwrite=true", "model=/nonexistent/model"],
        ["run_dir=run_old", "overwrite=true", "group_size=1"],
        ["run_dir=run_old", "overwrite=true", "eval_baselines=[best]"],
        ["group_size=1"], ["iterations=0"], ["questions_per_iter=0"], ["checkpoint_every=0"],
        ["keep_checkpoints=0"], ["warmup_lr=0"], ["eval_limit=0"], ["learner.lr=0"],
        ["learner.lr=-1"], ["conductor.top_p=2"], ["conductor.temperature=-1"],
        ["conductor.engine=tpu"], ["conductor.dtype=int8"], ["learner.loss_agg=sum"],
        ["eval_baselines=[best]", "run_dir=r_new"],
        ["pool=parquet:test_only.parquet", "run_dir=r_new"],
        ["pool=parquet:test_only.parquet", "split=test", "eval_baselines=[knn]",
         "run_dir=r_new"], ["backend=spark"], ["config=tabs.yaml"],
        ["graph.rollout.num_gpus=-1"], ["run_dir="], ["reward.name=nope"],
        ["conductor.device=cuda"],
        ["pool=mmlu_pro:mmlu_dir", "run_dir=mmlu_dir/run"]]]
    if os.geteuid() != 0:  # permission bits bind everyone but root (/sys binds root too)
        E.append(("eval", ["out=ro/eval.json"]))
        T.append(("train", ["run_dir=ro/run", "progress=false"]))
    out = []
    for cmd, argv, expect in [(c, a, "exit2") for c, a in E + I + T] + _hostile.corpus():
        if cmd == "eval" and not any(a.startswith(("policies=", "limit=")) for a in argv):
            argv = argv + FAST_EVAL  # if it runs at all, it runs briefly
        out.append((f"{cmd} {' '.join(argv)}", [cmd, *argv], expect))
    return out


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (the pool cache aside)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and ".cache" not in p.parts and "logs" not in p.parts:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_one(argv: list[str], root: Path, timeout_s: float, expect: str = "exit2"
            ) -> dict[str, Any]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "RAY_CONDUCTOR_LOG_DIR": str(root / "logs")}
    before, t0 = snapshot(root), time.perf_counter()
    try:
        p = subprocess.run([str(CLI), *argv], cwd=root, env=env, capture_output=True,
                           text=True, timeout=timeout_s, start_new_session=True,
                           check=False)
        rc, out, err, hang = p.returncode, p.stdout, p.stderr, False
    except subprocess.TimeoutExpired as e:
        rc, hang = None, True
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else ""
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else ""
    after = snapshot(root)
    lost = sorted(k for k, h in before.items() if after.get(k) != h)
    litter = sorted(k for k in set(after) - set(before) if k.endswith(".tmp"))
    lines = [x for x in err.splitlines() if x.strip()]
    one_line = rc == 2 and len(lines) == 1 and "Traceback" not in err
    counted = expect.startswith("counted:") and rc == 0 and expect.split(":", 1)[1] in out
    return {"rc": rc, "wall_s": round(time.perf_counter() - t0, 2), "hang": hang,
            "stderr_lines": len(lines), "stderr": lines[-1][:400] if lines else "",
            "traceback": "Traceback (most recent call last)" in err + out,
            "changed_or_removed": lost, "litter": litter, "expect": expect,
            "one_line_exit_2": one_line, "counted": counted,
            "as_expected": (counted if expect != "exit2" else one_line) and not lost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/bad_inputs.json")
    ap.add_argument("--timeout-s", type=float, default=120.0)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    root = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    build_sandbox(root)
    rows = []
    try:
        for cid, argv, expect in corpus():
            row = {"id": cid, **run_one(argv, root, a.timeout_s, expect)}
            rows.append(row)
            mark = "ok " if row["as_expected"] else "BAD"
            print(f"{mark} rc={row['rc']} {row['wall_s']:>6}s  {cid}\n      {row['stderr']}",
                  flush=True)
        online = _hostile.online_cases(root)
        for r in online:
            print(f"{'ok ' if r['ok'] else 'BAD'} {r['outcome']:<28} {r['id']}", flush=True)
    finally:
        os.chmod(root / "ro", 0o755)
        shutil.rmtree(root, ignore_errors=True)
    summary = {"tried": len(rows), "one_line_exit_2": sum(r["one_line_exit_2"] for r in rows),
               "counted": sum(r["counted"] for r in rows),
               "as_expected": sum(r["as_expected"] for r in rows),
               "tracebacks": sum(r["traceback"] for r in rows),
               "hangs": sum(r["hang"] for r in rows),
               "data_lost": sum(bool(r["changed_or_removed"]) for r in rows),
               "litter": sum(bool(r["litter"]) for r in rows),
               "not_as_expected": [r["id"] for r in rows if not r["as_expected"]],
               "by_command": {c: sum(r["id"].split()[0] == c for r in rows)
                              for c in ("eval", "import", "train", "train-lite", "retrain")},
               "online_files": {"tried": len(online), "ok": sum(r["ok"] for r in online),
                                "not_ok": [r["id"] for r in online if not r["ok"]]}}
    from _bench import environment, write_report

    write_report({"summary": summary, "environment": environment(threads=0),
                  "running_as_root": os.geteuid() == 0, "invocations": rows,
                  "online_files": online}, a.out)


if __name__ == "__main__":
    main()
