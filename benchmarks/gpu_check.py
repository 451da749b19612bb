"""A prepared GPU check: one short script to run the day a GPU machine is available. No Ray,
no vLLM needed (tried only if it imports); torch and transformers only.

    python benchmarks/gpu_check.py                       # CUDA, bf16, default models
    python benchmarks/gpu_check.py --device cpu --tiny   # the smoke run on any machine

For each model (the default conductor, smollm2, and a 0.5B-1.5B one when it loads offline:
a local directory or the Hugging Face cache; skipped with the reason otherwise): generation
of conductor plans with our transformers engine (the real conductor prompt over the demo
pool's workers), the program head's feature pass (`TransformersEngine.embed`, questions/s)
and learner steps (`rl.learner.Learner.train_step` on those plans), with
bf16, peak memory, tokens/s and samples/s; then the vLLM engine if vLLM imports. The report
goes to benchmarks/results/gpu_check_<gpu>.json (the GPU's name in the file name).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, without installing

MODELS = ["smollm2", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"]


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "device"


class Peak:
    """Peak memory of a phase: CUDA's allocator, or the process's max RSS on the CPU."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda") and torch.cuda.is_available()

    def __enter__(self) -> "Peak":
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / 2 ** 30
        else:  # Linux: KiB, the whole process so far
            self.gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def prompts(n: int, max_question_chars: int = 400) -> list:
    """The conductor's prompts for the first `n` demo train questions."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.policy.conductor import ConductorConfig, conductor_prompt, offered_workers

    data = load_pool("demo")
    cfg = ConductorConfig(recursion_depth=0, programs=True, worker_ids="name", few_shot=False,
                          max_question_chars=max_question_chars)
    workers = offered_workers(ReplayPool(data).workers(), cfg)
    return [conductor_prompt(q.query, workers, cfg) for q in data.queries("train")[:n]]


def check_model(model: str, args: argparse.Namespace, batch: list) -> dict[str, Any]:
    import torch

    from ray_conductor.policy.hf_engine import TransformersEngine
    from ray_conductor.rl.learner import Learner, LearnerConfig
    from ray_conductor.rl.types import Trajectory

    out: dict[str, Any] = {}
    bf16 = args.bf16 and not args.device.startswith("cpu")
    t0 = time.perf_counter()
    engine = TransformersEngine(model, device=args.device,
                                dtype="bfloat16" if bf16 else "float32",
                                batch_size=len(batch))
    out["load_s"] = round(time.perf_counter() - t0, 2)
    out["params_m"] = round(sum(p.numel() for p in engine.model.parameters()) / 1e6, 1)
    engine.generate(batch[:1], n=1, temperature=1.0, max_tokens=4, seed=0)  # warm-up
    with Peak(args.device) as peak:
        t0 = time.perf_counter()
        samples = [s[0] for s in engine.generate(batch, n=1, temperature=1.0,
                                                 max_tokens=args.max_new_tokens, seed=0)]
        gen_s = time.perf_counter() - t0
    tokens = sum(len(s.completion_ids) for s in samples)
    out["generate"] = {"rows": len(batch), "tokens": tokens, "seconds": round(gen_s, 3),
                       "tokens_per_s": round(tokens / gen_s, 1),
                       "samples_per_s": round(len(batch) / gen_s, 3),
                       "peak_gib": round(peak.gib, 3), "dtype": "bfloat16" if bf16 else "float32"}
    texts = [str(p[-1]["content"])[-400:] for p in batch]  # the program head's input
    with Peak(args.device) as peak:
        t0 = time.perf_counter()
        engine.embed(texts)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        emb_s = time.perf_counter() - t0
    out["embed"] = {"rows": len(texts), "seconds": round(emb_s, 3),
                    "questions_per_s": round(len(texts) / emb_s, 1),
                    "peak_gib": round(peak.gib, 3)}
    del engine
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    learner = Learner(model, LearnerConfig(model=model, lr=1e-5, bf16=bf16,
                                           micro_batch_size=args.micro_batch), args.device)
    trajs = [Trajectory(list(s.prompt_ids), list(s.completion_ids), list(s.logprobs) or None,
                        float(i % 2), f"g{i // args.group}") for i, s in enumerate(samples)
             if s.completion_ids]
    times = []
    with Peak(args.device) as peak:
        for _ in range(args.steps):
            t0 = time.perf_counter()
            stats = learner.train_step(trajs)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    timed = times[1:] or times  # the first step allocates the optimiser state
    step_s = sum(timed) / len(timed)
    out["learner"] = {"sequences": len(trajs), "steps": args.steps,
                      "step_s": [round(t, 3) for t in times],
                      "samples_per_s": round(len(trajs) / step_s, 3),
                      "tokens_per_s": round(sum(len(t.prompt_ids) + len(t.completion_ids)
                                                for t in trajs) / step_s, 1),
                      "peak_gib": round(peak.gib, 3), "bf16_autocast": bf16,
                      "loss": stats["loss"], "grad_norm": stats["grad_norm"]}
    return out


def check_vllm(model: str, args: argparse.Namespace, batch: list) -> dict[str, Any]:
    """The vLLM engine, if vLLM is installed here and a GPU is in use."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        return {"skipped": f"vllm does not import: {e}"}
    if not args.device.startswith("cuda"):
        return {"skipped": "vLLM runs on a GPU only"}
    from ray_conductor.policy.vllm_engine import VLLMEngine

    t0 = time.perf_counter()
    engine = VLLMEngine(model, dtype="bfloat16", gpu_memory_utilization=0.4)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = engine.generate(batch, n=1, temperature=1.0, max_tokens=args.max_new_tokens, seed=0)
    secs = time.perf_counter() - t0
    tokens = sum(len(s[0].completion_ids) for s in got)
    return {"load_s": round(load, 2), "seconds": round(secs, 3), "tokens": tokens,
            "tokens_per_s": round(tokens / secs, 1), "samples_per_s": round(len(batch) / secs, 3)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny model, a few rows: a smoke run")
    ap.add_argument("--models", nargs="*", default=None, help=f"default: {' '.join(MODELS)}")
    ap.add_argument("--rows", type=int, default=32, help="plans generated (and trained on)")
    ap.add_argument("--group", type=int, default=8, help="plans per GRPO group")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="learner steps (the first untimed)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--no-bf16", dest="bf16", action="store_false")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/gpu_check_<gpu>.json")
    args = ap.parse_args(argv)
    if args.tiny:
        args.models = args.models or ["tiny-smollm2"]
        args.rows, args.group, args.micro_batch = min(args.rows, 4), 2, 2
        args.steps, args.max_new_tokens = 2, min(args.max_new_tokens, 16)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu (and --tiny for a smoke run)")
        return 2
    gpu = device_name(args.device)
    batch = prompts(args.rows)
    report: dict[str, Any] = {"device": args.device, "gpu": gpu, "models": {},
                              "torch": torch.__version__, "cuda": torch.version.cuda,
                              "python": platform.python_version()}
    import transformers

    report["transformers"] = transformers.__version__
    for model in args.models or MODELS:
        from ray_conductor.errors import ConfigError
        from ray_conductor.policy.loading import check_model as loadable

        try:
            loadable(model)
        except ConfigError as e:
            report["models"][model] = {"skipped": str(e)}
            print(f"{model}: skipped ({e})")
            continue
        try:
            report["models"][model] = check_model(model, args, batch)
        except Exception as e:  # one model failing must not lose the others' figures
            report["models"][model] = {"error": f"{type(e).__name__}: {e}",
                                       "traceback": traceback.format_exc()[-2000:]}
        print(model, json.dumps(report["models"][model])[:400])
    first = next((m for m in args.models or MODELS if "generate" in report["models"].get(m, {})),
                 None)
    report["vllm"] = check_vllm(first, args, batch) if first else {"skipped": "no model loaded"}
    report["summary"] = {m: {"generate_tokens_per_s": r["generate"]["tokens_per_s"],
                             "generate_samples_per_s": r["generate"]["samples_per_s"],
                             "learner_samples_per_s": r["learner"]["samples_per_s"],
                             "peak_gib": max(r["generate"]["peak_gib"], r["learner"]["peak_gib"])}
                         for m, r in report["models"].items() if "learner" in r}
    out = Path(args.out or Path(__file__).parent / "results" / f"gpu_check_{slug(gpu)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report["summary"], indent=2))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
