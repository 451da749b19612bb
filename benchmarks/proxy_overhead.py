"""What the proxy path costs per call: a direct `litellm.acompletion` against a zero-latency
fault server (in its own process), against the same call through `WorkerProxyCore` in-process
and through the `WorkerProxy` actor via `RayWorkerPool`. Calls are sequential, so each latency
is one call's own path. Summary: overhead_ms_median (actor - direct, medians) and ratio.

    python benchmarks/proxy_overhead.py --out benchmarks/results/proxy_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any, Awaitable, Callable

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

MSG = [{"role": "user", "content": "What is two plus two?"}]


async def timed(n: int, warmup: int, fn: Callable[[], Awaitable[Any]]) -> list[float]:
    """Milliseconds per call, after `warmup` calls that are not counted."""
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = await fn()
        out.append((time.perf_counter() - t) * 1000)
        if getattr(r, "error", None):
            raise RuntimeError(r.error)
    return out


def describe(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"median_ms": round(statistics.median(s), 3), "p90_ms": round(s[int(0.9 * len(s))], 3),
            "mean_ms": round(statistics.fmean(s), 3), "n": len(s)}


async def run(a: argparse.Namespace) -> dict[str, Any]:
    from ray_conductor.testing import FaultProcess
    from ray_conductor.workers.config import WorkerConfig, WorkerPoolConfig
    from ray_conductor.workers.proxy import WorkerProxyCore, litellm_module
    from ray_conductor.graph import GraphSpec, make_ray_pool

    server = FaultProcess(latency_s=0.0)
    try:
        litellm = litellm_module()
        worker = WorkerConfig(name="w", model="openai/bench", api_base=server.url, retries=0,
                              rpm=a.rpm, tpm=a.tpm, timeout_s=30)
        core = WorkerProxyCore(worker)
        spec = GraphSpec.from_config(namespace="bench_overhead")
        pool = make_ray_pool(spec, WorkerPoolConfig(workers=[worker]))

        async def direct() -> Any:
            return await litellm.acompletion(model=worker.model, messages=MSG,
                                             api_base=server.url, api_key="EMPTY", max_retries=0)

        results = {}
        for name, fn in [("direct", direct), ("core", lambda: core.complete(MSG)),
                         ("actor", lambda: pool.complete("w", MSG))]:
            results[name] = await timed(a.calls, a.warmup, fn)
    finally:
        server.stop()
    med = {k: statistics.median(v) for k, v in results.items()}
    summary = {"overhead_ms_median": round(med["actor"] - med["direct"], 3),
               "ratio": round(med["actor"] / med["direct"], 3),
               "core_overhead_ms_median": round(med["core"] - med["direct"], 3),
               "direct_median_ms": round(med["direct"], 3),
               "actor_median_ms": round(med["actor"], 3)}
    return {"summary": summary, "config": vars(a),
            "paths": {k: describe(v) for k, v in results.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/proxy_overhead.json")
    ap.add_argument("--calls", type=int, default=300, help="timed calls per path")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rpm", type=float, default=1e7, help="limits on, but never binding")
    ap.add_argument("--tpm", type=float, default=1e9)
    a = ap.parse_args()

    from _bench import local_ray, write_report

    with local_ray(num_cpus=2):
        report = asyncio.run(run(a))
    write_report(report, a.out)


if __name__ == "__main__":
    main()
