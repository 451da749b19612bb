"""Sampling throughput of `TransformersEngine`: completion tokens per second for conductor
prompts, by device, batch size and precision (fp32 vs bf16 autocast), as a JSON report.

    python benchmarks/generation_throughput.py                      # smollm2, CPU (+ CUDA)
    python benchmarks/generation_throughput.py --model tiny-smollm2 --max-tokens 16

Tokens are the completion tokens actually produced (a row that stops at EOS stops counting,
though its batch keeps decoding until every row is done), so the number is what rollouts see.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import torch

from ray_conductor.policy.hf_engine import TransformersEngine
from ray_conductor.policy.loading import load_causal_lm
from ray_conductor.workers.base import WorkerInfo
from ray_conductor.workflow import build_prompt

WORKERS = [WorkerInfo("gpt-4o-mini", "fast and cheap", 0.15, 0.6),
           WorkerInfo("claude-sonnet", "strong at reasoning and code", 3, 15),
           WorkerInfo("gemini-pro", "strong at math", 1.25, 10)]
QUESTIONS = ["What is the sum of the first 50 odd numbers?",
             "Which planet has the most moons?",
             "Write a Python function that reverses a linked list.",
             "If a train travels 120 km in 1.5 hours, what is its average speed?"]
MODES = {"fp32": None, "bf16": "bfloat16"}


def prompts(batch: int) -> list[Any]:
    return [build_prompt(QUESTIONS[i % len(QUESTIONS)], WORKERS) for i in range(batch)]


def run_case(model: Any, tok: Any, device: str, batch: int, mode: str, max_tokens: int,
             repeats: int) -> dict[str, Any]:
    engine = TransformersEngine(model, tokenizer=tok, device=device, batch_size=batch,
                                autocast=MODES[mode])
    ps = prompts(batch)
    engine.generate(ps, n=1, temperature=0.7, max_tokens=4, seed=0)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tokens, wall = 0, 0.0
    for r in range(repeats):
        t0 = time.perf_counter()
        out = engine.generate(ps, n=1, temperature=0.7, max_tokens=max_tokens, seed=r)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall += time.perf_counter() - t0
        tokens += sum(s.num_tokens for g in out for s in g)
    case = dict(device=device, batch_size=batch, mode=mode, threads=torch.get_num_threads(),
                max_tokens=max_tokens,
                repeats=repeats, tokens=tokens, wall_s=round(wall, 3),
                tokens_per_s=round(tokens / wall, 2),
                prompt_tokens=len(out[0][0].prompt_ids))
    if device.startswith("cuda"):
        case["peak_gpu_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return case


def summarize(cases: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(c["device"], c["batch_size"], c["mode"]): c["tokens_per_s"] for c in cases}
    best = max(cases, key=lambda c: c["tokens_per_s"])
    summary: dict[str, Any] = {
        "best": {k: best[k] for k in ("device", "batch_size", "mode", "tokens_per_s")},
        "tokens_per_s": {f"{d}/b{b}/{m}": v for (d, b, m), v in by.items()},
    }
    speedups = {}
    for (d, b, m), v in by.items():
        if m == "bf16" and (d, b, "fp32") in by:
            speedups[f"{d}/b{b}"] = round(v / by[(d, b, "fp32")], 2)
    summary["bf16_over_fp32"] = speedups
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--modes", default="fp32,bf16")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--devices", default="auto", help="'auto' = cpu, plus cuda if available")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default). On a busy box, 1 thread can "
                    "beat 2 by a wide margin: OpenMP threads wait on each other at every op")
    ap.add_argument("--out", default="reports/benchmarks/generation_throughput.json")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    devices = (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
               if args.devices == "auto" else args.devices.split(","))
    cases, loads = [], {}
    for device in devices:
        t0 = time.perf_counter()
        model, tok = load_causal_lm(args.model, device=device)
        loads[device] = round(time.perf_counter() - t0, 2)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            for mode in args.modes.split(","):
                case = run_case(model, tok, device, batch, mode, args.max_tokens, args.repeats)
                print(json.dumps(case), flush=True)
                cases.append(case)
        del model
    report = {
        "benchmark": "generation_throughput", "model": args.model, "load_s": loads,
        "host": {"cpu": platform.processor() or platform.machine(),
                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                 "loadavg_1m_at_end": round(os.getloadavg()[0], 2),  # a shared box is noisy
                 "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                 "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)},
        "cases": cases, "summary": summarize(cases),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    print(f"report: {out}")
    return report


if __name__ == "__main__":
    main()
