"""Which rows a round trains and evaluates on: a pure choice over question keys (`choose`),
tested with hand-made examples; the loop looks the keys up and re-rolls them.

New questions split by hashed key (`held_back`) into training rows and the held-back slice
(the paired test's, never trained on; the most recent `eval_rows` are remembered); the
training rows are the new ones, the most recent earlier ones up to `recent_rows`, and
`replay_ratio` older ones per new one drawn from the buffer (against forgetting); anchors
follow, after the traffic, minus any question already taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ray_conductor.online.state import remember


@dataclass
class RowChoice:
    train_new: list[str]  # new questions to train on
    replay: list[str]  # earlier questions trained on again (recent first, then sampled)
    held: list[str]  # held-back questions the paired test compares on
    anchors: list[str]  # anchor questions trained on
    held_anchors: list[str]  # held-back anchor questions compared on
    buffer: list[str]  # the buffer after this round
    held_keys: list[str]  # the remembered held-back slice after this round

    @property
    def train(self) -> list[str]:
        return self.train_new + self.replay + self.anchors


def choose(fresh: Sequence[str], buffer: Sequence[str], held_before: Sequence[str],
           known: set[str] | Callable[[str], bool], *, is_held: Callable[[str], bool],
           buffer_rows: int, recent_rows: int, replay_ratio: float, eval_rows: int,
           rng: np.random.Generator, anchors: Sequence[str] = (),
           held_anchors: Sequence[str] = ()) -> RowChoice:
    """`fresh`: the new questions' keys (one per question, oldest first); `buffer`,
    `held_before`: what earlier rounds remembered; `known`: keys whose rows can be judged
    now (others are skipped)."""
    has = known if callable(known) else known.__contains__
    train_new = [k for k in fresh if not is_held(k)]
    held_keys = remember(list(held_before), [k for k in fresh if is_held(k)], eval_rows)
    mine = set(train_new)
    older = [k for k in buffer if has(k) and k not in mine]
    new_buffer = remember(list(buffer), train_new, buffer_rows)
    n_recent = min(len(older), max(0, recent_rows - len(train_new)))
    recent, rest = older[len(older) - n_recent:], older[:len(older) - n_recent]
    n_old = min(len(rest), round(replay_ratio * len(train_new)))
    sampled = [rest[i] for i in sorted(rng.choice(len(rest), n_old, replace=False))]
    held = [k for k in held_keys if has(k)]
    taken = mine | set(recent) | set(sampled) | set(held)
    return RowChoice(train_new, recent + sampled, held,
                     [k for k in anchors if k not in taken],
                     [k for k in held_anchors if k not in taken], new_buffer, held_keys)
