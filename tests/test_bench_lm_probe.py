"""`benchmarks/lm_probe.py`: its ridge read-out and the nested choice of penalty and price,
on hand-made outcomes (the real run embeds the demo pool with SmolLM2: a benchmark)."""

from __future__ import annotations

import numpy as np
import pytest

from scripts import load_script


def _probe():
    return load_script("benchmarks/lm_probe.py")


def test_ridge_recovers_a_linear_map_and_oof_never_sees_the_row():
    p = _probe()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = np.stack([2 * x[:, 0] - x[:, 2] + 1, x[:, 1]], axis=1)
    got = p.ridge(x, y, x[:5], alpha=1e-6)
    assert got == pytest.approx(y[:5], abs=1e-3)
    folds = np.arange(400) % 5
    spike = y.copy()
    spike[0] += 1000.0  # a row's own target must not reach its out-of-fold prediction
    assert p.ridge_oof(x, spike, folds, 1e-6)[0] == pytest.approx(y[0], abs=5.0)


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
