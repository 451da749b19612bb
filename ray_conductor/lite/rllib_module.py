"""The RLlib face of `LiteNet`: a torch RLModule for PPO on the new API stack that reads the
action mask from the Dict observation. The network inside is the plain `LiteNet`, so the
trained weights load into a served `LiteConductor` without RLlib."""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from ray_conductor.lite.net import LiteNet


class LiteRLModule(TorchRLModule, ValueFunctionAPI):
    """model_config: `hidden` (list of layer sizes) and optionally `init_state` (a LiteNet
    state dict as nested lists, e.g. behaviour-cloned weights to start PPO from)."""

    def setup(self):
        obs_dim = self.observation_space["observations"].shape[0]
        cfg = self.model_config or {}
        self.net = LiteNet(obs_dim, self.action_space.n, cfg.get("hidden", [256, 256]))
        if cfg.get("init_state"):
            self.net.load_state_dict({k: torch.as_tensor(v, dtype=torch.float32)
                                      for k, v in cfg["init_state"].items()})

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        return {Columns.ACTION_DIST_INPUTS: self.net.logits(obs["observations"],
                                                            obs["action_mask"])}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        return self.net.value(batch[Columns.OBS]["observations"])
