"""The LearnerGroup on Ray: two gloo ranks make the same update as one learner on the whole
batch, weights leave through the object store, and checkpoints round-trip."""

import pytest
import torch

from ray_conductor.rl.learner import Learner, LearnerConfig
from ray_conductor.rl.types import Trajectory

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = torch.randint(0, 49152, (3 + i % 3,), generator=g).tolist()
        c = torch.randint(0, 49152, (1 + i % 4,), generator=g).tolist()
        out.append(Trajectory(p, c, None, float(i % 3 == 0), group_id=i // 4))
    return out


CFG = LearnerConfig(lr=1e-3, micro_batch_size=3)  # 4 per rank -> 2 micro-batches each


@pytest.fixture(scope="module")
def group(ray_cluster):
    from ray_conductor.graph import GraphConfig, GraphSpec, RoleConfig
    from ray_conductor.rl.learner_group import LearnerGroup

    spec = GraphSpec.from_config(GraphConfig(learner=RoleConfig(num_cpus=1, count=2)))
    g = LearnerGroup(CFG, spec)
    yield g
    g.shutdown()


def test_a_batch_smaller_than_the_group_is_refused(group):
    with pytest.raises(ValueError, match="cannot feed 2 learners"):
        group.train_step(batch(n=1))


def test_two_gloo_learners_equal_one_learner_on_the_full_batch(ray_cluster, group, tmp_path):
    m2 = group.train_step(batch())
    ref = group.get_weights()
    assert isinstance(ref, ray_cluster.ObjectRef)
    w2 = ray_cluster.get(ref)

    one = Learner(None, CFG)
    before = one.state_dict()
    m1 = one.train_step(batch())
    w1 = one.state_dict()
    moved = max((w1[k] - before[k]).abs().max().item() for k in w1)
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 1e-4 and diff < 1e-5, (moved, diff)
    for k in ("loss", "ratio_mean", "reward_mean", "tokens", "sequences", "grad_norm"):
        assert m2[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-6), k

    path = str(tmp_path / "group.pt")
    group.save(path)
    group.train_step(batch(seed=1))
    group.load(path)  # every rank back to the saved step
    w_loaded = ray_cluster.get(group.get_weights(torch.bfloat16))
    assert all(v.dtype == torch.bfloat16 for v in w_loaded.values())
    assert all(torch.allclose(w_loaded[k].float(), w2[k], atol=1e-2) for k in w2)
