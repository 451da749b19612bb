"""One GRPO step, the unit both training loops repeat (`rl.trainer` over Ray actors, the
online LM tier in one process): rollout groups in; group-normalised advantages, one learner
update and the weight sync out.

`learner` is anything with `train_step(batch) -> metrics` (a `Learner`, a `LearnerGroup`);
`sync(version)` sends its weights to whoever samples next (rollout actors, an in-process
engine). No Ray here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ray_conductor.rl.learner import LearnerConfig, with_advantages
from ray_conductor.rl.types import Trajectory


@dataclass
class StepResult:
    """What one step did: the learner's metrics, the weights version it produced, the batch's
    staleness (versions between sampling and this update) and its phase times."""

    stats: dict[str, float]
    version: int
    staleness: int
    times: dict[str, float] = field(default_factory=dict)


def staleness(batch: Sequence[Trajectory], version: int) -> int:
    """How many updates the oldest sample's weights are behind `version` (the learner's
    before this step); 0 for samples that record no version."""
    got = [t.info.get("weights_version") for t in batch]
    got = [int(v) for v in got if v is not None]
    return max(0, version - min(got)) if got else 0


def grpo_step(batch: Sequence[Trajectory], learner: Any, sync: Callable[[int], Any],
              version: int, cfg: LearnerConfig) -> StepResult:
    """Advantages over the whole batch (so no group is split across learners), one update,
    then the new weights (version + 1) to the samplers. The PPO ratio's pi_old is each
    sample's behaviour log-probs, recorded when it was sampled, so a batch sampled with
    older weights (an overlapped schedule) is corrected, not mistaken for on-policy."""
    lag = staleness(batch, version)
    if cfg.advantage == "grpo" and any(t.advantage is None for t in batch):
        batch = with_advantages(batch, cfg)
    t0 = time.perf_counter()
    stats = learner.train_step(batch)
    t1 = time.perf_counter()
    sync(version + 1)
    t2 = time.perf_counter()
    return StepResult(stats, version + 1, lag, {"update_s": t1 - t0, "sync_s": t2 - t1})


def sft_epochs(examples: Sequence[Trajectory], learner: Any, *, epochs: int, batch: int,
               seed: int = 0, log: Callable[[int, dict[str, float]], Any] | None = None
               ) -> list[float]:
    """Behaviour cloning: `epochs` shuffled passes over `examples` in batches of `batch`
    through `learner.sft_step`; the mean loss of each epoch."""
    import random

    rng = random.Random(seed)
    order = list(examples)
    curve, step = [], 0
    for _ in range(epochs):
        rng.shuffle(order)
        losses = []
        for i in range(0, len(order), batch):
            stats = learner.sft_step(order[i:i + batch])
            losses.append(stats["sft_loss"])
            if log is not None:
                log(step, stats)
            step += 1
        curve.append(sum(losses) / max(len(losses), 1))
    return curve
