"""The lite conductor's networks, plain torch: the policy/value MLPs and the fitted linear
projection of question embeddings. No Ray here, so serving loads a policy without RLlib."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

MASKED = torch.finfo(torch.float32).min  # a logit no softmax can pick, and not -inf (no NaN)


def mlp(n_in: int, hidden: Sequence[int], n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.Tanh()]
        n_in = h
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class LiteNet(nn.Module):
    """Separate policy and value MLPs over the observation vector; the policy's logits are
    masked so that illegal actions have probability exactly zero."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.obs_dim, self.n_actions, self.hidden = obs_dim, n_actions, list(hidden)
        self.pi = mlp(obs_dim, hidden, n_actions)
        self.vf = mlp(obs_dim, hidden, 1)
        nn.init.normal_(self.pi[-1].weight, std=0.01)  # near-uniform start over legal actions
        nn.init.zeros_(self.pi[-1].bias)

    def logits(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pi(obs).masked_fill(mask <= 0.5, MASKED)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.vf(obs).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Greedy actions for a batch of observations (the served policy is deterministic)."""
        logits = self.logits(torch.as_tensor(obs, dtype=torch.float32),
                             torch.as_tensor(mask, dtype=torch.float32))
        return logits.argmax(-1).numpy()


class Projection:
    """Centre embeddings and project them on their top principal directions, scaled to unit
    variance: fewer, evenly scaled inputs make the small policy learn faster and overfit less.
    `dim=0` keeps the raw embedding (centred only)."""

    def __init__(self, mean: np.ndarray, components: np.ndarray | None, scale: np.ndarray):
        self.mean, self.components, self.scale = mean, components, scale

    @classmethod
    def fit(cls, emb: np.ndarray, dim: int, whiten: bool = True) -> "Projection":
        """`whiten=False` keeps the principal directions' own scales (distances as in the
        embedding space, for nearest neighbours)."""
        emb = np.asarray(emb, np.float64)
        mean = emb.mean(axis=0)
        if dim <= 0 or dim >= emb.shape[1]:
            scale = np.full(emb.shape[1], max(emb.std(), 1e-6) if whiten else 1.0)
            return cls(mean.astype(np.float32), None, scale.astype(np.float32))
        _, s, vt = np.linalg.svd(emb - mean, full_matrices=False)
        comps = vt[:dim].T
        scale = s[:dim] / np.sqrt(max(len(emb) - 1, 1)) if whiten else np.ones(dim)
        return cls(mean.astype(np.float32), comps.astype(np.float32),
                   np.maximum(scale, 1e-6).astype(np.float32))

    @property
    def dim(self) -> int:
        return len(self.scale)

    def __call__(self, emb: np.ndarray) -> np.ndarray:
        x = np.asarray(emb, np.float32) - self.mean
        if self.components is not None:
            x = x @ self.components
        return (x / self.scale).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        out = {"mean": self.mean, "scale": self.scale}
        if self.components is not None:
            out["components"] = self.components
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "Projection":
        return cls(np.asarray(state["mean"], np.float32),
                   None if state.get("components") is None
                   else np.asarray(state["components"], np.float32),
                   np.asarray(state["scale"], np.float32))
