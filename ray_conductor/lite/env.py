"""The lite conductor's training environment: a `gymnasium.Env` over a `LiteTable`.

Each episode is one train query; each step is a table lookup (call a worker: its recorded
answer and cost), so a policy sees every train question many times per minute. Reward:
`-cost_penalty * dollars` for each call, `+1` at the end if the returned answer is correct,
so an episode's return is `correct - cost_penalty * cost`. `cost_penalty` can be changed
between training iterations (the budget mode's Lagrange multiplier). `feature_noise` (a std,
or one per feature) adds Gaussian noise to an episode's question features: replayed many
times, the same questions are otherwise easy to memorise (train reward up, validation down).

Partial-information rows (`LiteTable.observed`): an unobserved cell is never called; its
action is masked like a worker already called, so an episode on a row learns only from the
workers observed there (a row needs one).

Observations are a Dict: `observations` (question features then `Episode.features`) and
`action_mask` (1.0 for legal actions), the layout RLlib's action-masking RLModules read.
An illegal action raises: masking is enforced by the policy, and a silent remap here would
hide a masking bug behind plausible-looking rewards.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from ray_conductor.lite.episode import Episode, n_actions, state_dim
from ray_conductor.lite.table import NO_ANSWER, LiteTable


def observe(question: np.ndarray, episode: Episode, cost_scale: float) -> dict[str, np.ndarray]:
    """The policy's input for one decision (shared with the live conductor)."""
    return {"observations": np.concatenate([question, episode.features(cost_scale)]
                                           ).astype(np.float32),
            "action_mask": episode.legal().astype(np.float32)}


def default_cost_scale(table: LiteTable) -> float:
    """Dollars that count as 1.0 in the cost feature: the priciest worker's mean cost."""
    return float(table.cost.mean(axis=0).max()) or 1.0


class LiteEnv(gym.Env):
    """Episodes over the rows of `table`, in a shuffled order that visits every row once per
    pass (so rare questions are not starved by sampling with replacement)."""

    metadata: dict[str, Any] = {}

    def __init__(self, table: LiteTable, *, max_calls: int = 4, cost_penalty: float = 0.0,
                 cost_scale: float | None = None, feature_noise: float | np.ndarray = 0.0,
                 seed: int | None = None):
        if len(table) == 0:
            raise ValueError("LiteEnv needs a non-empty table")
        if table.observed is not None and not table.observed.any(axis=1).all():
            raise ValueError("LiteEnv needs one observed worker per row (drop the others)")
        self.table, self.max_calls = table, max_calls
        self.cost_penalty = float(cost_penalty)
        self.feature_noise = np.broadcast_to(np.asarray(feature_noise, np.float32),
                                             table.features.shape[1:])  # std per feature
        self.cost_scale = cost_scale or default_cost_scale(table)
        w = len(table.workers)
        dim = table.features.shape[1] + state_dim(w, max_calls)
        self.observation_space = gym.spaces.Dict({
            "observations": gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32),
            "action_mask": gym.spaces.Box(0.0, 1.0, (n_actions(w),), np.float32),
        })
        self.action_space = gym.spaces.Discrete(n_actions(w))
        self._rng = np.random.default_rng(seed)
        self._order: np.ndarray = np.empty(0, dtype=np.int64)
        self._pos = 0
        self.row = -1
        self.episode: Episode | None = None
        self.question = np.zeros(table.features.shape[1], np.float32)

    def set_cost_penalty(self, value: float) -> None:
        self.cost_penalty = float(value)

    def _next_row(self) -> int:
        if self._pos >= len(self._order):
            self._order, self._pos = self._rng.permutation(len(self.table)), 0
        self._pos += 1
        return int(self._order[self._pos - 1])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng, self._order = np.random.default_rng(seed), np.empty(0, dtype=np.int64)
        self.row = int(options["row"]) if options and "row" in options else self._next_row()
        self.episode = Episode(self.table.strength, self.max_calls, self.table.comparable)
        self.question = self.table.features[self.row]
        if self.feature_noise.any():  # blur question identity, keep its topic (anti-memorising)
            noise = self._rng.normal(0.0, 1.0, self.question.shape) * self.feature_noise
            self.question = (self.question + noise).astype(np.float32)
        return self._obs(), {}

    def _obs(self) -> dict[str, np.ndarray]:
        obs = observe(self.question, self.episode, self.cost_scale)
        if self.table.observed is not None:
            obs["action_mask"] = self._legal().astype(np.float32)
        return obs

    def _legal(self) -> np.ndarray:
        """The episode's legal actions, less the workers unobserved on this row (stop stays
        legal when no observed worker is left: at least one action is)."""
        assert self.episode is not None
        legal = self.episode.legal()
        if self.table.observed is not None:
            w = self.episode.n_workers
            legal[:w] &= self.table.observed[self.row]
            if not legal.any():
                legal[self.episode.stop_action] = True
        return legal

    def step(self, action):
        ep, t, a = self.episode, self.table, int(action)
        if ep is None:
            raise RuntimeError("call reset() before step()")
        if not self._legal()[a]:
            raise ValueError(f"illegal action {a} after calls {ep.calls}: the policy must mask it")
        if a < ep.n_workers:
            code = int(t.answers[self.row, a])
            cost = float(t.cost[self.row, a])
            ep.record(a, None if code == NO_ANSWER else code, cost,
                      bool(t.responded[self.row, a]))
            return self._obs(), -self.cost_penalty * cost, False, False, {}
        winner = ep.final(a)
        correct = winner is not None and bool(t.correct[self.row, ep.calls[winner]])
        info = {"correct": correct, "cost": ep.cost, "calls": len(ep.calls)}
        obs = self._obs()
        self.episode = None
        return obs, float(correct), True, False, info
