"""Memory of the worker proxies: resident set size (RSS, and USS: memory no other process
shares) of the proxy processes for the demo pool's 12 replay workers, one worker per process
(`graph.workers_per_proxy=1`, the default) against all twelve in one process.

    python benchmarks/proxy_memory.py --out benchmarks/results/proxy_memory.json

Each proxy process imports litellm (~250 MB) and loads the replay pool it answers from, so
the per-process cost is paid once per process, not once per worker. Summary: per layout the
number of processes and their total RSS/USS in MiB, and the saving.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import environment, local_ray, write_report  # noqa: E402


def measure(per_process: int, namespace: str) -> dict:
    import psutil
    import ray

    from ray_conductor.data.pools import load_pool
    from ray_conductor.graph import GraphConfig, GraphSpec, make_ray_pool, stop_worker_proxies
    from ray_conductor.workers.config import WorkerPoolConfig, replay_workers

    data = load_pool("demo")
    cfg = WorkerPoolConfig(workers=replay_workers("demo", data.worker_infos()), replay="demo")
    spec = GraphSpec.from_config(GraphConfig(workers_per_proxy=per_process), namespace=namespace)
    t0 = time.perf_counter()
    pool = make_ray_pool(spec, cfg)
    ready_s = time.perf_counter() - t0
    q = data.queries("test")[0]

    async def one_call_each() -> list:  # every worker answers once: pools loaded, caches warm
        return await asyncio.gather(*(pool.complete(w.name, [{"role": "user", "content": "x"}],
                                                    metadata={"query_id": q.query_id})
                                      for w in pool.workers()))

    answered = sum(c.ok for c in asyncio.run(one_call_each()))
    hosts = {id(h): h for h in (pool.handle(w.name) for w in pool.workers())}.values()
    pids = ray.get([h.pid.remote() for h in hosts])
    rss = uss = 0
    for pid in pids:
        full = psutil.Process(pid).memory_full_info()
        rss, uss = rss + full.rss, uss + full.uss
    stop_worker_proxies(namespace)
    mib = 2**20
    return {"workers_per_proxy": per_process, "processes": len(pids),
            "workers": len(pool.workers()), "answered": answered,
            "rss_mib_total": round(rss / mib), "uss_mib_total": round(uss / mib),
            "rss_mib_per_process": round(rss / mib / len(pids)), "ready_s": round(ready_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/proxy_memory.json")
    a = ap.parse_args()
    with local_ray(num_cpus=2, object_store_mb=200):
        one = measure(1, "bench_mem_1")
        all_ = measure(12, "bench_mem_12")
    summary = {"one_per_process": one, "twelve_per_process": all_,
               "rss_saved_mib": one["rss_mib_total"] - all_["rss_mib_total"],
               "rss_ratio": round(all_["rss_mib_total"] / one["rss_mib_total"], 3)}
    write_report({"summary": summary, "environment": environment(2, ("ray", "litellm"))}, a.out)


if __name__ == "__main__":
    main()
