"""The lite conductor's pure core: episode rules, masking, rewards against a hand-computed
replay table, and the programs' bulk outcomes against stepping them one move at a time."""

from __future__ import annotations

import numpy as np
import pytest

from ray_conductor.lite.env import LiteEnv
from ray_conductor.lite.episode import Episode, state_dim
from ray_conductor.lite.programs import Program, library, outcomes, vote_rows
from ray_conductor.lite.table import NO_ANSWER, LiteTable
from ray_conductor.workflow.programs import plurality

N = NO_ANSWER


def hand_table(comparable: bool = True) -> LiteTable:
    """Workers: cheap (price 1), mid (2), pricey (10). Row 2's cheap worker has a hole."""
    answers = np.array([[0, 1, 1], [0, 0, 1], [N, 2, 3]], np.int32)
    correct = np.array([[0, 1, 1], [1, 1, 0], [0, 0, 1]], bool)
    cost = np.array([[0.001, 0.01, 0.1], [0.001, 0.01, 0.1], [0.0, 0.01, 0.1]])
    responded = np.array([[1, 1, 1], [1, 1, 1], [0, 1, 1]], bool)
    return LiteTable(["q0", "q1", "q2"], np.eye(3, dtype=np.float32), answers, correct, cost,
                     responded, ["cheap", "mid", "pricey"], np.array([1.0, 2.0, 10.0]),
                     comparable)


def play(env: LiteEnv, row: int, actions: list[int]) -> tuple[list[float], dict]:
    env.reset(options={"row": row})
    rewards, info = [], {}
    for i, a in enumerate(actions):
        _, r, done, _, info = env.step(a)
        rewards.append(r)
        assert done == (i == len(actions) - 1)
    return rewards, info


VOTE, STOP = 3, 4


@pytest.mark.parametrize("row,actions,expected", [
    (0, [0, STOP], [-0.002, 0.0]),  # the cheap worker alone is wrong
    (0, [0, 1, VOTE], [-0.002, -0.02, 1.0]),  # 1-1 tie: the stronger (mid) answer wins
    (0, [1, 2, STOP], [-0.02, -0.2, 1.0]),  # stop returns the last call's answer
    (1, [0, 1, 2, VOTE], [-0.002, -0.02, -0.2, 1.0]),  # 2-1 majority (cheap+mid, both right)
    (1, [2, STOP], [-0.2, 0.0]),
    (2, [0, STOP], [0.0, 0.0]),  # a hole: free, and no answer to return
    (2, [0, 1, VOTE], [0.0, -0.02, 0.0]),  # only mid answered: its (wrong) answer
    (2, [0, 1, 2, VOTE], [0.0, -0.02, -0.2, 1.0]),  # mid vs pricey tie: pricey wins
])
def test_rewards_match_the_table(row, actions, expected):
    env = LiteEnv(hand_table(), max_calls=4, cost_penalty=2.0)
    rewards, info = play(env, row, actions)
    assert rewards == pytest.approx(expected)
    assert info["calls"] == len(actions) - 1
    assert info["correct"] == (expected[-1] == 1.0)


def test_cost_penalty_can_change_between_episodes():
    env = LiteEnv(hand_table(), cost_penalty=2.0)
    env.set_cost_penalty(10.0)
    assert play(env, 0, [2, STOP])[0] == pytest.approx([-1.0, 1.0])


def test_mask_rules():
    ep = Episode([1.0, 2.0, 10.0], max_calls=2)
    assert ep.legal().tolist() == [True, True, True, False, False]  # no stop/vote before a call
    ep.record(1, "A", 0.01)
    assert ep.legal().tolist() == [True, False, True, False, True]  # no repeat, no 1-call vote
    ep.record(0, "B", 0.001)
    assert ep.legal().tolist() == [False, False, False, True, True]  # max_calls reached
    label = Episode([1.0, 2.0, 10.0], max_calls=4, comparable=False)
    label.record(0, None, 0.0, responded=False)  # a failed call: another worker may answer
    assert label.legal().tolist() == [False, True, True, False, True]
    label.record(1, "A", 0.0)  # an answer nothing can be weighed against: only stop
    assert label.legal().tolist() == [False, False, False, False, True]


def test_env_refuses_illegal_actions_and_reports_the_mask():
    env = LiteEnv(hand_table(), max_calls=3)
    obs, _ = env.reset(options={"row": 0})
    assert obs["action_mask"].tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="illegal action 4"):
        env.step(STOP)
    env.step(0)
    with pytest.raises(ValueError, match="illegal action 0"):
        env.step(0)


def test_label_tables_hide_answers():
    env = LiteEnv(hand_table(comparable=False), max_calls=3)
    obs, _ = env.reset(options={"row": 2})
    obs, *_ = env.step(0)  # row 2's cheap worker has a hole
    obs, *_ = env.step(1)
    assert obs["action_mask"].tolist() == [0, 0, 0, 0, 1]
    w = 3
    agrees = obs["observations"][3 + 2 * w: 3 + 3 * w]  # after 3 question features
    assert agrees.tolist() == [0, 0, 0]
    assert env.step(STOP)[1] == 0.0  # mid is wrong on row 2


def test_state_features_by_hand():
    ep = Episode([1.0, 2.0, 10.0], max_calls=4)
    ep.record(0, "A", 0.5)
    ep.record(2, "B", 1.5)
    ep.record(1, "B", 1.0)
    f = ep.features(cost_scale=2.0)
    assert len(f) == state_dim(3, 4)
    called, answered, agrees = f[0:3], f[3:6], f[6:9]
    steps, summary = f[9:14], f[14:]
    assert called.tolist() == [1, 1, 1] and answered.tolist() == [1, 1, 1]
    assert agrees.tolist() == [0, 1, 1]  # B (pricey, mid) leads
    assert steps.tolist() == [0, 0, 0, 1, 0]
    assert summary.tolist() == pytest.approx([2 / 4, 2 / 4, 2 / 3, 1, 1, 0, 1.5])


def random_table(seed: int, q: int = 300, w: int = 5) -> LiteTable:
    rng = np.random.default_rng(seed)
    answers = rng.integers(0, 3, (q, w)).astype(np.int32)
    responded = rng.random((q, w)) > 0.1
    answers[~responded | (rng.random((q, w)) < 0.1)] = NO_ANSWER  # holes, unreadable texts
    correct = responded & ((answers == 0) | ((answers == NO_ANSWER) & (rng.random((q, w)) < .3)))
    cost = np.where(responded, rng.random((q, w)) * np.arange(1, w + 1), 0.0)
    strength = rng.permutation(w).astype(float)
    return LiteTable([str(i) for i in range(q)], np.zeros((q, 2), np.float32), answers, correct,
                     cost, responded, [f"w{i}" for i in range(w)], strength, True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_program_outcomes_match_stepping_the_env(seed):
    table = random_table(seed)
    programs = library(table, max_calls=4)
    assert len(programs) == 5 + 10 * 3
    correct, cost = outcomes(table, programs)
    env = LiteEnv(table, max_calls=4, cost_penalty=0.0)
    for j in range(0, len(programs), 3):
        for row in range(0, len(table), 7):
            env.reset(options={"row": row})
            done, spent = False, 0.0
            while not done:
                a = programs[j].act(env.episode)
                spent = env.episode.cost
                _, r, done, _, info = env.step(a)
            assert bool(r) == correct[row, j], (programs[j], row)
            assert info["cost"] == pytest.approx(cost[row, j])
            assert spent == pytest.approx(cost[row, j])


def test_vote_rows_is_plurality():
    rng = np.random.default_rng(0)
    codes = rng.integers(-1, 3, (500, 4)).astype(np.int32)
    strength = np.array([3.0, 1.0, 3.0, 2.0])
    win = vote_rows(codes, strength)
    for row, got in zip(codes, win):
        want = plurality([None if c < 0 else int(c) for c in row], list(strength))
        assert got == (-1 if want is None else want)


def test_cascade_describes_itself():
    assert Program((0, 1, 2)).describe(["a", "b", "c"]) == "a and b agree, else vote with c"


def test_feature_noise_blurs_only_the_chosen_question_features():
    env = LiteEnv(hand_table(), feature_noise=[0.5, 0.0, 0.0], seed=0)
    a, _ = env.reset(options={"row": 1})
    b, _ = env.reset(options={"row": 1})
    assert a["observations"][0] != b["observations"][0]
    assert a["observations"][1:].tolist() == b["observations"][1:].tolist()
    assert a["observations"][1:3].tolist() == [1.0, 0.0]  # row 1 of the identity features
    env.step(0)  # later steps keep the episode's noisy question
    assert env._obs()["observations"][0] == b["observations"][0]


def test_selector_shrinks_neighbourhoods_toward_the_train_rate():
    from ray_conductor.lite.selector import SelectorConfig, fit_selector

    table = random_table(0, q=80)
    table.features = np.random.default_rng(0).normal(size=(80, 6)).astype(np.float32)
    raw = fit_selector(table, cfg=SelectorConfig(k=10, shrink=0.0))
    shrunk = fit_selector(table, cfg=SelectorConfig(k=10, shrink=30.0))
    rate = shrunk.success.mean(axis=0)
    p_raw, p = raw.probs(table.features[:5]), shrunk.probs(table.features[:5])
    assert np.allclose(p, (10 * p_raw + 30 * rate) / 40, atol=1e-6)
    loo = shrunk.probs(table.features, leave_one_out=True)  # a row never counts itself
    keys = shrunk.keys
    sims = keys @ keys.T
    np.fill_diagonal(sims, -np.inf)
    for row in (0, 41):
        nn = np.argsort(-sims[row])[:10]
        base = (rate * 80 - shrunk.success[row]) / 79
        want = (shrunk.success[nn].sum(axis=0) + 30 * base) / 40
        assert np.allclose(loo[row], want, atol=1e-5)
