"""How close `reroll.drift_z` came to a false alarm in a shift report's runs: every round's
drift test (`online.drift.first_call_z`) recomputed offline from each run's traffic log
and registry, with the policy that served the tick (the loop's own estimates), for reports
written before the loop logged `drift_z` in its `trained` decisions (it does now).

Per run: the z of every worker tested in every round (a worker with at least
`--min-cells` first-call served answers in the tick), the largest |z|, and the alarms
(|z| >= `--z`). In `shift.py`'s scenarios only (c)'s degraded worker changes, and its
answer fingerprint changes with it (a `replay/` worker's follows its recorded answers): an
alarm on any other worker is a false one, on that one after the shift a true one.

    cd benchmarks && python shift_drift_audit.py results/shift_drift.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, environment, write_report

for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)


def audit_run(run: dict[str, Any], pools: list[Path], penalty: float, z_alarm: float,
              min_cells: int, changed: dict[int, set[str]]) -> dict[str, Any]:
    """The drift tests of one run's rounds; `pools`: the pool each phase served; `changed`:
    per phase, the workers whose answers really changed there (an alarm on them is a true
    one; the loop itself does not test them then, their served cells being older than the
    new answer fingerprint it sees)."""
    import tempfile

    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.online.config import TrainingConfig
    from ray_conductor.online.drift import first_call_z
    from ray_conductor.online.reroll import AnswerCache, Reroller
    from ray_conductor.online.rewards import rewarded_rows
    from ray_conductor.online.trainer import Counterfactual, LiteTrainer
    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.serve.traffic import read_traffic

    root = Path(run["registry"])
    versions = {v.tag: v.path for v in PolicyRegistry(root).versions()}
    rows = rewarded_rows(read_traffic(root.parent / "traffic"), cost_penalty=penalty,
                         models={"online"})
    trainer = LiteTrainer(TrainingConfig(), penalty)
    tests, at = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for k, tick in enumerate(run["ticks"]):
            n = tick["online"]["n"]
            mine, at = rows[at:at + n], at + n
            counts = tick.get("online_version_counts") or {v: 1 for v in tick["online_versions"]}
            tag = max(counts, key=counts.get)  # one version serves a tick (swaps come after)
            pool = ReplayPool(load_pool(f"parquet:{pools[tick['phase']]}"))
            names = [w.name for w in pool.workers()]
            rr = Reroller(pool, {w: "audit" for w in names}, AnswerCache(Path(tmp) / f"{k}"))
            served = rr.served(mine)
            p, nn, _, cols = trainer.estimates(Path(versions[tag]),
                                               Counterfactual(mine, served, list(pool.workers())))
            for w, t in first_call_z(mine, served, p, nn, cols, min_cells).items():
                tests.append({"tick": k, "phase": tick["phase"], "version": tag, "worker": w,
                              "changed": w in changed.get(tick["phase"], set()), **t})
    zs = [abs(t["z"]) for t in tests if not t["changed"]]
    return {"seed": run["seed"], "tests": tests, "rounds": len(run["ticks"]),
            "rounds_tested": len({t["tick"] for t in tests}),
            "max_abs_z": round(max(zs), 2) if zs else None,
            "false_alarms": sum(z >= z_alarm for z in zs),
            "true_alarms": sum(abs(t["z"]) >= z_alarm for t in tests if t["changed"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="a shift.py report whose runs are still under its --work")
    ap.add_argument("--out", default=None, help="default: REPORT with _drift_audit.json")
    ap.add_argument("--z", type=float, default=4.0, help="reroll.drift_z to count alarms at")
    ap.add_argument("--min-cells", type=int, default=20, help="reroll.drift_min_cells")
    args = ap.parse_args()
    path = Path(args.report)
    report = json.loads(path.read_text())
    cfg = report["config"]
    from shift_scenarios import NAMES, build_world, scenario_phases

    world = build_world(Path(cfg["work"]), cfg["penalty"], cfg["train_s"])
    keys = {name: key for key, name in NAMES.items()}
    out: dict[str, Any] = {"summary": {}, "runs": {}}
    for name, runs in report["scenarios"].items():
        audited = []
        for run in runs:
            _, phases = scenario_phases(keys[name], world, cfg["before"], cfg["after"],
                                        run["seed"])
            changed = {1: {world.best}} if keys[name] == "c" else {}
            audited.append(audit_run(run, [ph.pool for ph in phases], cfg["penalty"], args.z,
                                     args.min_cells, changed))
            a = audited[-1]
            print(f"[{name} s{a['seed']}] {len(a['tests'])} tests in {a['rounds_tested']} of "
                  f"{a['rounds']} rounds, max |z| {a['max_abs_z']} (unchanged workers), "
                  f"false alarms {a['false_alarms']}, true {a['true_alarms']}", flush=True)
        zs = [abs(t["z"]) for a in audited for t in a["tests"] if not t["changed"]]
        out["runs"][name] = audited
        out["summary"][name] = {
            "tests": len(zs), "rounds_tested": sum(a["rounds_tested"] for a in audited),
            "rounds": sum(a["rounds"] for a in audited),
            "max_abs_z": round(max(zs), 2) if zs else None,
            "mean_abs_z": round(float(np.mean(zs)), 3) if zs else None,
            "false_alarms": sum(a["false_alarms"] for a in audited),
            "true_alarms": sum(a["true_alarms"] for a in audited),
            "changed_tests": [{k: t[k] for k in ("tick", "worker", "z", "cells")}
                              for a in audited for t in a["tests"] if t["changed"]],
            "z": args.z,
            "min_cells": args.min_cells}
    out.update({"report": str(path), "environment": environment(1)})
    write_report(out, args.out or path.with_name(path.stem + "_drift_audit.json"))


if __name__ == "__main__":
    main()
