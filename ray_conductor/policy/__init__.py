"""The policy: the conductor LM, its generation engines, and planning.

Owns: loading the causal LM offline (`loading`), the `GenerationEngine` protocol and its
transformers and vLLM engines, the `Conductor` that turns a question into a `Workflow`
(re-sampling malformed plans, then falling back), and recursion (`RecursivePool`).
Must not import at module level: Ray, torch, transformers, vLLM, or training code (`rl`);
the heavy imports happen inside the functions and classes that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "Conductor", "ConductorConfig", "GenerationEngine", "PlanResult", "RecursivePool", "Sample",
    "TransformersEngine", "VLLMEngine", "build_engine", "load_causal_lm", "smollm2_gguf_path",
]

_HOMES = {
    "Conductor": "conductor", "ConductorConfig": "conductor", "PlanResult": "conductor",
    "build_engine": "conductor", "GenerationEngine": "engine", "Sample": "engine",
    "TransformersEngine": "hf_engine", "VLLMEngine": "vllm_engine",
    "RecursivePool": "recursion", "load_causal_lm": "loading", "smollm2_gguf_path": "loading",
}

if TYPE_CHECKING:
    from ray_conductor.policy.conductor import Conductor, ConductorConfig, PlanResult, build_engine
    from ray_conductor.policy.engine import GenerationEngine, Sample
    from ray_conductor.policy.hf_engine import TransformersEngine
    from ray_conductor.policy.loading import load_causal_lm, smollm2_gguf_path
    from ray_conductor.policy.recursion import RecursivePool
    from ray_conductor.policy.vllm_engine import VLLMEngine


def __getattr__(name: str) -> Any:
    """Lazy exports, so `import ray_conductor.policy` stays light (no torch until needed)."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
