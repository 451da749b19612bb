"""Rate limits under load: one `WorkerProxy` actor in front of the fault server, driven by more
concurrent callers than its limit allows, in both priority classes at once.

Phase 1 sends only serve calls (Poisson arrivals); phase 2 sends the same serve load while
`--rollout-callers` closed-loop rollout callers saturate the worker. Reported:
- throughput_ratio: admissions per window / allowed per window, over the saturated phase;
- violations: windows of length window_s holding more admissions than the limit (from the
  limiter's admission times); server_violations: the same over the fault server's arrival
  times, which add loopback and scheduling jitter after admission;
- serve_p99_wait_s / rollout_p99_wait_s in phase 2, serve_p99_wait_no_rollout_s in phase 1.
The fault server runs in its own process, so that its arrival times are not skewed by this
driver's event loop.

    python benchmarks/rate_limits.py --out benchmarks/results/rate_limits.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


def window_violations(times: list[float], window_s: float, limit: int) -> tuple[int, int]:
    """(windows [t, t + window_s) starting at an admission that hold more than `limit`,
    the most any such window holds)."""
    times = sorted(times)
    bad, most, j = 0, 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + window_s:
            j += 1
        most = max(most, j - i)
        bad += j - i > limit
    return bad, most


async def call(pool: Any, text: str) -> tuple[str, Any]:
    return text, await pool.complete("w", [{"role": "user", "content": text}])


async def serve_load(pool: Any, rate: float, duration_s: float, rng: random.Random,
                     tag: str) -> list:
    """Poisson arrivals of serve calls for `duration_s`; returns (text, completion) pairs."""
    tasks, t_end, i = [], time.monotonic() + duration_s, 0
    while time.monotonic() < t_end:
        tasks.append(asyncio.create_task(call(pool, f"serve {tag} {i}")))
        i += 1
        await asyncio.sleep(rng.expovariate(rate))
    return list(await asyncio.gather(*tasks))


async def rollout_caller(pool: Any, stop: asyncio.Event, out: list, k: int) -> None:
    n = 0
    while not stop.is_set():
        out.append(await call(pool, f"rollout {k}-{n}"))
        n += 1


async def run(a: argparse.Namespace) -> dict[str, Any]:
    from ray_conductor.testing import FaultProcess
    from ray_conductor.workers.config import WorkerConfig, WorkerPoolConfig
    from ray_conductor.graph import GraphSpec, make_ray_pool

    server = FaultProcess(latency_s=a.latency_s, seed=a.seed)
    limit = int(a.rpm * a.window_s / 60)
    cfg = WorkerPoolConfig(queue_timeout_s=600, workers=[
        WorkerConfig(name="w", model="openai/bench", api_base=server.url, rpm=a.rpm,
                     window_s=a.window_s, max_concurrency=a.max_concurrency, retries=0,
                     timeout_s=30)])
    try:
        spec = GraphSpec.from_config(namespace="bench_rate_limits")
        serve = make_ray_pool(spec, cfg, priority="serve")
        rollout = serve.with_priority("rollout")
        rng = random.Random(a.seed)
        # phase 1: serve alone
        serve_alone = await serve_load(serve, a.serve_rate, a.duration_s, rng, "alone")
        await asyncio.sleep(a.window_s)
        # phase 2: saturating rollouts, then the same serve load on top
        stop, rollouts = asyncio.Event(), []
        callers = [asyncio.create_task(rollout_caller(rollout, stop, rollouts, k))
                   for k in range(a.rollout_callers)]
        await asyncio.sleep(2 * a.window_s)  # rollouts saturate the window
        t0 = time.time()
        serve_mixed = await serve_load(serve, a.serve_rate, a.duration_s, rng, "mixed")
        t1 = time.time()
        stop.set()
        await asyncio.gather(*callers)
        log = server.requests()
        stats = serve.stats()
    finally:
        server.stop()

    everything = serve_alone + serve_mixed + rollouts
    failures = [c.error for _, c in everything if not c.ok]
    admitted = {text: c.meta["admitted_at"] for text, c in everything if c.ok}
    in_phase = [t for t in admitted.values() if t0 <= t < t1]
    achieved_per_window = len(in_phase) / ((t1 - t0) / a.window_s)
    violations, most = window_violations(list(admitted.values()), a.window_s, limit)
    arrivals = [r["time"] for r in log]
    server_bad, server_most = window_violations(arrivals, a.window_s, limit)
    delays = [r["time"] - admitted[r["last_message"]] for r in log
              if r["last_message"] in admitted]
    waits = {"serve_alone": [c.queue_wait_s for _, c in serve_alone],
             "serve_mixed": [c.queue_wait_s for _, c in serve_mixed],
             "rollout": [c.queue_wait_s for _, c in rollouts
                         if t0 <= c.meta.get("admitted_at", 0) < t1]}
    summary = {
        "throughput_ratio": round(achieved_per_window / limit, 4),
        "violations": violations,
        "server_violations": server_bad,
        "serve_p99_wait_s": round(quantile(waits["serve_mixed"], 0.99), 4),
        "serve_p99_wait_no_rollout_s": round(quantile(waits["serve_alone"], 0.99), 4),
        "rollout_p99_wait_s": round(quantile(waits["rollout"], 0.99), 4),
        "serve_p50_wait_s": round(quantile(waits["serve_mixed"], 0.5), 4),
        "serve_p50_wait_no_rollout_s": round(quantile(waits["serve_alone"], 0.5), 4),
        "serve_max_wait_s": round(max(waits["serve_mixed"], default=0.0), 4),
        "limit_per_window": limit,
        "achieved_per_window": round(achieved_per_window, 2),
        "max_admissions_in_a_window": most,
        "max_server_arrivals_in_a_window": server_most,
        "admission_to_server_p50_s": round(quantile(delays, 0.5), 4),
        "admission_to_server_p99_s": round(quantile(delays, 0.99), 4),
        "admission_to_server_max_s": round(max(delays, default=0.0), 4),
        "failures": len(failures),
    }
    return {"summary": summary,
            "config": vars(a),
            "counts": {"serve_alone": len(serve_alone), "serve_mixed": len(serve_mixed),
                       "rollout": len(rollouts), "server_requests": len(log)},
            "first_failures": failures[:5],
            "stats": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/rate_limits.json")
    ap.add_argument("--window-s", type=float, default=1.0)
    ap.add_argument("--rpm", type=float, default=2400.0, help="per minute (40 per 1 s window)")
    ap.add_argument("--duration-s", type=float, default=20.0, help="per phase")
    ap.add_argument("--serve-rate", type=float, default=4.0, help="serve calls per second")
    ap.add_argument("--rollout-callers", type=int, default=64)
    ap.add_argument("--max-concurrency", type=int, default=64)
    ap.add_argument("--latency-s", type=float, default=0.01, help="fault server latency")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from _bench import local_ray, write_report

    with local_ray(num_cpus=2):
        report = asyncio.run(run(a))
    write_report(report, a.out)


if __name__ == "__main__":
    main()
