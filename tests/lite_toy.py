"""A toy replay table for the lite conductor's tests: three workers, four features."""

from __future__ import annotations

import numpy as np

from ray_conductor.lite.table import LiteTable

WORKERS = ["cheap", "mid", "pricey"]
STRENGTH = [1.0, 2.0, 10.0]


def toy_table(q: int = 400, seed: int = 0, mid_rate: float = 0.4) -> LiteTable:
    """cheap ($0.001) is right exactly when feature 0 > 0; mid ($0.01) at `mid_rate`;
    pricey ($0.1) 90% of the time. Wrong answers differ from the right one (0)."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(q, 4)).astype(np.float32)
    correct = np.stack([feats[:, 0] > 0, rng.random(q) < mid_rate, rng.random(q) < 0.9],
                       axis=1)
    answers = np.where(correct, 0, rng.integers(1, 4, (q, 3))).astype(np.int32)
    cost = np.tile([0.001, 0.01, 0.1], (q, 1))
    return LiteTable([f"q{i}" for i in range(q)], feats, answers, correct, cost,
                     np.ones((q, 3), bool), list(WORKERS), np.array(STRENGTH), True)
