"""Load on the serving app from a client process on loopback, against a bare Serve echo app.

Three measurements, each a fixed number of requests at a bounded concurrency from a separate
client process (asyncio + httpx, JSON over HTTP, what any OpenAI client sends); the paths of
1 and 2 are measured in interleaved rounds (on a shared machine the load drifts; each round
of ours is paired with a bare round measured under about the same load):

1. `conductor`: the product path on the embedded default (the kNN router plans, a replay
   worker answers through the shared proxy), recorded test questions; beside it the same
   with a planner that needs no model (`cheapest`) and a pass-through to one worker;
2. `bare`: a one-deployment Serve app that returns the request's JSON (Ray's release
   benchmarks report ~2.2 ms HTTP p50 for a trivial deployment), same machine, same load;
   `throughput_ratio_vs_bare_serve` = conductor rps / bare rps;
3. `critical_path`: a scripted workflow over fixed-latency workers (a fault server in its own
   process answers each call after `--worker-latency-s`): two parallel steps, then one that
   reads both, so the slowest chain is 2 x the latency; `overhead_ratio_vs_critical_path` =
   median end-to-end latency / that chain (ideal 1.0).

    cd benchmarks && python serve_load.py            # writes results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, environment, local_ray, write_report

for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)


# -- the client process ------------------------------------------------------------------------


async def _load(url: str, bodies: list[dict], concurrency: int) -> dict:
    """Send `bodies` with at most `concurrency` in flight; latency of each 200, the errors."""
    import httpx

    lat: list[float] = []
    served: list[float] = []  # the ingress's own latency (the `conductor` block)
    chains: list[float] = []  # the slowest chain of measured step latencies
    errors: list[str] = []
    todo = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        async def worker() -> None:
            for body in todo:
                t = time.perf_counter()
                try:
                    r = await client.post(url, json=body)
                except httpx.HTTPError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t)
                    ext = r.json().get("conductor")  # None from the bare echo app
                    if ext:
                        served.append(ext["latency_s"])
                        chains.append(_slowest_chain(ext["steps"]))
                else:
                    errors.append(f"{r.status_code}: {r.text[:200]}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": len(bodies), "concurrency": concurrency, "wall_s": round(wall, 3),
            "rps": round(len(bodies) / wall, 2), "errors": len(errors),
            "error_samples": errors[:5],
            "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2)
            if lat else None,
            "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else None,
            "ingress_p50_ms": round(1000 * statistics.median(served), 2) if served else None,
            "measured_chain_p50_ms": round(1000 * statistics.median(chains), 2)
            if chains else None}


def _slowest_chain(steps: list[dict]) -> float:
    """The longest path through the steps' access lists, in measured step latencies."""
    done: list[float] = []
    for s in steps:
        done.append(s["latency_s"] + max((done[k] for k in s["access"]), default=0.0))
    return max(done, default=0.0)


def client_main(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.client).read_text())
    n, c = spec["warmup"], spec["concurrency"]
    warm = asyncio.run(_load(spec["url"], spec["bodies"][:n], c)) if n else {"errors": 0}
    out = asyncio.run(_load(spec["url"], spec["bodies"][n:], c))
    out["warmup_errors"] = warm["errors"]
    Path(args.client_out).write_text(json.dumps(out))


def run_client(url: str, bodies: list[dict], concurrency: int, warmup: int = 0) -> dict:
    """The load, from a fresh interpreter (its CPU is not the server's event loop)."""
    with tempfile.TemporaryDirectory() as d:
        spec, out = Path(d) / "spec.json", Path(d) / "out.json"
        spec.write_text(json.dumps({"url": url, "bodies": bodies, "concurrency": concurrency,
                                    "warmup": warmup}))
        subprocess.run([sys.executable, __file__, "--client", str(spec), "--client-out",
                        str(out)], check=True)
        return json.loads(out.read_text())


# -- the server side ---------------------------------------------------------------------------


def bare_app():
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(max_ongoing_requests=256)
    class Echo:
        async def __call__(self, request: Request) -> dict:
            return {"echo": await request.json()}

    return Echo.bind()


def _workers_yaml(tmp: Path, data, fault_url: str) -> Path:
    import yaml

    workers = [{"name": w.name, "model": f"replay/{w.name}", "api_base": "demo",
                "input_price_per_mtok": w.input_price_per_mtok,
                "output_price_per_mtok": w.output_price_per_mtok} for w in data.worker_infos()]
    workers += [{"name": f"fixed-{c}", "model": f"openai/fixed-{c}", "api_base": fault_url,
                 "retries": 0, "max_concurrency": 256, "input_price_per_mtok": 100.0,
                 "output_price_per_mtok": 100.0} for c in "abc"]
    path = tmp / "workers.yaml"
    path.write_text(yaml.safe_dump({"workers": workers}))
    return path


def _chain_script(tmp: Path) -> Path:
    plan = ("model_id = ['fixed-a', 'fixed-b', 'fixed-c']\n"
            "subtasks = ['Answer.', 'Answer.', 'Combine the answers.']\n"
            "access_list = [[], [], [0, 1]]")
    path = tmp / "chain.json"
    path.write_text(json.dumps({"rules": [], "default": plan}))
    return path


def _body(model: str, question: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": question}]}


PATHS = (("conductor", "conductor"), ("cheapest", "cheap"), ("pass_through", "gpt-4o"),
         ("bare", None))


def _rounds(running, qs: list, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Each path `args.rounds` times, interleaved (conductor, cheapest, pass-through, bare,
    conductor, ...): on a shared machine the load drifts, and interleaving pairs each of our
    rounds with a bare-Serve round measured under about the same load."""
    url = f"{running.base_url}/chat/completions"
    out: dict[str, list[dict]] = {name: [] for name, _ in PATHS}
    for r in range(args.rounds):
        for name, model in PATHS:
            bodies = [_body(model or "conductor", qs[(r * args.requests + i) % len(qs)].query)
                      for i in range(args.requests + (args.warmup if r == 0 else 0))]
            target = url if model else f"{running.url}/bare"
            out[name].append(run_client(target, bodies, args.concurrency,
                                        args.warmup if r == 0 else 0))
    return out


def _median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def measure(args: argparse.Namespace) -> dict:
    with local_ray(num_cpus=args.num_cpus):
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict:
    from ray import serve

    from ray_conductor.data.pools import load_pool
    from ray_conductor.serve.command import demo_questions, free_port, start, stop
    from ray_conductor.serve.config import ServeConfig
    from ray_conductor.testing import FaultProcess

    data = load_pool("demo")
    qs = demo_questions(data, 400)
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    faults = FaultProcess(latency_s=args.worker_latency_s, timeout_s=120)
    try:
        cfg = ServeConfig(port=free_port(), blocking=False, workers=str(_workers_yaml(
            tmp, data, faults.url)), log_dir=str(tmp / "traffic"),
            policies={"conductor": args.policy, "cheap": "cheapest",
                      "chain": f"scripted:{_chain_script(tmp)}"})
        cfg.graph.workers_per_proxy = 16
        cfg.ingress.max_replicas = args.ingress_replicas
        cfg.ingress.min_replicas = args.ingress_replicas
        running = start(cfg)
        try:
            serve.run(bare_app(), name="bare_echo", route_prefix="/bare")
            rounds = _rounds(running, qs, args)
            url = f"{running.base_url}/chat/completions"
            chain_bodies = [_body("chain", f"q{i}") for i in range(args.chain_requests + 2)]
            chain = run_client(url, chain_bodies, args.chain_concurrency, 2)
            serve.delete("bare_echo")
        finally:
            stop(running, shutdown_ray=False)
    finally:
        faults.stop()
    return {"summary": summarize(rounds, chain, args), "rounds": rounds, "critical_path": chain,
            "settings": {k: v for k, v in vars(args).items() if not k.startswith("client")},
            "environment": environment(args.num_cpus, ("ray", "fastapi", "litellm"))}


def summarize(rounds: dict[str, list[dict]], chain: dict, args: argparse.Namespace) -> dict:
    """Medians over the rounds; ratios paired round by round with the bare app's."""
    def ratio(name: str) -> float:
        return round(statistics.median(a["rps"] / b["rps"] for a, b in
                                       zip(rounds[name], rounds["bare"])), 3)

    critical_ms = 2 * args.worker_latency_s * 1000
    errors = sum(r["errors"] + r.get("warmup_errors", 0) for rows in rounds.values()
                 for r in rows) + chain["errors"] + chain.get("warmup_errors", 0)
    c = rounds["conductor"]
    summary = {
        "rps": _median(c, "rps"), "p50_ms": _median(c, "p50_ms"),
        "p99_ms": _median(c, "p99_ms"), "errors": errors,
        "throughput_ratio_vs_bare_serve": ratio("conductor"),
        "overhead_ratio_vs_critical_path": round(chain["p50_ms"] / critical_ms, 3)
        if chain["p50_ms"] else None,
        "bare_rps": _median(rounds["bare"], "rps"),
        "bare_p50_ms": _median(rounds["bare"], "p50_ms"),
        "critical_path_ms": critical_ms, "chain_p50_ms": chain["p50_ms"],
        "chain_p99_ms": chain["p99_ms"],
        "chain_of_measured_step_latencies_p50_ms": chain["measured_chain_p50_ms"],
        # the same over the slowest chain of the worker calls as measured (the proxies and
        # litellm included): what orchestration alone adds
        "overhead_ratio_vs_measured_worker_chain": round(
            chain["p50_ms"] / chain["measured_chain_p50_ms"], 3)
        if chain["p50_ms"] and chain["measured_chain_p50_ms"] else None}
    for name in ("cheapest", "pass_through"):
        summary[f"{name}_throughput_ratio_vs_bare_serve"] = ratio(name)
        summary[f"{name}_p50_ms"] = _median(rounds[name], "p50_ms")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=150, help="per path and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--chain-requests", type=int, default=40)
    p.add_argument("--chain-concurrency", type=int, default=1)
    p.add_argument("--worker-latency-s", type=float, default=0.25)
    p.add_argument("--policy", default="knn")
    p.add_argument("--ingress-replicas", type=int, default=1)
    p.add_argument("--num-cpus", type=int, default=4)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_load.json"))
    p.add_argument("--client")
    p.add_argument("--client-out")
    args = p.parse_args()
    if args.client:
        client_main(args)
        return
    write_report(measure(args), args.out)


if __name__ == "__main__":
    main()
