"""Chaos: N requests through the worker proxies while the provider misbehaves (by default
20% 429s, 10% 5xx, 5% hangs) and one proxy process is SIGKILLed mid-run.

The provider is the fault server in a process of its own; every request carries an id in its
text, so the provider's request log shows how often each one reached it. Proxies run as the
actor graph declares them (restarted under their names, calls in flight re-run), two workers
per process, each worker falling back to the next. Summary:

- `requests`, `succeeded`, `failed_clear` (a failed `Completion` with an error code: the
  caller knows it failed and why), `lost` (no answer, or an unexplained one: must be 0);
- `duplicated_provider_calls`: provider answers beyond the first for one request (a call
  re-run after the kill, or retried after an answer that came too late);
- `recovered_s`: from the SIGKILL until the restarted proxy answers again.

    python benchmarks/chaos.py --requests 300 --out benchmarks/results/chaos.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import time
from collections import Counter
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REQ_ID = re.compile(r"\[(chaos-\d+)\]")


def workers(url: str, n: int, timeout_s: float) -> list[Any]:
    from ray_conductor.workers.config import WorkerConfig

    names = [f"chaos-{i}" for i in range(n)]
    return [WorkerConfig(name=w, model=f"openai/{w}", api_base=url, retries=3,
                         timeout_s=timeout_s, backoff_base_s=0.1, backoff_max_s=1.0,
                         circuit_failures=10, circuit_cooldown_s=2.0,
                         fallbacks=[names[(i + 1) % n]] if n > 1 else [],
                         input_price_per_mtok=1.0, output_price_per_mtok=2.0)
            for i, w in enumerate(names)]


async def until_served(handle: Any, old_pid: int, t_kill: float) -> float:
    """Seconds from the kill until the proxy answers again from a new process."""
    while True:
        try:
            await handle.ready.remote()
            if await handle.pid.remote() != old_pid:
                return time.monotonic() - t_kill
        except Exception:  # noqa: BLE001 - still restarting
            pass
        await asyncio.sleep(0.05)


async def drive(pool: Any, handles: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """Send the requests; SIGKILL the first proxy process after `kill_after` answers."""
    names = [w.name for w in pool.workers()]
    sem = asyncio.Semaphore(a.concurrency)
    done = 0
    killed: dict[str, Any] = {}
    kill_at = max(1, int(a.requests * a.kill_after))
    victim = handles[names[0]]

    async def one(i: int) -> dict[str, Any]:
        nonlocal done
        worker = names[i % len(names)]
        msgs = [{"role": "user", "content": f"[chaos-{i:05d}] What is {i} + 1?"}]
        async with sem:
            t0 = time.monotonic()
            try:
                c = await asyncio.wait_for(pool.complete(worker, msgs, timeout_s=a.deadline_s),
                                           a.deadline_s + a.grace_s)
                row = {"ok": c.ok, "code": c.error_code, "clear": bool(c.error and c.error_code)}
            except TimeoutError:
                row = {"ok": False, "code": "no_answer", "clear": False}
            except Exception as e:  # noqa: BLE001 - an exception is no answer either
                row = {"ok": False, "code": type(e).__name__, "clear": False}
        done += 1
        if done == kill_at and not killed:
            pid = await victim.pid.remote()
            os.kill(pid, signal.SIGKILL)
            killed.update(pid=pid, t=time.monotonic(), after=done)
            killed["probe"] = asyncio.ensure_future(until_served(victim, pid, killed["t"]))
        return {**row, "i": i, "worker": worker, "t0": t0, "t1": time.monotonic()}

    t_start = time.monotonic()
    outcomes = await asyncio.gather(*(one(i) for i in range(a.requests)))
    recovered = await asyncio.wait_for(killed["probe"], 300) if killed else None
    victim_workers = [w for w in names if handles[w] is victim]
    after = [o for o in outcomes if killed and o["ok"] and o["worker"] in victim_workers
             and o["t0"] > killed["t"]]
    return {"outcomes": outcomes, "wall_s": time.monotonic() - t_start,
            "kill": {"pid": killed.get("pid"), "after_answers": killed.get("after"),
                     "at_s": round(killed["t"] - t_start, 3) if killed else None,
                     "hosted": victim_workers,
                     "recovered_s": None if recovered is None else round(recovered, 3),
                     "first_success_after_kill_s": round(min(o["t1"] for o in after)
                                                         - killed["t"], 3) if after else None}}


def provider_counts(log: list[dict[str, Any]]) -> tuple[Counter, Counter, Counter]:
    """(provider answers per request id, calls per request id, calls per outcome)."""
    answered, calls, outcomes = Counter(), Counter(), Counter()
    for entry in log:
        m = REQ_ID.search(entry.get("last_message", ""))
        outcomes[entry["outcome"]] += 1
        if m:
            calls[m.group(1)] += 1
            answered[m.group(1)] += entry["outcome"] == "ok"
    return answered, calls, outcomes


async def run_chaos(a: argparse.Namespace) -> dict[str, Any]:
    """The measurement, on an initialised Ray; stops its proxies and provider at the end."""
    from ray_conductor.graph import (
        GraphConfig,
        GraphSpec,
        make_ray_pool,
        stop_worker_proxies,
    )
    from ray_conductor.testing import FaultProcess
    from ray_conductor.workers.config import WorkerPoolConfig

    provider = FaultProcess(latency_s=0.05, seed=a.seed, timeout_s=30, rate_429=a.rate_429,
                            rate_5xx=a.rate_5xx, rate_hang=a.rate_hang, retry_after_s=0.2)
    ns = f"bench_chaos_{os.getpid()}"
    try:
        spec = GraphSpec.from_config(GraphConfig(workers_per_proxy=2), ns)
        pool = make_ray_pool(spec, WorkerPoolConfig(workers=workers(provider.url, a.workers,
                                                                    a.attempt_timeout_s)))
        handles = {w.name: pool.handle(w.name) for w in pool.workers()}
        got = await drive(pool, handles, a)
        log = provider.requests()
    finally:
        stop_worker_proxies(ns)
        provider.stop()
    outcomes = got.pop("outcomes")
    answered, calls, provider_outcomes = provider_counts(log)
    failed = Counter(o["code"] for o in outcomes if not o["ok"] and o["clear"])
    lost = [o for o in outcomes if not o["ok"] and not o["clear"]]
    summary = {"requests": len(outcomes), "succeeded": sum(o["ok"] for o in outcomes),
               "failed_clear": sum(failed.values()), "lost": len(lost),
               "duplicated_provider_calls": sum(max(0, n - 1) for n in answered.values()),
               "recovered_s": got["kill"]["recovered_s"],
               "first_success_after_kill_s": got["kill"]["first_success_after_kill_s"],
               "wall_s": round(got["wall_s"], 2)}
    return {"summary": summary, "config": vars(a), "kill": got["kill"],
            "failed_by_code": dict(failed), "lost_by_code": dict(Counter(o["code"] for o in lost)),
            "provider": {"calls": sum(provider_outcomes.values()),
                         "outcomes": dict(provider_outcomes),
                         "calls_per_request_mean": round(sum(calls.values()) / max(len(calls), 1),
                                                         3),
                         "requests_answered_twice_or_more": sum(n > 1 for n in answered.values()),
                         "requests_never_reaching_it": len(outcomes) - len(calls)}}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/chaos.json")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=4, help="two per proxy process")
    ap.add_argument("--rate-429", type=float, default=0.20)
    ap.add_argument("--rate-5xx", type=float, default=0.10)
    ap.add_argument("--rate-hang", type=float, default=0.05)
    ap.add_argument("--attempt-timeout-s", type=float, default=2.0, help="cuts a hang off")
    ap.add_argument("--deadline-s", type=float, default=60.0, help="a request's deadline")
    ap.add_argument("--grace-s", type=float, default=120.0,
                    help="past the deadline, a request without an answer counts as lost")
    ap.add_argument("--kill-after", type=float, default=1 / 3,
                    help="SIGKILL a proxy after this share of the requests has an answer")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main() -> None:
    a = parser().parse_args()
    from _bench import environment, local_ray, write_report

    with local_ray(num_cpus=2):
        report = asyncio.run(run_chaos(a))
    report["environment"] = environment(threads=0, packages=("ray", "litellm"))
    write_report(report, a.out)


if __name__ == "__main__":
    main()
