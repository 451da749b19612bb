"""The supervised baseline: per question, pick the program (a single worker or a cascade) with
the best predicted correctness minus a dollar penalty.

A program's correctness on a new question is predicted as its recorded success rate on the
`k` most similar train questions (cosine over a PCA of the question embeddings), shrunk
toward its rate over all of train as if `shrink` more average questions were among the
neighbours. Both averages keep the argmax over hundreds of correlated programs from picking
the luckiest one: a per-program MLP did worse on the validation slice for exactly that
reason, and on a pool of a few hundred questions unshrunk neighbourhoods route worse than
the best single worker. Costs are each program's
mean train cost. Fitted leave-one-out, the same selector teaches the PPO policy
(behaviour cloning) and can feed it per-worker priors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ray_conductor.config import opt
from ray_conductor.lite.net import Projection
from ray_conductor.lite.programs import Program, library, outcomes
from ray_conductor.lite.table import LiteTable


@dataclass
class SelectorConfig:
    k: int = opt(300, "neighbours averaged per prediction (at most an eighth of the fit rows)",
                 min=1)
    dim: int = opt(32, "PCA dimensions of the embedding used for similarity", min=1, max=384)
    shrink: float = opt(300.0, "pseudo-neighbours at the program's train-wide rate", min=0)
    cascades: bool = opt(True, "offer cascades besides single workers (comparable answers "
                               "only)")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


class Selector:
    """Chooses a program per question: argmax_k p_k(x) - penalty * mean_cost_k."""

    def __init__(self, programs: list[Program], projection: Projection, keys: np.ndarray,
                 success: np.ndarray, mean_cost: np.ndarray, k: int, penalty: float = 0.0,
                 shrink: float = 0.0):
        self.programs, self.projection = programs, projection
        self.keys = np.asarray(keys, np.float32)  # [N, dim] unit vectors of the fit questions
        self.success = np.asarray(success, bool)  # [N, L] recorded outcome of each program
        self.mean_cost = np.asarray(mean_cost, np.float64)
        self.k, self.penalty = min(int(k), len(self.keys)), float(penalty)
        self.shrink, self.base_rate = float(shrink), self.success.mean(axis=0)

    def probs(self, emb: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
        """[B, L] predicted correctness. `leave_one_out`: `emb` are the fit questions
        themselves, in order, and each row ignores itself (honest estimates on train)."""
        sims = _unit(self.projection(emb)) @ self.keys.T
        k = self.k
        if leave_one_out:
            np.fill_diagonal(sims, -np.inf)
            k = min(k, len(self.keys) - 1)
        out = np.empty((len(sims), self.success.shape[1]), np.float32)
        for lo in range(0, len(sims), 1024):  # bounded memory for big batches
            s = sims[lo : lo + 1024]
            nn = np.argpartition(-s, k - 1, axis=1)[:, :k]
            out[lo : lo + 1024] = self.success[nn].sum(axis=1)
        base = self.base_rate[None, :]
        if leave_one_out:  # the train-wide rate without the row itself, too
            n = len(self.success)
            base = (self.base_rate * n - self.success) / max(n - 1, 1)
        return (out + self.shrink * base) / (k + self.shrink)

    def choose(self, emb: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
        p = self.probs(emb) if probs is None else probs
        return choose(p, self.mean_cost, self.penalty)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able settings, arrays)."""
        meta = {"programs": [list(p.workers) for p in self.programs],
                "mean_cost": self.mean_cost.tolist(), "k": self.k, "penalty": self.penalty,
                "shrink": self.shrink}
        arrays = {"keys": self.keys, "success": np.packbits(self.success, 1),
                  **{f"projection.{k}": v for k, v in self.projection.state().items()}}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "Selector":
        programs = [Program(tuple(w)) for w in meta["programs"]]
        proj = Projection.from_state({k.split(".", 1)[1]: v for k, v in arrays.items()
                                      if k.startswith("projection.")})
        success = np.unpackbits(arrays["success"], 1, count=len(programs)).astype(bool)
        return cls(programs, proj, arrays["keys"].astype(np.float32), success,
                   np.array(meta["mean_cost"]), meta["k"], meta["penalty"], meta["shrink"])


def choose(probs: np.ndarray, mean_cost: np.ndarray, penalty: float) -> np.ndarray:
    return (probs - penalty * mean_cost[None, :]).argmax(axis=1)


def fit_selector(table: LiteTable, *, max_calls: int = 4, cost_penalty: float = 0.0,
                 cfg: SelectorConfig | None = None) -> Selector:
    """The supervised per-question selector over `table` (train rows; features are the raw
    question embeddings)."""
    cfg = cfg or SelectorConfig()
    programs = library(table, max_calls if cfg.cascades else 1)
    success, cost = outcomes(table, programs)
    proj = Projection.fit(table.features, cfg.dim, whiten=False)
    keys = _unit(proj(table.features))
    k = max(1, min(cfg.k, len(table) // 8))  # small pools: neighbours, not the whole pool
    return Selector(programs, proj, keys, success, cost.mean(axis=0), k, cost_penalty,
                    cfg.shrink)


def penalty_for_budget(probs: np.ndarray, mean_cost: np.ndarray, budget: float,
                       iters: int = 50) -> float:
    """The smallest penalty whose choices cost at most `budget` dollars per query on these
    rows (bisection: mean chosen cost falls as the penalty rises)."""
    def spend(lam: float) -> float:
        return float(mean_cost[choose(probs, mean_cost, lam)].mean())

    if spend(0.0) <= budget:
        return 0.0
    lo, hi = 0.0, 1.0
    while spend(hi) > budget and hi < 1e9:
        hi *= 4
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if spend(mid) <= budget else (mid, hi)
    return hi
