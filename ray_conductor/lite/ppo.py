"""The thin Ray shell: RLlib PPO (new API stack) over `LiteEnv`, built from `PPOSettings`.

Env runners and learners are the actor graph's `rllib_env_runner` and `rllib_learner` roles
(`graph.ppo_graph`: their count and resources from `PPOSettings`), which RLlib instantiates
from the settings the graph gives it, so the same job samples on one core here and on many
nodes of a cluster. Everything this module hands back is plain data: a
`LiteNet` state dict, metrics as floats.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ray_conductor.config import opt
from ray_conductor.lite.table import LiteTable

MODULE_ID = "default_policy"
_ENV_IDS = itertools.count()


@dataclass
class PPOSettings:
    train_batch_size: int = opt(4000, "env steps per iteration (per learner)", min=1)
    minibatch_size: int = opt(500, "env steps per gradient step (at most train_batch_size)",
                              min=1)
    num_epochs: int = opt(4, "passes over each batch", min=1)
    lr: float = opt(3e-4, "learning rate", gt=0, max=1)
    entropy_coeff: float = opt(0.01, "entropy bonus", min=0)
    clip_param: float = opt(0.2, "PPO clip range", gt=0)
    vf_loss_coeff: float = opt(0.5, "value loss weight", min=0)
    gamma: float = opt(1.0, "discount (episodes are a handful of steps: none)", min=0, max=1)
    lambda_: float = opt(0.95, "GAE lambda", min=0, max=1)
    hidden: list[int] = opt([256, 256], "hidden layer sizes of the policy and value MLPs",
                            nonempty=True, item_min=1)
    num_env_runners: int = opt(0, "sampling actors (0: sample in the driver process)", min=0)
    num_envs_per_env_runner: int = opt(64, "envs per runner (more envs, fewer forward "
                                           "passes per step)", min=1)
    num_cpus_per_env_runner: float = opt(1.0, "CPUs per sampling actor", min=0)
    num_learners: int = opt(0, "learner actors (0: update in the driver process)", min=0)
    num_cpus_per_learner: float = opt(1.0, "CPUs per learner", min=0)
    num_gpus_per_learner: float = opt(0.0, "GPUs per learner", min=0)


def build_ppo(table: LiteTable, settings: PPOSettings, *, max_calls: int, cost_penalty: float,
              cost_scale: float, seed: int, feature_noise: float | np.ndarray = 0.0,
              init_state: dict[str, torch.Tensor] | None = None, graph: Any = None):
    """A PPO `Algorithm` whose env runners sample episodes of `table` (features as the policy
    sees them). `init_state` starts the policy from given `LiteNet` weights. `graph`: the
    `GraphSpec` whose RLlib roles place the runners and learners (default: from
    `settings`)."""
    from ray_conductor.graph import ppo_graph
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    from ray_conductor.lite.env import LiteEnv
    from ray_conductor.lite.rllib_module import LiteRLModule

    env_id = f"ray_conductor_lite_{next(_ENV_IDS)}"
    register_env(env_id, lambda _ctx: LiteEnv(table, max_calls=max_calls,
                                              cost_penalty=cost_penalty, cost_scale=cost_scale,
                                              feature_noise=feature_noise))
    model_config: dict[str, Any] = {"hidden": list(settings.hidden)}
    if init_state is not None:
        model_config["init_state"] = {k: v.tolist() for k, v in init_state.items()}
    s = settings
    rllib = (graph if graph is not None else ppo_graph(s)).rllib_settings()
    config = (
        PPOConfig()
        .environment(env_id)
        .framework("torch")
        .env_runners(num_envs_per_env_runner=s.num_envs_per_env_runner,
                     **rllib["env_runners"])
        .learners(**rllib["learners"])
        .rl_module(rl_module_spec=RLModuleSpec(module_class=LiteRLModule,
                                               model_config=model_config))
        .training(train_batch_size_per_learner=s.train_batch_size,
                  minibatch_size=s.minibatch_size, num_epochs=s.num_epochs, lr=s.lr,
                  entropy_coeff=s.entropy_coeff, clip_param=s.clip_param,
                  vf_loss_coeff=s.vf_loss_coeff, gamma=s.gamma, lambda_=s.lambda_)
        .reporting(metrics_num_episodes_for_smoothing=200)
        .debugging(seed=seed, log_level="ERROR")
    )
    return config.build_algo()


def net_state(algo) -> dict[str, torch.Tensor]:
    """The learner's current `LiteNet` weights (the module's `net.` prefix removed)."""
    weights = algo.learner_group.get_weights([MODULE_ID])[MODULE_ID]
    return {k[len("net."):]: torch.as_tensor(np.asarray(v)) for k, v in weights.items()
            if k.startswith("net.")}


def set_cost_penalty(algo, value: float) -> None:
    """Change the reward's dollar penalty in every env of every env runner (budget mode)."""
    def apply(runner):
        runner.env.unwrapped.call("set_cost_penalty", float(value))

    algo.env_runner_group.foreach_env_runner(apply)


def iteration_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The few RLlib numbers worth logging per iteration, as plain floats."""
    runners = result.get("env_runners", {})
    learner = result.get("learners", {}).get(MODULE_ID, {})
    out = {
        "episode_return_mean": runners.get("episode_return_mean"),
        "episode_len_mean": runners.get("episode_len_mean"),
        "env_steps_lifetime": runners.get("num_env_steps_sampled_lifetime"),
        "policy_loss": learner.get("policy_loss"),
        "vf_loss": learner.get("vf_loss"),
        "entropy": learner.get("entropy"),
        "mean_kl": learner.get("mean_kl_loss"),
    }
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float, np.floating))}
