"""`VLLMEngine`: the same `GenerationEngine` contract on vLLM (GPU), imported lazily.

Written against vLLM's documented offline API: `vllm.LLM(model=..., dtype=...,
gpu_memory_utilization=...)`, `SamplingParams(n, temperature, top_p, max_tokens, logprobs=0,
seed)`, `LLM.generate` with token-id prompts, `RequestOutput.outputs[i].token_ids / .logprobs`.
Prompts are tokenized by our own helper (`engine.prompt_ids`), so both engines feed the
model identical tokens. Log-probs follow the engine convention (untempered policy): we ask
for `logprobs_mode="raw_logprobs"` where vLLM supports it (>= 0.10.2).

Weight updates reach into vLLM's worker, which its API does not fix across versions; that one
path is isolated in `_on_workers` with an error that says what to do.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from ray_conductor.errors import ConfigError
from ray_conductor.policy.engine import Prompt, Sample, check_sampling, prompt_ids
from ray_conductor.policy.loading import resolve_model_path

MISSING_VLLM = (
    "VLLMEngine needs vLLM, which is not importable here. Install it on a CUDA machine "
    "(`pip install 'ray-conductor[gpu]'`), or use the transformers engine (policy engine=hf)."
)


class VLLMEngine:
    """`GenerationEngine` over `vllm.LLM`; `update_weights` pushes learner weights into it."""

    def __init__(self, model: str = "smollm2", dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.5, seed: int = 0, **llm_kwargs: Any):
        # Callables sent to workers through `collective_rpc` are pickled; vLLM's V1
        # multiprocess engine accepts that only with this opt-in (local processes only).
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        try:
            import vllm
        except ImportError as e:
            raise ImportError(MISSING_VLLM) from e
        self._vllm = vllm
        kwargs = dict(model=resolve_model_path(model), dtype=dtype, seed=seed,
                      gpu_memory_utilization=gpu_memory_utilization, **llm_kwargs)
        kwargs.setdefault("logprobs_mode", "raw_logprobs")
        try:
            self.llm = vllm.LLM(**kwargs)
        except TypeError as e:  # vLLM before 0.10.2 has no logprobs_mode (V0 logs are raw)
            if "logprobs_mode" not in str(e):
                raise
            kwargs.pop("logprobs_mode")
            self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        temperature: float,
        max_tokens: int,
        top_p: float = 1.0,
        seed: int | None = None,
        constraints: Sequence[Any] | None = None,
    ) -> list[list[Sample]]:
        """One request per (prompt, sample), each with its own seed (`seed + row`), so a
        seeded call is reproducible whatever vLLM does with `n > 1`."""
        check_sampling(n, temperature, max_tokens, top_p)
        if constraints is not None and any(c is not None for c in constraints):
            raise ConfigError("the vLLM engine does not constrain plans yet; set "
                              "conductor.constrain=false or use conductor.engine=hf")
        encoded = [prompt_ids(self.tokenizer, p) for p in prompts]
        rows = [i for i in range(len(encoded)) for _ in range(n)]
        params = [
            self._vllm.SamplingParams(n=1, temperature=temperature, top_p=top_p,
                                      max_tokens=max_tokens, logprobs=0,
                                      seed=None if seed is None else seed + k)
            for k in range(len(rows))
        ]
        requests = [{"prompt_token_ids": encoded[i]} for i in rows]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        out: list[list[Sample]] = [[] for _ in prompts]
        for i, req in zip(rows, outputs):
            out[i].extend(to_sample(encoded[i], c) for c in req.outputs)
        return out

    def update_weights(self, state_dict: dict[str, Any]) -> None:
        """Load learner weights (HF parameter names) into every vLLM worker, then drop
        the prefix cache, whose keys and values the old weights computed."""
        weights = [(k, v.detach().to("cpu")) for k, v in state_dict.items()]
        self._on_workers(_load_weights, weights)
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if reset is not None:
            reset()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.update_weights(state_dict)

    def get_state_dict(self) -> dict[str, Any]:
        """The weights as vLLM holds them (its parameter names: fused qkv/gate_up)."""
        return self._on_workers(_state_dict)[0]

    def _on_workers(self, fn: Any, *args: Any) -> list[Any]:
        """Run `fn(worker, *args)` on each vLLM worker: `LLM.collective_rpc` (vLLM >= 0.7),
        else the in-process driver worker of older versions."""
        rpc = getattr(self.llm, "collective_rpc", None)
        if rpc is not None:
            return list(rpc(fn, args=args))
        try:
            worker = self.llm.llm_engine.model_executor.driver_worker
        except AttributeError as e:
            raise RuntimeError(
                "this vLLM version offers neither LLM.collective_rpc nor "
                "llm_engine.model_executor.driver_worker, so weights cannot be pushed into it; "
                "pin vllm>=0.8 or rebuild the engine from a saved checkpoint"
            ) from e
        return [fn(worker, *args)]


def _model(worker: Any) -> Any:
    runner = getattr(worker, "model_runner", None) or getattr(worker, "worker").model_runner
    return runner.model


def _load_weights(worker: Any, weights: list[tuple[str, Any]]) -> None:
    _model(worker).load_weights(weights=weights)


def _state_dict(worker: Any) -> dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) for k, v in _model(worker).state_dict().items()}


def to_sample(prompt: list[int], completion: Any) -> Sample:
    """A vLLM `CompletionOutput` as our `Sample` (logprobs=0 gives the sampled token's)."""
    ids = [int(t) for t in completion.token_ids]
    steps = completion.logprobs or []
    lps = [float(step[t].logprob) for step, t in zip(steps, ids)]
    if len(lps) != len(ids):
        raise RuntimeError(f"vLLM returned {len(lps)} log-probs for {len(ids)} tokens; "
                           "was the request made with logprobs=0?")
    reason = "stop" if completion.finish_reason == "stop" else "length"
    return Sample(list(prompt), ids, completion.text, lps, reason)
