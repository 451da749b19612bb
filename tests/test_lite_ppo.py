"""The Ray shell of the lite conductor: RLlib PPO over LiteEnv learns, the cost penalty reaches
every env copy, the RLModule masks, and `train_lite` runs end to end on a small real pool."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ray_conductor.lite.conductor import LiteConductor
from ray_conductor.lite.episode import n_actions, state_dim
from ray_conductor.lite.net import LiteNet, Projection
from ray_conductor.lite.table import LiteTable

from lite_toy import WORKERS, toy_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def greedy_reward(conductor: LiteConductor, table: LiteTable, penalty: float) -> float:
    r = conductor.rollout(table)
    return float(r.correct.mean() - penalty * r.cost.mean())


def test_rl_module_masks_illegal_actions():
    import gymnasium as gym
    from ray.rllib.core.columns import Columns

    from ray_conductor.lite.rllib_module import LiteRLModule

    space = gym.spaces.Dict({"observations": gym.spaces.Box(-1, 1, (6,), np.float32),
                             "action_mask": gym.spaces.Box(0, 1, (5,), np.float32)})
    module = LiteRLModule(observation_space=space, action_space=gym.spaces.Discrete(5),
                          model_config={"hidden": [8]})
    with torch.no_grad():  # make the illegal actions the net's favourites
        module.net.pi[-1].bias.copy_(torch.tensor([50.0, 0, 0, 50.0, 50.0]))
    mask = torch.tensor([[0, 1, 1, 0, 0]] * 64, dtype=torch.float32)
    out = module.forward_exploration({Columns.OBS: {"observations": torch.zeros(64, 6),
                                                    "action_mask": mask}})
    dist = torch.distributions.Categorical(logits=out[Columns.ACTION_DIST_INPUTS])
    samples = dist.sample((50,))
    assert set(samples.unique().tolist()) <= {1, 2}
    values = module.compute_values({Columns.OBS: {"observations": torch.zeros(3, 6),
                                                  "action_mask": mask[:3]}})
    assert values.shape == (3,)


@pytest.mark.slow
def test_tiny_ppo_improves_over_its_start(ray_cluster):
    from ray_conductor.lite.ppo import PPOSettings, build_ppo, net_state, set_cost_penalty

    table, penalty = toy_table(), 2.0
    proj = Projection.fit(table.features, 0)
    net = LiteNet(proj.dim + state_dim(3, 4), n_actions(3), [32])
    conductor = LiteConductor(WORKERS, [1.0, 2.0, 10.0], proj, net=net, cost_scale=0.1)
    settings = PPOSettings(train_batch_size=600, minibatch_size=150, num_epochs=8, lr=3e-3,
                           entropy_coeff=0.0, hidden=[32], num_envs_per_env_runner=8)
    algo = build_ppo(table.with_features(proj(table.features)), settings, max_calls=4,
                     cost_penalty=penalty, cost_scale=0.1, seed=0)
    try:
        conductor.net.load_state_dict(net_state(algo))
        start = greedy_reward(conductor, table, penalty)
        for _ in range(12):
            algo.train()
        conductor.net.load_state_dict(net_state(algo))
        end = greedy_reward(conductor, table, penalty)
        set_cost_penalty(algo, 7.5)
        seen = algo.env_runner_group.foreach_env_runner(
            lambda r: r.env.unwrapped.get_attr("cost_penalty"))
    finally:
        algo.stop()
    # best possible here ~0.98: cheap when feature 0 > 0 (free, right), else pricey
    assert end > start + 0.1 and end > 0.6, (start, end)
    assert all(p == 7.5 for runner in seen for p in runner)


def small_pool(tmp_path, n: int = 160):
    """The first `n` questions of the shipped demo pool, as a parquet pool."""
    import pyarrow.compute as pc

    from ray_conductor.data.pools import DEMO_PATH
    from ray_conductor.data.table import read_table, write_table

    table, report = read_table(DEMO_PATH)
    ids = pc.unique(table["query_id"]).to_pylist()[:n]
    small = table.filter(pc.is_in(table["query_id"], value_set=__import__("pyarrow").array(ids)))
    path = tmp_path / "small.parquet"
    write_table(small, path, report)
    return f"parquet:{path}"


@pytest.mark.slow
def test_train_lite_end_to_end(ray_cluster, tmp_path):
    import asyncio

    from ray_conductor.config import load
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.errors import ConfigError
    from ray_conductor.lite.train import LiteTrainConfig, pool_table, train_lite

    pool = small_pool(tmp_path)
    run_dir = tmp_path / "run"
    argv = [f"pool={pool}", f"run_dir={run_dir}", "iterations=2", "progress=false",
            "bc_warm_start=true", "bc_steps=50", "budget=0.001", "selector.k=20",
            "ppo.train_batch_size=256", "ppo.minibatch_size=128", "ppo.num_epochs=2",
            "ppo.hidden=[16]", "ppo.num_envs_per_env_runner=4", "projection_dim=8",
            "val_fraction=0.2", "check_rows=50"]
    summary = train_lite(load(LiteTrainConfig, argv))
    assert summary["iterations"] == 2 and summary["fit_rows"] + summary["val_rows"] > 100
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["iteration"] == 0 and "bc_agreement" in rows[0]  # the warm start
    assert [r["iteration"] for r in rows[1:]] == [1, 2]
    assert rows[2]["cost_penalty"] != rows[1]["cost_penalty"]  # budget mode moves it
    assert any((run_dir / "tb").iterdir())
    data = load_pool(pool)
    policy = LiteConductor.load(run_dir / "policy", data.worker_infos())
    assert policy.kind == "ppo" and policy.info["config"]["budget"] == 0.001
    assert LiteConductor.load(run_dir / "selector", data.worker_infos()).kind == "selector"
    # live runs through the replay pool score exactly what the offline rollout predicts
    queries = data.queries("test")
    results = asyncio.run(policy.run_batch(queries, ReplayPool(data)))
    offline = policy.rollout(pool_table(data, "test", policy.featurizer))
    for i, (q, (wf, trace)) in enumerate(zip(queries, results)):
        assert 1 <= len(wf) <= 5 and trace.steps[0].worker in policy.workers
        assert data.judge(q.query_id, trace.answer) == offline.correct[i]
        assert trace.cost == pytest.approx(offline.cost[i])
        assert tuple(policy.workers.index(w) for w in wf.workers if w != "vote") == \
            offline.workflows[i]
    with pytest.raises(ConfigError, match="already holds a trained lite policy"):
        train_lite(load(LiteTrainConfig, argv))
    with pytest.raises(ConfigError, match="never test"):
        train_lite(load(LiteTrainConfig, [*argv, "split=test", "overwrite=true"]))
