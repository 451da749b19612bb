"""The Learner on the tiny model: alignment of its log-probs, the update, resume, and a short
training run in which the reward rises. No Ray."""

import time

import pytest
import torch

from ray_conductor.errors import ConfigError
from ray_conductor.rl import losses as L
from ray_conductor.rl.learner import (
    Learner, LearnerConfig, batch_advantages, collate, policy_inputs, shard, with_advantages,
)
from ray_conductor.rl.types import Trajectory

MODEL = "tiny-smollm2"


def random_batch(n=6, seed=0, logprobs_from=None):
    """Trajectories of random tokens; old log-probs from `logprobs_from` (a model), one
    sequence at a time, unpadded."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = torch.randint(0, 49152, (2 + i % 4,), generator=g).tolist()
        c = torch.randint(0, 49152, (1 + (i * 3) % 5,), generator=g).tolist()
        lp = None
        if logprobs_from is not None:
            with torch.no_grad():
                logits = logprobs_from(torch.tensor([p + c])).logits[0, len(p) - 1:-1]
            lp = L.token_logprobs(logits[None], torch.tensor([c]))[0].tolist()
        out.append(Trajectory(p, c, lp, float(i % 2), group_id=i // 3))
    return out


# -- pure helpers --


def test_shard_is_balanced_and_complete():
    items = list(range(10))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert [shard(items[:2], r, 3) for r in range(3)] == [[], [0], [1]]


def test_advantages_are_grouped_by_group_id():
    batch = [Trajectory([1], [2], None, r, group_id=g)
             for r, g in [(1.0, "a"), (0.0, "a"), (0.5, "b"), (0.5, "b")]]
    assert batch_advantages(batch, LearnerConfig()) == pytest.approx([0.70711, -0.70711, 0, 0],
                                                                      abs=1e-4)
    assert [t.advantage for t in with_advantages(batch, LearnerConfig())][2:] == [0.0, 0.0]
    assert batch[0].advantage is None  # copies, not edits


def test_collate_aligns_completions():
    b = collate([Trajectory([1, 2, 3], [4], [-0.5], 1.0), Trajectory([5], [6, 7], None, 0.0)],
                pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 0], [0, 0, 5, 6, 7]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 3], [0, 0, 0, 1, 2]]
    assert b["completion"].tolist() == [[4, 0], [6, 7]]
    assert b["mask"].tolist() == [[1, 0], [1, 1]]
    assert b["has_old"].tolist() == [True, False]
    with pytest.raises(ValueError, match="old log-probs"):
        collate([Trajectory([1], [2, 3], [-1.0], 0.0)])


def test_collate_moves_the_shared_prefix_out_of_the_rows():
    head = list(range(100, 110))  # 10 shared tokens
    batch = [Trajectory(head + [1, 2], [4], None, 1.0), Trajectory(head + [5], [6, 7], None, 0.0)]
    b = collate(batch, pad_id=0, share_prefix=True)
    assert b["prefix_ids"].tolist() == [head]
    assert b["input_ids"].tolist() == [[1, 2, 4, 0], [0, 5, 6, 7]]
    assert b["attention_mask"].tolist() == [[1] * 10 + [1, 1, 1, 0], [1] * 10 + [0, 1, 1, 1]]
    assert b["position_ids"].tolist() == [[10, 11, 12, 12], [9, 10, 11, 12]]
    assert b["completion"].tolist() == [[4, 0], [6, 7]]
    # every row keeps a prompt token of its own; short or absent prefixes are not split off
    same = collate([Trajectory(head, [4], None, 1.0)] * 2, share_prefix=True)
    assert same["prefix_ids"].shape == (1, 9) and same["input_ids"].shape == (2, 2)
    short = collate([Trajectory([1, 2, 3], [4], None, 1.0)] * 2, share_prefix=True)
    assert "prefix_ids" not in short and short["input_ids"].shape == (2, 4)


def prefix_batch(seed=0):
    """Six trajectories whose prompts share a 40-token head, in two groups."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(0, 49152, (40,), generator=g).tolist()
    return [Trajectory(head + torch.randint(0, 49152, (1 + i % 3,), generator=g).tolist(),
                       torch.randint(0, 49152, (1 + (i * 3) % 5,), generator=g).tolist(),
                       None, float(i % 2), group_id=i // 3) for i in range(6)]


@pytest.mark.parametrize("advantage", ["grpo", "gae"])
def test_shared_prefix_pass_gives_the_same_logprobs_values_and_gradients(advantage):
    lrn = Learner(MODEL, LearnerConfig(advantage=advantage))
    batch = prefix_batch()
    res = []
    for share in (False, True):
        mb = collate(batch, lrn.pad_id, share_prefix=share)
        assert ("prefix_ids" in mb) == share
        lrn.policy.zero_grad()
        logp, values = lrn.policy(*policy_inputs(mb))
        (logp * mb["mask"]).sum().add(0.0 if values is None else values.sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in lrn.policy.parameters()
                           if p.grad is not None])
        res.append((logp * mb["mask"], values, grads))
    (lp0, v0, g0), (lp1, v1, g1) = res
    assert (lp0 - lp1).abs().max() < 1e-4
    assert (g0 - g1).abs().max() < 1e-4 * max(1.0, float(g0.abs().max()))
    if advantage == "gae":
        assert (v0 - v1).abs().max() < 1e-5


def test_shared_prefix_update_equals_the_full_update():
    batch = prefix_batch()
    # Adam's first step is lr * sign(g) where |g| >> eps: a large eps keeps the step a
    # continuous function of g, so float noise in near-zero gradients cannot flip it
    cfg = dict(lr=1e-3, adam_eps=1e-3, micro_batch_size=3)
    a = Learner(MODEL, LearnerConfig(share_prefix=False, **cfg))
    b = Learner(MODEL, LearnerConfig(share_prefix=True, **cfg))
    ma, mb = a.train_step(batch), b.train_step(batch)
    assert ma["loss"] == pytest.approx(mb["loss"], abs=1e-5)
    wa, wb = a.state_dict(), b.state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_gradient_checkpointing_runs_rows_in_full():
    lrn = Learner(MODEL, LearnerConfig(gradient_checkpointing=True, share_prefix=True))
    assert all("prefix_ids" not in mb for mb, _ in lrn._micro_batches(prefix_batch()))
    assert lrn.train_step(prefix_batch())["tokens"] > 0


# -- with the tiny model --


@pytest.fixture(scope="module")
def learner():
    return Learner(MODEL, LearnerConfig(lr=1e-3, micro_batch_size=4))


def test_padded_batch_logprobs_equal_one_at_a_time(learner):
    batch = random_batch(logprobs_from=learner.policy.lm)
    mb = collate(batch, learner.pad_id)
    with torch.no_grad():
        logp, values = learner.policy(mb["input_ids"], mb["attention_mask"], mb["position_ids"],
                                      mb["completion"])
    assert values is None
    err = ((logp - mb["old_logprobs"]).abs() * mb["mask"]).max()
    assert err < 1e-4


def test_first_step_has_ratio_one_and_moves_the_weights(learner):
    batch = random_batch(logprobs_from=learner.policy.lm)
    before = learner.state_dict()
    m = learner.train_step(batch)
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert m["approx_kl"] == pytest.approx(0.0, abs=1e-6) and m["clip_frac"] == 0.0
    assert m["tokens"] == sum(len(t.completion_ids) for t in batch) and m["sequences"] == 6
    after = learner.state_dict()
    assert max((after[k] - before[k]).abs().max() for k in after) > 1e-4
    m2 = learner.train_step(random_batch(seed=1))  # no old log-probs: recomputed, ratio 1
    assert m2["ratio_mean"] == pytest.approx(1.0, abs=1e-4)


def test_kl_gae_bf16_and_seq_mean_steps_run():
    batch = random_batch()
    kl = Learner(MODEL, LearnerConfig(lr=1e-3, kl_coef=0.1))
    kl.train_step(batch)
    m = kl.train_step(batch)
    assert m["kl"] > 0  # the policy has left the frozen reference
    gae = Learner(MODEL, LearnerConfig(lr=1e-3, advantage="gae", loss_agg="seq_mean",
                                       bf16=True, ppo_epochs=2))
    m = gae.train_step(batch)
    assert m["value_loss"] > 0 and all(v == v for v in m.values())  # no NaN


def test_save_and_load_resume_exactly(tmp_path):
    cfg = LearnerConfig(lr=1e-3, micro_batch_size=2)
    a = Learner(MODEL, cfg)
    a.train_step(random_batch(seed=0))
    a.save(str(tmp_path / "ckpt.pt"))
    b = Learner(MODEL, cfg)
    b.load(str(tmp_path / "ckpt.pt"))
    assert b.steps == 1
    nxt = random_batch(seed=1)
    a.train_step(nxt)
    b.train_step(nxt)  # the same Adam moments, so the same second step
    wa, wb = a.state_dict(), b.state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def sample_actions(lm, prompts, actions, per_prompt, g):
    """Sample one token per completion from the model's own next-token distribution over
    `actions` (the same distribution renormalised to the action set); old log-probs are the
    full-vocabulary ones. With group-normalised advantages (zero-sum per group) the gradient
    of log pi(a) equals that of the renormalised log-prob, so this is an exact policy gradient
    of the sampling policy."""
    out = []
    with torch.no_grad():
        for qi, p in enumerate(prompts):
            logits = lm(torch.tensor([p])).logits[0, -1].float()
            full = torch.log_softmax(logits, -1)
            probs = torch.softmax(logits[actions], -1)
            picks = actions[torch.multinomial(probs, per_prompt, replacement=True, generator=g)]
            out += [(qi, p, a, float(full[a])) for a in picks.tolist()]
    return out


@pytest.mark.slow
def test_reward_rises_on_a_task_the_tiny_model_can_learn():
    t0 = time.monotonic()
    learner = Learner(MODEL, LearnerConfig(lr=1e-3, micro_batch_size=64))
    tok = learner.tokenizer
    prompts = [tok.encode(f"Question {i}: pick a word.") for i in range(4)]
    words = [" red", " blue", " green", " cat", " dog", " sun", " moon", " tree"]
    actions = torch.tensor([tok.encode(w)[0] for w in words])
    targets = set(actions[:2].tolist())  # reward 1 for " red" or " blue": 1/4 at the start
    g = torch.Generator().manual_seed(1)
    history = []
    for _ in range(30):
        samples = sample_actions(learner.policy.lm, prompts, actions, 16, g)
        batch = [Trajectory(p, [a], [lp], float(a in targets), group_id=qi)
                 for qi, p, a, lp in samples]
        history.append(learner.train_step(batch)["reward_mean"])
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    print(f"reward first 5 steps {first:.3f}, last 5 {last:.3f}, "
          f"{time.monotonic() - t0:.1f}s: {' '.join(f'{r:.2f}' for r in history)}")
    assert last > 0.8 and last > first + 0.3


def test_set_lr_changes_the_rate_and_rejects_nonsense(learner):
    before = learner.optimizer.param_groups[0]["lr"]
    learner.set_lr(3e-4)
    assert {g["lr"] for g in learner.optimizer.param_groups} == {3e-4}
    with pytest.raises(ConfigError, match="learning rate"):
        learner.set_lr(0.0)
    learner.set_lr(before)
