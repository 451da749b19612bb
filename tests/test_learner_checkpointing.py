"""Gradient checkpointing trades compute for memory without changing the update."""

import pytest
import torch

from ray_conductor.errors import ConfigError
from ray_conductor.rl.learner import Learner, LearnerConfig, _require_no_dropout
from ray_conductor.rl.types import Trajectory


def batch():
    return [Trajectory(list(range(10, 30)), list(range(40, 48)), None, r, "g", parsed=True)
            for r in (0.0, 1.0, 0.5, 1.0)]


def test_checkpointed_step_equals_the_plain_step():
    outs = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        lr = Learner("tiny-smollm2", LearnerConfig(lr=1e-3, gradient_checkpointing=ckpt,
                                                   share_prefix=False))
        m = lr.train_step(batch())
        assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # train mode added no dropout
        outs.append(lr.state_dict())
    for k in outs[0]:
        assert torch.allclose(outs[0][k], outs[1][k], atol=1e-6), k


def test_dropout_is_refused_with_checkpointing():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    model.config = type("C", (), {})()
    with pytest.raises(ConfigError, match="without dropout"):
        _require_no_dropout(model)
