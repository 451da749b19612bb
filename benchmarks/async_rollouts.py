"""Overlapped rollouts against the synchronous loop: the same short training run twice, with
workers behind the loopback fault server (1 s latency per call), so a rollout waits on its
calls while the learner could be updating.

    python benchmarks/async_rollouts.py --out benchmarks/results/async_rollouts.json [--pairs 3]

Each worker call is a real HTTP round trip to `testing.fault_server` (its 1 s latency), then
the worker's recorded answer from the demo pool (so rewards stay judgeable). The conductor
is the tiny model with structure-constrained decoding (every plan parses and calls workers),
first warm-started on 16 of the lite tier's programs (the same seeded warm start for both).

Summary: `sync_samples_per_s`, `async_samples_per_s`, `speedup`, `max_staleness` (<= the
bound), `reward_gap` (mean reward over the last iterations, overlapped minus sync), and
`ideal_speedup`: what overlapping can give at most given the sync run's phases (`bounds`).
Each mode also reports `phases` (mean s per timed iteration: sampling wall and CPU time, the
waits for weights, for the engine and on worker calls, the weight swap, the update and the
sync), a `timeline` (the same iterations on the wall clock across the processes: sampling,
updating, both at once, only worker calls in flight, nothing) and each iteration's intervals.
Measured on a shared, loaded 2-core machine: compare the two only within one run, with the
load averages recorded beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))


class ServedReplayPool:
    """The demo pool's recorded answers, each delivered after a round trip to the fault
    server (what a live provider's latency costs a rollout)."""

    def __init__(self, url: str, spec: str = "demo"):
        from ray_conductor.data.pools import load_pool
        from ray_conductor.data.replay import ReplayPool

        self.url, self.replay = url, ReplayPool(load_pool(spec))
        self._session = None

    def workers(self):
        return self.replay.workers()

    async def complete(self, worker, messages, **params):
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = {"model": worker, "messages": [{"role": "user", "content": "x"}]}
        async with self._session.post(f"{self.url}/chat/completions", json=body) as r:
            await r.read()
        return await self.replay.complete(worker, messages, **params)


def served_pool(url: str) -> ServedReplayPool:
    return ServedReplayPool(url)


def run(overlap: bool, url: str, args, overrides: list[str]) -> dict:
    from functools import partial

    import ray

    from ray_conductor.config import load
    from ray_conductor.rl.trainer import TrainConfig, train

    with tempfile.TemporaryDirectory(prefix="bench_async_") as tmp:
        cfg = load(TrainConfig, [
            f"model={args.model}", "pool=demo", "backend=local", f"iterations={args.iterations}",
            f"questions_per_iter={args.questions}", f"group_size={args.group}",
            f"run_dir={tmp}/run", "eval_at_end=false", "checkpoint_every=1000000",
            "progress=false", "log_samples=false", f"overlap={str(overlap).lower()}",
            f"max_staleness={args.bound}", "conductor.recursion_depth=0",
            "conductor.constrain=true", "conductor.worker_ids=name", "conductor.programs=true",
            "conductor.max_steps=4", "conductor.max_subtask_chars=60", "conductor.few_shot=false",
            "conductor.max_question_chars=200", f"conductor.max_new_tokens={args.max_new_tokens}",
            "conductor.temperature=1.0", "learner.lr=1e-4",
            # the same warm start for both runs (seeded): the random tiny model first learns to
            # write the lite tier's programs, so constrained decoding rarely has to search
            "warm_start.source=lite:default", "warm_start.limit=16", "warm_start.batch=8",
            f"warm_start.epochs={args.warm_epochs}", "warm_start.lr=5e-3",
            "graph.rollout.torch_threads=1",
            "graph.learner.torch_threads=1", "ray.namespace=bench_async_rollouts", *overrides])
        t0, load0 = time.perf_counter(), loadavg()
        result = train(cfg, pool=partial(served_pool, url))
        wall = time.perf_counter() - t0
        ray.shutdown()
    rows = sorted((r for r in result["metrics"] if r["iteration"] >= 0),
                  key=lambda r: r["iteration"])
    timed = rows[1:]  # the first iteration loads and warms up
    secs = sum(r["time/iteration_s"] for r in timed)
    n = args.questions * args.group
    last = rows[-args.last:]
    return {"samples_per_s": round(n * len(timed) / secs, 4),
            "mean_iteration_s": round(secs / len(timed), 3),
            "max_staleness": max(r["staleness"] for r in rows),
            "reward_last": round(mean(r["reward_mean"] for r in last), 4),
            "calls_per_plan": round(mean(r["calls_per_plan"] for r in rows), 3),
            "parse_rate": round(mean(r["parse_rate"] for r in rows), 3),
            "phases": {k: round(mean(r.get(f"time/{k}", 0.0) for r in timed), 3)
                       for k in PHASES},
            "timeline": timeline(rows),
            "iterations": [iteration_row(r, rows[0]["time"]) for r in rows],
            "total_wall_s": round(wall, 1), "loadavg": [load0, loadavg()]}


# per timed iteration (mean s): the driver's wait for the batch (rollout_s), the rollout's
# parts (see RolloutWorker.rollout) and the learner's update and the weight sync
PHASES = ("rollout_s", "generate_s", "generate_cpu_s", "version_wait_s", "lock_wait_s",
          "workers_s", "swap_wait_s", "swap_s", "update_s", "sync_s", "iteration_s")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _union(intervals: list, lo: float, hi: float) -> list[list[float]]:
    """The intervals clipped to [lo, hi], merged."""
    out: list[list[float]] = []
    for a, b in sorted([max(a, lo), min(b, hi)] for a, b in intervals if b > lo and a < hi):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _length(iv: list) -> float:
    return sum(b - a for a, b in iv)


def _overlap(x: list, y: list) -> float:
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in x for c, d in y)


def timeline(rows: list[dict]) -> dict:
    """Over the timed iterations (end of the first to end of the last, wall clock across the
    processes): seconds per iteration the rollout actor samples, the learner updates, both
    at once, only worker calls are waited on, and nothing runs (the driver, Ray, logging);
    and the mean time from the end of an update to its weights landing in the rollout actor
    (the state dict copied, through the object store, swapped in)."""
    lo, hi = rows[0]["time"], rows[-1]["time"]
    get = {k: [iv for r in rows for iv in r.get("clock", {}).get(k, [])]
           for k in ("generate", "workers", "update", "sync")}
    gen, upd = _union(get["generate"], lo, hi), _union(get["update"], lo, hi)
    busy = _union(get["generate"] + get["update"] + get["sync"], lo, hi)
    anything = _union(get["generate"] + get["update"] + get["sync"] + get["workers"], lo, hi)
    per = max(len(rows) - 1, 1)
    # from the end of the update that made a version to its landing in the rollout actor
    made = {r["weights_version"]: r["clock"]["update"][0][1] for r in rows if r.get("clock")}
    lags = {v: t - made[v] for r in rows for v, t in r.get("clock", {}).get("loaded", [])
            if v in made}
    return {"sync_latency_s": round(mean(lags.values()), 3) if lags else None,
            **{k: round(v / per, 3) for k, v in {
        "generate_s": _length(gen), "update_s": _length(upd),
        "generate_and_update_s": _overlap(gen, upd),
        "only_worker_waits_s": _length(anything) - _length(busy),
        "idle_s": (hi - lo) - _length(anything), "iteration_s": hi - lo}.items()}}


def iteration_row(row: dict, t0: float) -> dict:
    """One iteration's phases and its wall-clock intervals, in s since the end of the first."""
    rel = {k: [[a if k == "loaded" else round(a - t0, 2), round(b - t0, 2)] for a, b in v]
           for k, v in row.get("clock", {}).items()}
    return {"iteration": row["iteration"], "staleness": row["staleness"],
            **{k: round(row.get(f"time/{k}", 0.0), 3) for k in PHASES}, "clock": rel}


def bounds(sync: dict, bound: int) -> dict:
    """What overlapping can give at most, from the synchronous run's phases (one rollout
    actor: its sampling rounds run one after another).

    - `pipelined`: sampling and the update on separate cores, each as fast as in the sync
      run; an iteration takes at least one sampling round, one update + sync, and 1/(1+bound)
      of the chain sample -> execute -> update -> sync that a batch `bound` ahead waits for.
    - `shared_cores`: sampling and the update take turns on the CPU (a loaded machine), so only
      the waits on worker calls overlap.
    - `rollout_vs_update` = (R + T) / max(R, T), R the rollout, T the update and sync."""
    p = sync["phases"]
    g, w, t = p["generate_s"], p["workers_s"], p["update_s"] + p["sync_s"]
    it, r = sync["mean_iteration_s"], p["rollout_s"]
    chain = g + w + t
    return {"pipelined": round(it / max(g, t, chain / (1 + bound)), 3),
            "shared_cores": round(it / max(g + t, it - w), 3),
            "rollout_vs_update": round((r + t) / max(r, t), 3)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/async_rollouts.json")
    ap.add_argument("--model", default="tiny-smollm2")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--bound", type=int, default=1)
    ap.add_argument("--latency-s", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--last", type=int, default=3, help="iterations the reward gap averages")
    ap.add_argument("--warm-epochs", type=int, default=20,
                    help="behaviour-cloning epochs over 16 lite programs before GRPO")
    ap.add_argument("--pairs", type=int, default=1,
                    help="sync/overlapped pairs run in turn (a loaded machine's noise: the "
                         "summary takes the median pair (the upper one of an even count))")
    args, overrides = ap.parse_known_args(argv)

    from _bench import environment, write_report

    from ray_conductor.testing.fault_server import FaultProcess

    server = FaultProcess(latency_s=args.latency_s)
    pairs = []
    try:
        for _ in range(args.pairs):
            sync = run(False, server.url, args, overrides)
            pairs.append((sync, run(True, server.url, args, overrides)))
        calls = len(server.requests())
    finally:
        server.stop()
    rows = [pair_summary(s, a, args.bound) for s, a in pairs]
    k = sorted(range(len(rows)), key=lambda i: rows[i]["speedup"])[len(rows) // 2]
    sync, overlapped = pairs[k]
    ideal = bounds(sync, args.bound)
    summary = {**rows[k], "pairs": len(rows), "speedups": [r["speedup"] for r in rows],
               "max_staleness": max(r["max_staleness"] for r in rows)}
    write_report({"summary": summary, "sync": sync, "async": overlapped, "ideal_speedup": ideal,
                  "pairs": rows, "server_calls": calls, "config": vars(args),
                  "overrides": overrides, "machine": environment(1),
                  "note": "a shared 2-core machine loaded by other agents; each pair's two runs "
                          "are back to back in one process, the pairs in turn; sync and async "
                          "hold the median pair; loadavg = os.getloadavg() before and after "
                          "each run. phases: mean s per timed iteration as each process "
                          "measured it; timeline: the same iterations laid side by side on the "
                          "wall clock; ideal_speedup: see bounds() in the script"}, args.out)
    return 0


def pair_summary(sync: dict, overlapped: dict, bound: int) -> dict:
    ideal = bounds(sync, bound)
    return {"sync_samples_per_s": sync["samples_per_s"],
            "async_samples_per_s": overlapped["samples_per_s"],
            "speedup": round(overlapped["samples_per_s"] / sync["samples_per_s"], 3),
            "ideal_speedup": ideal["pipelined"],
            "ideal_speedup_shared_cores": ideal["shared_cores"],
            "max_staleness": overlapped["max_staleness"], "bound": bound,
            "reward_gap": round(overlapped["reward_last"] - sync["reward_last"], 4),
            "loadavg_1m": [sync["loadavg"][0][0], overlapped["loadavg"][1][0]]}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
