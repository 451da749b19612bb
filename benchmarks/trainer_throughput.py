"""Trainer throughput: samples per second of our GRPO trainer (`rl.trainer.train`: a Ray
rollout actor and a Ray learner actor) against TRL's `GRPOTrainer` (the library the paper
used), on the same model, prompts, reward, group size, sampling settings and machine, as a
JSON report.

    python benchmarks/trainer_throughput.py                          # smollm2, 2 timed iterations
    python benchmarks/trainer_throughput.py --model tiny-smollm2     # a quick run

The defaults (1 question x G=4, 64 new tokens) are small because the conductor prompt is
~1,100 tokens (12 workers + few-shot plans): on an idle 2-core CPU one smollm2 iteration takes
about a minute (several when the machine is shared), each side's processes peak at ~16 GB at
4 samples, and TRL in fp32 without gradient checkpointing was OOM-killed at 24 GB with 8.

A sample is one sampled workflow, so samples/s = questions * group / seconds per iteration,
where an iteration is sample + execute + score + one optimiser step (+ our weight sync). Each
side runs in its own Python process with the same torch thread count, for `iterations + 1`
iterations over the same questions; the first iteration is warm-up and is not timed.

Both sides do the same work per iteration: Q questions x G samples of at most
`max_new_tokens`, the paper's reward (parse the plan, run it over the replay pool, judge the
answer: 0 / 0.5 / 1), group-normalised advantages, the clipped token-mean loss without KL,
one AdamW step on the full batch. What differs is how they do it; see `TRL_NOTES`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ProcessTree, environment, mean, run_side  # noqa: E402

SIDES = ("ours", "trl")
TRL_NOTES = [
    "generation: TRL calls transformers `model.generate` on the whole Q*G batch (no vLLM on "
    "CPU) and prefills every row's full prompt; ours decodes with its own loop and computes "
    "the prompt prefix shared by the batch once, copying its KV cache to every row",
    "TRL generates and trains in one process on one model; ours samples in a Ray rollout "
    "actor and trains in a Ray learner actor, then ships the new weights to the sampler "
    "(included in our iteration time)",
    "TRL 1.16 defaults gradient_checkpointing=True, lr_scheduler=linear and "
    "optim=adamw_torch_fused; set here to no checkpointing, constant lr and adamw_torch, as ours",
    "old log-probs: neither side runs an extra forward pass (one update per batch: TRL uses "
    "the detached current log-probs, ours the sampler's)",
    "loss forward: TRL's chunked log-prob kernel (trl.kernels.chunked_logprob) scores only the "
    "completion tokens on Triton devices, but on CPU it projects the LM head over every "
    "position, prompt included, in a Python loop over tiles, and also computes the entropy; "
    "ours keeps the logits of the completion tokens only (`logits_to_keep`)",
    "loss forward, prompts: TRL runs every row's full prompt with gradients; ours runs the "
    "prefix the batch shares once and backpropagates through its KV cache "
    "(`learner.share_prefix`, the same gradient)",
]


# -- shared inputs -----------------------------------------------------------------------------


def train_config(args: argparse.Namespace, run_dir: str = "unused") -> Any:
    """Our `TrainConfig` for this benchmark; TRL takes its prompts and reward from it too."""
    from ray_conductor.config import load
    from ray_conductor.rl.trainer import TrainConfig

    return load(TrainConfig, ours_overrides(args, run_dir))


def load_questions(cfg: Any) -> tuple[Any, list[list[Any]]]:
    """The pool and the questions of every iteration, exactly as `train()` picks them."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.rl.trainer import pick_questions

    data = load_pool(cfg.pool, data_dir=cfg.data_dir)
    train_q = select_queries(data, cfg.split)
    return data, [pick_questions(train_q, it, cfg.questions_per_iter, cfg.seed)
                  for it in range(cfg.iterations)]


def offered(cfg: Any, data: Any) -> list[Any]:
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.policy.conductor import offered_workers

    return offered_workers(ReplayPool(data).workers(), cfg.conductor)


def conductor_prompts(cfg: Any, data: Any, questions: list[Any]) -> list[Any]:
    """The chat prompts our rollout worker builds (no engine needed)."""
    from ray_conductor.policy.conductor import conductor_prompt

    workers = offered(cfg, data)
    return [conductor_prompt(q.query, workers, cfg.conductor) for q in questions]


def prompt_tokens(args: argparse.Namespace) -> dict[str, Any]:
    """Length of the conductor prompts both sides feed the model (chat template applied)."""
    from transformers import AutoTokenizer

    from ray_conductor.policy.engine import prompt_ids
    from ray_conductor.policy.loading import resolve_model_path

    cfg = train_config(args)
    data, iterations = load_questions(cfg)
    tok = AutoTokenizer.from_pretrained(resolve_model_path(args.model), local_files_only=True)
    prompts = conductor_prompts(cfg, data, [q for qs in iterations for q in qs])
    lens = [len(prompt_ids(tok, p)) for p in prompts]
    return {"prompt_tokens_mean": round(statistics.fmean(lens), 1), "prompt_tokens_min": min(lens),
            "prompt_tokens_max": max(lens)}


def summarize_times(times: list[float], samples: int) -> dict[str, Any]:
    timed = times[1:]  # the first iteration is warm-up
    mean = statistics.fmean(timed) if timed else float("nan")
    return {"iteration_s": [round(t, 3) for t in times], "timed_iterations": len(timed),
            "mean_iteration_s": round(mean, 3),
            "stdev_iteration_s": round(statistics.stdev(timed), 3) if len(timed) > 1 else 0.0,
            "samples_per_s": round(samples / mean, 4) if timed else None}


# -- ours --------------------------------------------------------------------------------------


def ours_overrides(args: argparse.Namespace, run_dir: str) -> list[str]:
    """`train()` settings matching TRL's: the same batch in one generate call and one forward
    pass, and `threads` torch threads in each actor (actors use as many threads as Ray CPUs
    they hold; rollout and learner take turns, so the cluster may count 2x the cores)."""
    batch = args.questions * args.group
    out = [
        f"model={args.model}", f"pool={args.pool}", "split=train", "backend=local",
        f"iterations={args.iterations + 1}", "warmup_steps=0",
        f"questions_per_iter={args.questions}", f"group_size={args.group}", f"run_dir={run_dir}",
        "eval_at_end=false", "eval_at_start=false", "checkpoint_every=1000000", "progress=false",
        f"seed={args.seed}", f"graph.rollout.num_cpus={args.threads}",
        f"graph.learner.num_cpus={args.threads}", f"graph.rollout.torch_threads={args.threads}",
        f"graph.learner.torch_threads={args.threads}", f"ray.num_cpus={2 * args.threads}",
        # the prompt TRL gets (`conductor_prompts`): the pool's workers, no conductor. With
        # recursion on, our rollout worker also offers the conductor itself, a longer prompt
        # (the 17% "regression" of the 2.26x -> 1.85x rerun was ours doing more work)
        "conductor.recursion_depth=0",
        f"conductor.max_new_tokens={args.max_new_tokens}",
        f"conductor.temperature={args.temperature}", "conductor.top_p=1.0",
        f"conductor.batch_size={batch}", f"learner.micro_batch_size={batch}",
        f"learner.lr={args.lr}", "learner.kl_coef=0.0", "learner.loss_agg=token_mean",
        "learner.ppo_epochs=1",
    ]
    if args.bf16:
        out += ["conductor.autocast=bfloat16", "learner.bf16=true"]
    return out


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from ray_conductor.config import to_dict
    from ray_conductor.rl.trainer import train

    with tempfile.TemporaryDirectory(prefix="bench_ours_") as tmp:
        cfg = train_config(args, f"{tmp}/run")
        t0 = time.perf_counter()
        result = train(cfg)
        total = time.perf_counter() - t0
        ray.shutdown()
    rows = sorted(result["metrics"], key=lambda r: r["iteration"])
    keys = ("time/iteration_s", "time/rollout_s", "time/generate_s", "time/update_s",
            "time/sync_s", "reward_mean", "parse_rate", "accuracy", "completion_tokens",
            "learner/loss", "learner/grad_norm")
    per_it = [{"iteration": r["iteration"], **{k: r.get(k) for k in keys},
               "window": (r["time"] - r["time/iteration_s"], r["time"])} for r in rows]
    side = summarize_times([r["time/iteration_s"] for r in rows], args.questions * args.group)
    side.update(_reward_means(per_it, "reward_mean"),
                mean_rollout_s=round(statistics.fmean(r["time/rollout_s"] for r in rows[1:]), 3)
                if len(rows) > 1 else None,
                mean_completion_tokens=mean(per_it[1:], "completion_tokens"),
                phases=_phases(per_it[1:], {"generate_s": "time/generate_s",
                                            "update_s": "time/update_s",
                                            "sync_s": "time/sync_s"}),
                per_iteration=per_it, total_wall_s=round(total, 2),
                torch_threads_per_actor=args.threads, config=to_dict(cfg))
    # no separate log-prob pass: the sampler's log-probs are pi_old (one update per batch)
    side["phases"]["logprob_s"] = 0.0
    return side


# -- TRL ---------------------------------------------------------------------------------------


class PaperReward:
    """The reward our rollouts compute (`rl.rewards.score_plan`), as a TRL reward function."""

    __name__ = "paper_reward"  # TRL names its reward columns after the function

    def __init__(self, data: Any, cfg: Any):
        from ray_conductor.data.replay import ReplayPool

        self.data, self.max_steps, self.cfg = data, cfg.conductor.max_steps, cfg.reward
        self.pool = ReplayPool(data)
        self.names = [w.name for w in offered(cfg, data)]
        self.calls: list[dict[str, Any]] = []  # per call (= per iteration): parse rate etc.

    def __call__(self, prompts: list, completions: list, query_id: list[str],
                 question: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scored = asyncio.run(self._score_all(texts, query_id, question))
        n = max(len(scored), 1)
        self.calls.append({"reward_mean": sum(s.reward for s in scored) / n,
                           "parse_rate": sum(s.parsed for s in scored) / n,
                           "accuracy": sum(s.correct for s in scored) / n,
                           "query_ids": sorted(set(query_id))})
        return [s.reward for s in scored]

    async def _score_all(self, texts: list[str], qids: list[str], questions: list[str]) -> list:
        from ray_conductor.errors import WorkflowError
        from ray_conductor.rl.rewards import score_plan
        from ray_conductor.workflow import parse

        def plan(text: str) -> Any:
            try:
                return parse(text, self.names, max_steps=self.max_steps)
            except WorkflowError:
                return None

        return list(await asyncio.gather(*(
            score_plan(plan(t), x, q, self.pool, self.data.judge, self.cfg)
            for t, q, x in zip(texts, qids, questions))))


def trl_dataset(cfg: Any, data: Any, iterations: list[list[Any]]) -> Any:
    """Our conversational prompts, in the order `train()` visits the questions (TRL is told
    not to shuffle)."""
    from datasets import Dataset

    questions = [q for qs in iterations for q in qs]
    prompts = conductor_prompts(cfg, data, questions)
    return Dataset.from_list([{"prompt": p, "query_id": q.query_id, "question": q.query}
                              for p, q in zip(prompts, questions)])


def trl_config(args: argparse.Namespace, out_dir: str) -> Any:
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=args.bf16, fp16=False, report_to="none",
        num_generations=args.group, per_device_train_batch_size=args.questions * args.group,
        gradient_accumulation_steps=1, max_completion_length=args.max_new_tokens,
        max_steps=args.iterations + 1, learning_rate=args.lr, lr_scheduler_type="constant",
        warmup_steps=0, optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, beta=0.0,
        epsilon=0.2, loss_type="dapo", scale_rewards="group", num_iterations=1,
        temperature=args.temperature, top_p=1.0, top_k=0,
        gradient_checkpointing=args.trl_gradient_checkpointing,
        shuffle_dataset=False, seed=args.seed, logging_steps=1, save_strategy="no",
        disable_tqdm=True, use_vllm=False, dataloader_num_workers=0,
    )


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from ray_conductor.policy.loading import resolve_model_path

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.t0, self.steps, self.windows, self.logs = 0.0, [], [], []

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0, self.wall0 = time.perf_counter(), time.time()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            self.steps.append(time.perf_counter() - self.t0)
            self.windows.append((self.wall0, time.time()))

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            self.logs.append(dict(logs or {}))

    ours = train_config(args)  # prompts, plan length and reward settings come from it
    data, iterations = load_questions(ours)
    path = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    timer, reward_fn = StepTimer(), PaperReward(data, ours)
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as out_dir:
        cfg = trl_config(args, out_dir)
        trainer = GRPOTrainer(
            model=path, reward_funcs=reward_fn, args=cfg, processing_class=tok,
            train_dataset=trl_dataset(ours, data, iterations), callbacks=[timer])
        phase_s = _time_methods(trainer, {"generate_s": "_generate",
                                          "logprob_s": "_get_per_token_logps_and_entropies"})
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
        params = {k: v for k, v in cfg.to_dict().items() if not k.startswith(("hub_", "push_"))}
    logs = [lg for lg in timer.logs if "reward" in lg]
    per_it = []
    for i, s in enumerate(timer.steps):
        call = reward_fn.calls[i] if i < len(reward_fn.calls) else {}
        log = logs[i] if i < len(logs) else {}
        per_it.append({"iteration": i, "step_s": round(s, 3), **call,
                       "completion_tokens": log.get("completions/mean_length"),
                       "clipped_ratio": log.get("completions/clipped_ratio"),
                       "loss": log.get("loss"), "trl_step_time": log.get("step_time"),
                       "window": timer.windows[i]})
    expected = [sorted(q.query_id for q in qs) for qs in iterations]
    side = summarize_times(timer.steps, args.questions * args.group)
    timed = max(len(timer.steps) - 1, 1)  # warm-up excluded, as for the iteration times
    side["phases"] = {k: (round(sum(v[1:]) / timed, 3) if len(v) > 1 else None)
                      for k, v in phase_s.items()}
    if None not in side["phases"].values():  # the rest: rewards, backward, optimiser step
        side["phases"]["update_and_reward_s"] = round(
            side["mean_iteration_s"] - sum(side["phases"].values()), 3)
    side["same_questions_as_ours"] = [r.get("query_ids") for r in per_it] == expected
    side.update(_reward_means(per_it, "reward_mean"),
                mean_completion_tokens=mean(per_it[1:], "completion_tokens"),
                per_iteration=per_it, total_wall_s=round(total, 2),
                torch_threads=torch.get_num_threads(), model_path=path,
                model_dtype=str(trainer.model.dtype),
                config=json.loads(json.dumps(params, default=str)))
    return side


def _time_methods(obj: Any, names: dict[str, str]) -> dict[str, list[float]]:
    """Wrap methods of `obj` (by attribute name; absent ones skipped) to add up their wall
    time per training step (`state.global_step`): phase -> [seconds per step]."""
    import functools

    out: dict[str, list[float]] = {k: [] for k in names}

    def wrap(phase: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                n = obj.state.global_step
                while len(out[phase]) <= n:
                    out[phase].append(0.0)
                out[phase][n] += time.perf_counter() - t0
        return timed

    for phase, name in names.items():
        fn = getattr(obj, name, None)
        if fn is not None:
            setattr(obj, name, wrap(phase, fn))
    return out


# -- the report -------------------------------------------------------------------------------


def _phases(rows: list[dict[str, Any]], keys: dict[str, str]) -> dict[str, Any]:
    """Mean seconds per timed iteration of each phase (None where not measured)."""
    return {name: mean(rows, key, 3) for name, key in keys.items()}


def _reward_means(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return {"mean_reward": mean(rows, key), "mean_parse_rate": mean(rows, "parse_rate"),
            "mean_accuracy": mean(rows, "accuracy")}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--model", default="smollm2", help="smollm2, tiny-smollm2 or an HF dir")
    ap.add_argument("--pool", default="demo")
    ap.add_argument("--iterations", type=int, default=2, help="timed (after one warm-up)")
    ap.add_argument("--questions", type=int, default=1, help="questions per iteration")
    ap.add_argument("--group", type=int, default=4, help="samples per question (G)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads in every process that computes")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                    help="TRL's own default: less memory, a second forward pass in backward "
                         "(ours has none, so it is off for a like-for-like comparison)")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--out", default="reports/benchmarks/trainer_throughput.json")
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: one side
    ap.add_argument("--side-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.iterations < 1 or args.group < 2 or args.questions < 1:
        ap.error("need --iterations >= 1, --group >= 2 (GRPO compares a group), --questions >= 1")

    if args.side:  # a child process: run one side, write its part (or why it failed)
        try:
            with ProcessTree() as tree:
                part = run_ours(args) if args.side == "ours" else run_trl(args)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            Path(args.side_out).write_text(json.dumps({"error": f"{type(e).__name__}: {msg}"}))
            raise
        tree.add_cpu(part)
        Path(args.side_out).write_text(json.dumps(part, default=str))
        return None

    sides = [s for s in args.sides.split(",") if s]
    results = {}
    for side in sides:
        print(f"== {side} ==", flush=True)
        results[side] = run_side(__file__, side, list(argv), args.threads)
    n = args.questions * args.group
    sps = {s: results.get(s, {}).get("samples_per_s") for s in SIDES}
    cpu = {s: results.get(s, {}).get("mean_cpu_s_per_iteration") for s in SIDES}
    summary = {
        "ours_samples_per_s": sps["ours"], "trl_samples_per_s": sps["trl"],
        "ratio": round(sps["ours"] / sps["trl"], 3) if sps["ours"] and sps["trl"] else None,
        "ours_samples_per_cpu_s": round(n / cpu["ours"], 4) if cpu["ours"] else None,
        "trl_samples_per_cpu_s": round(n / cpu["trl"], 4) if cpu["trl"] else None,
        "cpu_ratio": round(cpu["trl"] / cpu["ours"], 3) if cpu["ours"] and cpu["trl"] else None,
        "ours_mean_iteration_s": results.get("ours", {}).get("mean_iteration_s"),
        "trl_mean_iteration_s": results.get("trl", {}).get("mean_iteration_s"),
        "ours_mean_reward": results.get("ours", {}).get("mean_reward"),
        "trl_mean_reward": results.get("trl", {}).get("mean_reward"),
        "ours_phases_s": results.get("ours", {}).get("phases"),
        "trl_phases_s": results.get("trl", {}).get("phases"),
        "ours_mean_completion_tokens": results.get("ours", {}).get("mean_completion_tokens"),
        "trl_mean_completion_tokens": results.get("trl", {}).get("mean_completion_tokens"),
    }
    report = {
        "benchmark": "trainer_throughput",
        "summary": summary,
        "config": {k: v for k, v in vars(args).items() if k not in ("side", "side_out")}
        | {"samples_per_iteration": args.questions * args.group,
           "precision": "bf16 autocast" if args.bf16 else "fp32", **prompt_tokens(args)},
        "notes": TRL_NOTES + [
            "ratio = ours / trl samples per wall-clock second (> 1: ours is faster); cpu_ratio "
            "= the same per CPU-second of each side's process tree, which another job on a "
            "shared machine does not inflate (see each side's loadavg)",
            "reward numbers are a sanity check over few samples, not a result",
            "phases (mean s per timed iteration): ours generate_s = sampling in the rollout "
            "actor, update_s = the learner step, sync_s = the weight sync, logprob_s = 0 (no "
            "separate pass); TRL generate_s = `_generate`, logprob_s = every log-prob forward "
            "(the loss's included), update_and_reward_s = the rest of its step",
            "both sides get the same prompt: conductor.recursion_depth=0 on ours (with "
            "recursion our rollout worker also offers the conductor itself: a longer prompt)",
            "measured on a shared 2-core machine loaded by other agents: compare the two "
            "sides only within one run"],
        "environment": environment(args.threads, ("transformers", "trl", "accelerate", "ray")),
        "sides": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(summary, indent=2))
    print(f"report: {out}")
    return report


if __name__ == "__main__":
    main()
