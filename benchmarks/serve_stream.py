"""Streaming through the serving app: how soon the first token of the answer reaches a client.

A loopback provider (the fault server, in a process of its own) streams every answer as
`--tokens` words, `--token-delay-s` apart, its first word `--first-token-s` after the
request (by default 20 chunks over 1 s, the stand-in of issue 22, where the whole workflow
used to run before the first chunk went out: time to first token 1.058 s of 1.059 s). The
app (live workers on it, scripted plans) is asked through the official `openai` client with
`stream=True`, for two plan shapes:

- `one_step`: one worker answers;
- `three_step`: a chain, each step reading the one before; the last one answers (the earlier
  ones are plain calls, the last one is relayed as it streams).

Per request: `ttft` (request sent to the first content token), `total` (to the end of the
stream), and `ttft_overhead`: ttft minus what the workers took before it (the earlier steps'
latency, as the trace measured it, plus the final step's own first-token time, measured in
the worker proxy from its call's start). The overhead is the app's: HTTP in, planning, the
hops to and from the proxy, relaying the chunks out.

Summary per shape: `ttft_ms_p50`, `total_ms_p50`, `ttft_over_total_p50` (aim <= 0.1 for
one-step plans: the answer streams, it is not cut up at the end), `ttft_overhead_ms_p50`
(aim <= 20 ms; a user measured ~20 ms for Ray Serve LLM over bare vLLM).

    cd benchmarks && python serve_stream.py            # writes results/serve_stream.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, environment, local_ray, write_report

for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)

SHAPES = {"one_step": (["final"], "[[]]"),
          "three_step": (["first", "second", "final"], "[[], [0], [1]]")}


def _setup(tmp: Path, fault_url: str) -> tuple[Path, dict[str, str]]:
    import yaml

    names = sorted({w for ws, _ in SHAPES.values() for w in ws})
    workers = [{"name": n, "model": f"openai/{n}", "api_base": fault_url, "retries": 0,
                "max_concurrency": 256, "input_price_per_mtok": 1.0,
                "output_price_per_mtok": 2.0} for n in names]
    (tmp / "workers.yaml").write_text(yaml.safe_dump({"workers": workers}))
    policies = {}
    for shape, (ws, access) in SHAPES.items():
        plan = (f"model_id = {ws!r}\nsubtasks = {['Answer.'] * len(ws)!r}\n"
                f"access_list = {access}")
        (tmp / f"{shape}.json").write_text(json.dumps({"rules": [], "default": plan}))
        policies[shape] = f"scripted:{tmp / f'{shape}.json'}"
    return tmp / "workers.yaml", policies


def one_request(client, shape: str, i: int) -> dict:
    """Stream one answer; the times the client saw, and what the trace says."""
    t0 = time.perf_counter()
    ttft, text, ext = None, [], {}
    for chunk in client.chat.completions.create(
            model=shape, stream=True, messages=[{"role": "user", "content": f"q{i}"}]):
        d = chunk.model_dump()
        for c in d["choices"]:
            piece = (c.get("delta") or {}).get("content")
            if piece:
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                text.append(piece)
            if c.get("finish_reason") == "stop":
                ext = d.get("conductor") or {}
    total = time.perf_counter() - t0
    steps = ext.get("steps") or []
    earlier = sum(s["latency_s"] for s in steps[:-1])
    own = steps[-1].get("first_token_s") if steps else None
    return {"shape": shape, "ttft_s": ttft, "total_s": total, "chars": len("".join(text)),
            "earlier_steps_s": earlier, "final_first_token_s": own,
            "ttft_overhead_s": (ttft - earlier - own) if ttft is not None and own is not None
            else None}


def measure(args: argparse.Namespace) -> dict:
    with local_ray(num_cpus=args.num_cpus):
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict:
    from openai import OpenAI

    from ray_conductor.serve.command import free_port, start, stop
    from ray_conductor.serve.config import ServeConfig
    from ray_conductor.testing import FaultProcess

    reply = " ".join(f"tok{k}" for k in range(args.tokens))
    tmp = Path(tempfile.mkdtemp(prefix="serve_stream_"))
    faults = FaultProcess(latency_s=args.first_token_s, timeout_s=120, reply=reply,
                          token_delay_s=args.token_delay_s)
    rows: list[dict] = []
    try:
        workers, policies = _setup(tmp, faults.url)
        cfg = ServeConfig(port=free_port(), blocking=False, workers=str(workers), pool=None,
                          log_dir=str(tmp / "traffic"), policies=policies)
        cfg.ingress.min_replicas = cfg.ingress.max_replicas = 1
        running = start(cfg)
        try:
            client = OpenAI(base_url=running.base_url, api_key="none", max_retries=0,
                            timeout=300)
            with ThreadPoolExecutor(args.concurrency) as pool:
                for shape in SHAPES:
                    list(pool.map(lambda i: one_request(client, shape, i), range(args.warmup)))
                    rows += list(pool.map(lambda i: one_request(client, shape, i),
                                          range(args.requests)))
        finally:
            stop(running, shutdown_ray=False)
    finally:
        faults.stop()
    return {"summary": summarize(rows, args), "per_request": rows,
            "settings": vars(args),
            "environment": environment(args.num_cpus, ("ray", "litellm", "openai"))}


def _p50_ms(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(1000 * statistics.median(vals), 2) if vals else None


def summarize(rows: list[dict], args: argparse.Namespace) -> dict:
    out: dict = {"stream_s": round(args.tokens * args.token_delay_s, 3),
                 "first_token_s": args.first_token_s, "concurrency": args.concurrency,
                 "errors": sum(1 for r in rows if r["ttft_s"] is None)}
    for shape in SHAPES:
        mine = [r for r in rows if r["shape"] == shape]
        ratios = [r["ttft_s"] / r["total_s"] for r in mine if r["ttft_s"] is not None]
        out[shape] = {"requests": len(mine), "ttft_ms_p50": _p50_ms(mine, "ttft_s"),
                      "total_ms_p50": _p50_ms(mine, "total_s"),
                      "ttft_over_total_p50": round(statistics.median(ratios), 4)
                      if ratios else None,
                      "ttft_overhead_ms_p50": _p50_ms(mine, "ttft_overhead_s"),
                      "final_first_token_ms_p50": _p50_ms(mine, "final_first_token_s")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=40, help="per plan shape")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--token-delay-s", type=float, default=0.05)
    p.add_argument("--first-token-s", type=float, default=0.0)
    p.add_argument("--num-cpus", type=int, default=4)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_stream.json"))
    args = p.parse_args()
    write_report(measure(args), args.out)


if __name__ == "__main__":
    main()
