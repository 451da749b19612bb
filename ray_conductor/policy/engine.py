"""The generation-engine contract: prompts in, sampled completions with token ids and
per-token log-probs out. The transformers and vLLM engines both meet it, so the `Conductor`,
rollouts and the learner never know which one sampled.

Log-prob convention (both engines): `Sample.logprobs[t]` is log pi(token_t | prefix) under
the *untempered* policy, i.e. log_softmax of the raw logits at temperature 1.0, whatever
temperature or top-p the token was sampled with. That is the quantity the learner recomputes
in its loss, so the engine's numbers can stand in for log pi_old.

Plain Python: no torch, no transformers at module level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, Union, runtime_checkable

from ray_conductor.workers.base import Message

Prompt = Union[str, Sequence[Message]]  # raw text, or chat messages for the chat template


@dataclass
class Sample:
    """One sampled completion of one prompt."""

    prompt_ids: list[int]
    completion_ids: list[int]  # includes the EOS token when the sample stopped on it
    text: str  # the completion decoded without special tokens
    logprobs: list[float] = field(default_factory=list)  # one per completion token, T=1.0
    finish_reason: str = "length"  # "stop" (EOS) or "length" (hit max_tokens)

    @property
    def num_tokens(self) -> int:
        return len(self.completion_ids)


@runtime_checkable
class GenerationEngine(Protocol):
    """Samples completions from the policy and swaps its weights."""

    tokenizer: Any

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        temperature: float,
        max_tokens: int,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """`n` samples for each prompt, in prompt order. `temperature == 0` is greedy."""
        ...

    def get_state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ...


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of one prompt: chat messages go through the chat template with the
    generation prompt appended; a string is tokenized as given (with the tokenizer's own
    special tokens). Shared by the engines so both see identical prompt tokens."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_sampling(n: int, temperature: float, max_tokens: int, top_p: float) -> None:
    """Reject nonsense sampling arguments with a message, before any work is done."""
    from ray_conductor.errors import ConfigError

    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be at least 1, got {max_tokens}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all rows share, leaving every row at least one token of its
    own (the next-token logits after a prompt are read at its last position)."""
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n
