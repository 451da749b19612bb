"""Online retraining: the served conductor learns from its own traffic, and only a policy
that is measurably better replaces it.

One round (`loop.Retrainer.round`) reads the traffic log's rewarded rows (a posted reward,
else a label judged against the answer, else a verifier: `rewards`), watches the live reward
of the last promotion and rolls it back when it dropped (`stats.drop_test`), and, when a
trigger fires (`triggers`: every N new rewarded rows or T minutes), gathers (question,
worker) cells: the answers the served traces already hold, the cache, and, within a budget
of `reroll.calls_per_row` extra calls per rewarded row, the cells most likely to change a
choice, asked through the shared worker proxies at `rollout` priority (`reroll`, `cells`,
`explore`; `reroll.calls_per_row=null`: every worker's answer, a full counterfactual table),
chooses the training rows (`rows`),
continues training the serving policy from its own weights on new rows plus a replay buffer
(`trainer.LiteTrainer`, or for a served LM conductor `lm_trainer.LMTrainer`: GRPO over the
same re-rolled answers; a new worker extends a lite policy's action space in place:
`extend`), rolls out
candidate and serving policy on a held-back slice of recent questions (only where every
step they take is an observed cell) and promotes by hot-swap only when a one-sided paired
test says the candidate is better (`verdict`, `stats.paired_test`)
and, with held-back anchors, not significantly worse on them. A promotion's live rewards are
tested against the previous version replayed on the same questions (paired), or against its
last live rewards (`stats.drop_test`).
Every decision goes to a JSONL log and to Prometheus (`decisions`), with what learning cost
(`extra_calls`, `extra_dollars`) beside what the traffic cost. The watch is `watch`.

Owns: those modules, `RetrainConfig` (`config`), the `retrain` command (`command`) and the
`OnlineRetrainer` actor that runs the same loop beside a Serve app (`actor`).
May import: serve (the traffic log, hot-swap), policy, lite, rl (the LM tier's learner and
rollout worker, in `lm_trainer` only, on first use), graph, data, workers, workflow,
features, verify. The pure core (rewards, stats, triggers, decisions, extend, explore, rows,
verdict) imports no Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "RetrainConfig",
    "Retrainer",
    "drop_test",
    "extend_workers",
    "paired_test",
    "run_retrain",
]

_HOMES = {"RetrainConfig": "config", "Retrainer": "loop", "extend_workers": "extend",
          "paired_test": "stats", "drop_test": "stats", "run_retrain": "command"}

if TYPE_CHECKING:
    from ray_conductor.online.command import run_retrain
    from ray_conductor.online.config import RetrainConfig
    from ray_conductor.online.extend import extend_workers
    from ray_conductor.online.loop import Retrainer
    from ray_conductor.online.stats import drop_test, paired_test


def __getattr__(name: str) -> Any:
    """Lazy exports: importing the package pulls in neither Ray nor torch."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
