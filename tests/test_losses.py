"""The RL math against numbers worked out by hand (comments show the arithmetic)."""

import math

import pytest
import torch

from ray_conductor.rl.losses import (
    gae, group_advantages, grouped_advantages, k3_kl, outcome_rewards, ppo_loss, token_logprobs,
    value_loss,
)

S = 1 / math.sqrt(3)  # unbiased std of [1, 0, 0, 1]: sqrt(4 * 0.25 / 3)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32),
                          torch.as_tensor(b, dtype=torch.float32), atol=tol)


# -- advantages --


def test_grpo_advantages_normalise_within_each_group():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]))
    # group 2: mean 0.25, std sqrt((3 * 0.0625 + 0.5625) / 3) = 0.5
    assert close(adv[0], [0.5 / S, -0.5 / S, -0.5 / S, 0.5 / S])
    assert close(adv[1], [-0.5, -0.5, -0.5, 1.5])


def test_grpo_equal_rewards_give_zero_advantage():
    assert close(group_advantages(torch.tensor([[0.5, 0.5, 0.5]])), [[0.0, 0.0, 0.0]])
    assert close(group_advantages(torch.tensor([[1.0]])), [[0.0]])


def test_grpo_without_std_and_flat_input():
    assert close(group_advantages(torch.tensor([[1.0, 0, 0, 0]]), normalize_std=False),
                 [[0.75, -0.25, -0.25, -0.25]])
    # flat, groups of 2: [1, 0] -> +-0.5 / std(0.7071) = +-0.7071; [3, 3] -> 0
    adv = group_advantages(torch.tensor([1.0, 0.0, 3.0, 3.0]), group_size=2)
    assert adv.shape == (4,)
    assert close(adv, [0.70711, -0.70711, 0.0, 0.0])


def test_grouped_advantages_by_id_in_any_order():
    adv = grouped_advantages(torch.tensor([1.0, 2.0, 0.0, 2.0]), ["a", "b", "a", "b"])
    assert close(adv, [0.70711, 0.0, -0.70711, 0.0])


def test_gae_three_steps_by_hand():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=0.9, lam=0.8)
    # d2 = 1 - 0.7 = 0.3                       A2 = 0.3
    # d1 = 0.9 * 0.7 - 0.6 = 0.03              A1 = 0.03 + 0.72 * 0.3 = 0.246
    # d0 = 0.9 * 0.6 - 0.5 = 0.04              A0 = 0.04 + 0.72 * 0.246 = 0.21712
    assert close(adv, [[0.21712, 0.246, 0.3]])
    assert close(ret, [[0.71712, 0.846, 1.0]])


def test_gae_padding_ends_the_sequence():
    r = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    v = torch.tensor([[0.5, 0.6, 0.7, 9.0]])
    adv, ret = gae(r, v, torch.tensor([[1.0, 1.0, 1.0, 0.0]]), gamma=0.9, lam=0.8)
    assert close(adv, [[0.21712, 0.246, 0.3, 0.0]])
    assert ret[0, 3] == 0
    adv1, _ = gae(r[:, :3], v[:, :3], torch.ones(1, 3))  # gamma = lam = 1: A_t = R - V_t
    assert close(adv1, [[0.5, 0.4, 0.3]])


def test_outcome_rewards_sit_on_the_last_real_token():
    out = outcome_rewards(torch.tensor([1.0, 2.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert close(out, [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])


# -- log-probs --


def test_token_logprobs_is_log_softmax_gather():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])  # softmax [1/4, 3/4], [1/2, 1/2]
    lp = token_logprobs(logits, torch.tensor([[1, 0]]))
    assert close(lp, [[math.log(0.75), math.log(0.5)]])
    assert lp.dtype == torch.float32
    assert close(token_logprobs(logits.to(torch.bfloat16), torch.tensor([[0, 1]])),
                 [[math.log(0.25), math.log(0.5)]], tol=1e-2)


# -- PPO --


def test_ratio_one_gives_minus_mean_advantage():
    lp = torch.log(torch.tensor([[0.3, 0.2], [0.5, 0.9]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -0.5])
    loss, m = ppo_loss(lp, lp.clone(), adv, mask)
    assert close(loss, (-1 - 1 + 0.5) / 3)  # per-token -A over the 3 real tokens
    assert close(m["ratio_mean"], 1.0) and close(m["clip_frac"], 0.0) and close(m["approx_kl"], 0)
    loss_seq, _ = ppo_loss(lp, lp.clone(), adv, mask, loss_agg="seq_mean")
    assert close(loss_seq, (-1 + 0.5) / 2)  # mean of per-sequence means
    loss_n, _ = ppo_loss(lp, lp.clone(), adv, mask, normalizer=6.0)
    assert close(loss_n, -1.5 / 6)


def test_clipping_by_hand_with_gradients():
    # four one-token sequences: ratios 1.5, 1.5, 0.5, 0.5; advantages +1, -1, -1, +1
    old = torch.zeros(4, 1)
    new = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, m = ppo_loss(new, old, adv, torch.ones(4, 1), clip_eps=0.2)
    # -min(r A, clip(r) A): -min(1.5, 1.2) = -1.2 (clipped); -min(-1.5, -1.2) = 1.5;
    # -min(-0.5, -0.8) = 0.8 (clipped); -min(0.5, 0.8) = -0.5
    assert close(loss, (-1.2 + 1.5 + 0.8 - 0.5) / 4)
    assert close(m["clip_frac"], 0.5)
    assert close(m["ratio_mean"], 1.0)
    loss.backward()
    # d(-r A)/d logp = -A r on unclipped tokens, 0 on clipped ones; divided by 4 tokens
    assert close(new.grad, [[0.0], [1.5 / 4], [0.0], [-0.5 / 4]])


def test_asymmetric_clip_high():
    new = torch.log(torch.tensor([[1.5]]))
    loss, _ = ppo_loss(new, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1),
                       clip_eps=0.2, clip_eps_high=0.28)
    assert close(loss, -1.28)


def test_padding_is_ignored_even_when_it_holds_garbage():
    lp = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0, -1e4]])  # exp(1e4) would be inf
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = ppo_loss(lp, old, torch.tensor([2.0]), mask, kl_coef=0.1,
                       logp_ref=torch.tensor([[-1.0, -2.0, 1e4]]))
    assert close(loss, -2.0)
    assert all(torch.isfinite(v) for v in m.values())
    loss.backward()
    assert lp.grad[0, 2] == 0 and torch.isfinite(lp.grad).all()


def test_k3_kl_to_reference():
    # pi = 1, pi_ref / pi = 1/2: k3 = 0.5 - ln 0.5 - 1 = 0.193147
    assert close(k3_kl(torch.zeros(1), torch.log(torch.tensor([0.5]))), [0.193147])
    lp = torch.zeros(1, 1)
    loss, m = ppo_loss(lp, lp.clone(), torch.zeros(1), torch.ones(1, 1), kl_coef=0.1,
                       logp_ref=torch.log(torch.tensor([[0.5]])))
    assert close(loss, 0.0193147)
    assert close(m["kl"], 0.193147)


def test_approx_kl_between_old_and_new():
    # r = 2: k3 = r - 1 - ln r = 0.306853
    _, m = ppo_loss(torch.log(torch.tensor([[2.0]])), torch.zeros(1, 1), torch.zeros(1),
                    torch.ones(1, 1))
    assert close(m["approx_kl"], 0.306853)


def test_micro_batches_with_a_global_normalizer_add_up_to_the_batch_loss():
    g = torch.Generator().manual_seed(0)
    new, old = -torch.rand(4, 3, generator=g), -torch.rand(4, 3, generator=g)
    adv = torch.randn(4, generator=g)
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    for agg, norm in (("token_mean", float(mask.sum())), ("seq_mean", 4.0)):
        whole, _ = ppo_loss(new, old, adv, mask, loss_agg=agg)
        parts = sum(ppo_loss(new[s], old[s], adv[s], mask[s], loss_agg=agg, normalizer=norm)[0]
                    for s in (slice(0, 1), slice(1, 4)))
        assert close(whole, parts)


def test_per_token_advantages_for_gae():
    lp = torch.zeros(1, 2)
    loss, _ = ppo_loss(lp, lp.clone(), torch.tensor([[1.0, 3.0]]), torch.ones(1, 2))
    assert close(loss, -2.0)


def test_value_loss_plain_and_clipped():
    assert close(value_loss(torch.tensor([[0.5, 1.0]]), torch.ones(1, 2), torch.ones(1, 2)),
                 0.5 * (0.25 + 0) / 2)
    # V = 1.0, V_old = 0.5, R = 1, clip 0.2: V_clipped = 0.7, max(0, 0.09) -> 0.5 * 0.09
    assert close(value_loss(torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1),
                            old_values=torch.full((1, 1), 0.5), clip=0.2), 0.045)


def test_bad_shapes_and_modes_are_refused():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError):
        ppo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1),
                 loss_agg="sum")
