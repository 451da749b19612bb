"""The unit of training data: one sampled conductor output with its reward."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable


@dataclass
class Trajectory:
    """One completion of one prompt, scored.

    `old_logprobs` are log pi_old of the completion tokens (the sampler's, at temperature 1.0);
    None makes the learner recompute them before its update. `group_id` names the question the
    sample answers: GRPO normalises rewards within a group. `advantage` is filled in by
    whoever computes advantages over the whole batch (before it is sharded over learners).
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    old_logprobs: list[float] | None
    reward: float
    group_id: Hashable = 0
    advantage: float | None = None
    cost: float = 0.0
    calls: int = 0
    parsed: bool = False
    correct: bool = False
    query_id: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_sample(cls, sample: Any, reward: float, group_id: Hashable, **kw: Any) -> "Trajectory":
        """From a `policy.Sample` (prompt_ids, completion_ids, logprobs)."""
        return cls(list(sample.prompt_ids), list(sample.completion_ids),
                   list(sample.logprobs) or None, float(reward), group_id, **kw)
