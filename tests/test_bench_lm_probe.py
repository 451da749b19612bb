"""`benchmarks/lm_probe.py`: the nested choice of penalty and price (the ridge read-out is
`policy.program_head`'s, tested in test_program_head.py), on hand-made outcomes (the real run embeds the demo pool with SmolLM2: a benchmark)."""

from __future__ import annotations

import numpy as np
import pytest

from scripts import load_script


def _probe():
    return load_script("benchmarks/lm_probe.py")


def test_nested_choice_reads_the_feature_that_decides_and_keeps_the_cost_limit():
    """Program 0 is right where x0 > 0, program 1 where x0 <= 0 (both cheap); program 2 is
    always right but costs as much as 'gpt-4o': reading x0 gets everything right at a
    fraction of its cost; ignoring it, the best under the limit is half right."""
    p = _probe()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 4))
    pos = x[:, 0] > 0
    correct = np.stack([pos, ~pos, np.ones(500, bool)], axis=1).astype(float)
    cost = np.tile([0.01, 0.01, 1.0], (500, 1))
    folds = np.arange(500) % 5
    got = p.nested(x, correct, cost, folds, g_cost=1.0, alphas=[0.01, 1.0])
    assert got["accuracy"] > 0.95 and got["cost_vs_gpt4o"] <= 0.5
    assert len(got["chosen"]) == 5
    blind = p.nested(rng.normal(size=(500, 4)), correct, cost, folds, g_cost=1.0,
                     alphas=[0.01, 1.0])
    assert blind["accuracy"] < 0.8 < got["accuracy"]
