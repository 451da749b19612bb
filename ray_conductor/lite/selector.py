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

Partial-information rows (`LiteTable.observed`: a served trace holds the answers of the few
workers its workflow called, a budgeted re-roll a few more). The estimator counts only
observed outcomes: with o_nk = 1 where program k's answer on fit question n is known,

    p_k(x) = (sum_{n in NN(x)} o_nk s_nk + shrink * r_k) / (sum_{n in NN(x)} o_nk + shrink),
    r_k = sum_n o_nk s_nk / sum_n o_nk,

(complete rows: o = 1, the estimator above). A program is observed on a row when the cells
it reads are (a cascade's third worker only where the first two disagree); its mean cost is
over the rows where it is observed. How biased: the cells were not missing at random. The
serving policy chose which workers to call from the very features the neighbourhood is
taken in, so within a neighbourhood the observed rows are those the policy sent to that
worker; where the policy's choice varies inside a neighbourhood on something that also
predicts correctness, the estimate is biased (e.g. the second and third workers of a
cascade are observed mostly where the first two disagreed, on harder questions: their
estimates are biased low). Inverse-propensity weights cannot correct this: the served
policy is near-deterministic, its propensities are ~0 or ~1, and the weights' variance is
unbounded. What corrects it instead, explicitly: (1) the estimate is conditional on the
features (a k-neighbourhood), so selection that depends on the features alone (missing at
random given x) leaves each local average unbiased up to the neighbourhood's width; (2)
shrinkage toward the worker's overall observed rate bounds a sparse neighbourhood's error;
(3) the loop's budgeted exploration asks the cells whose estimate is most uncertain and
could change the choice (`online.explore`), which are the cells the selection starves; and
(4) a policy is promoted only on a paired test on held-back questions whose every step it
takes is an observed cell (no estimate enters the verdict). What remains is stated, not
removed: conditioning on served answers (cascades) is selection on an outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ray_conductor.config import opt
from ray_conductor.lite.net import Projection
from ray_conductor.lite.programs import Program, library, outcomes
from ray_conductor.lite.table import NO_ANSWER, LiteTable


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
                 shrink: float = 0.0, seen: np.ndarray | None = None):
        self.programs, self.projection = programs, projection
        self.keys = np.asarray(keys, np.float32)  # [N, dim] unit vectors of the fit questions
        self.success = np.asarray(success, bool)  # [N, L] recorded outcome of each program
        # [N, L] which outcomes are known (None: all); unknown ones count for nothing
        self.seen = None if seen is None or np.all(seen) else np.asarray(seen, bool)
        self.mean_cost = np.asarray(mean_cost, np.float64)
        self.k, self.penalty = min(int(k), len(self.keys)), float(penalty)
        self.shrink = float(shrink)
        hits, n = self._hits(), self._seen().sum(axis=0)
        self.base_rate = hits.sum(axis=0) / np.maximum(n, 1)

    def _seen(self) -> np.ndarray:
        return np.ones(self.success.shape, bool) if self.seen is None else self.seen

    def _hits(self) -> np.ndarray:
        return self.success if self.seen is None else self.success & self.seen

    def evidence(self, emb: np.ndarray, leave_one_out: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
        """([B, L] predicted correctness, [B, L] observed neighbours behind each estimate).
        `leave_one_out`: `emb` are the fit questions themselves, in order, and each row
        ignores itself (honest estimates on train)."""
        sims = _unit(self.projection(emb)) @ self.keys.T
        k = self.k
        if leave_one_out:
            np.fill_diagonal(sims, -np.inf)
            k = min(k, len(self.keys) - 1)
        hits, seen = self._hits(), self._seen()
        num = np.empty((len(sims), self.success.shape[1]), np.float64)
        den = np.empty_like(num)
        for lo in range(0, len(sims), 1024):  # bounded memory for big batches
            s = sims[lo : lo + 1024]
            nn = np.argpartition(-s, k - 1, axis=1)[:, :k]
            num[lo : lo + 1024] = hits[nn].sum(axis=1)
            den[lo : lo + 1024] = seen[nn].sum(axis=1)
        base = self.base_rate[None, :]
        if leave_one_out:  # the train-wide rate without the row itself, too
            n = seen.sum(axis=0)
            base = (self.base_rate * n - hits) / np.maximum(n - seen, 1)
        probs = (num + self.shrink * base) / np.maximum(den + self.shrink, 1e-9)
        probs = np.where(den + self.shrink > 0, probs, base)
        return probs.astype(np.float32), den

    def probs(self, emb: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
        """[B, L] predicted correctness (`evidence`'s first part)."""
        return self.evidence(emb, leave_one_out)[0]

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
        if self.seen is not None:
            arrays["seen"] = np.packbits(self.seen, 1)
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "Selector":
        programs = [Program(tuple(w)) for w in meta["programs"]]
        proj = Projection.from_state({k.split(".", 1)[1]: v for k, v in arrays.items()
                                      if k.startswith("projection.")})
        success = np.unpackbits(arrays["success"], 1, count=len(programs)).astype(bool)
        seen = arrays.get("seen")
        if seen is not None:
            seen = np.unpackbits(np.asarray(seen, np.uint8), 1, count=len(programs)).astype(bool)
        return cls(programs, proj, arrays["keys"].astype(np.float32), success,
                   np.array(meta["mean_cost"]), meta["k"], meta["penalty"], meta["shrink"],
                   seen)


def choose(probs: np.ndarray, mean_cost: np.ndarray, penalty: float) -> np.ndarray:
    return (probs - penalty * mean_cost[None, :]).argmax(axis=1)


def fit_selector(table: LiteTable, *, max_calls: int = 4, cost_penalty: float = 0.0,
                 cfg: SelectorConfig | None = None) -> Selector:
    """The supervised per-question selector over `table` (train rows; features are the raw
    question embeddings)."""
    cfg = cfg or SelectorConfig()
    programs = library(table, max_calls if cfg.cascades else 1)
    success, cost = outcomes(table, programs)
    seen = program_seen(table, programs)
    proj = Projection.fit(table.features, cfg.dim, whiten=False)
    keys = _unit(proj(table.features))
    k = max(1, min(cfg.k, len(table) // 8))  # small pools: neighbours, not the whole pool
    return Selector(programs, proj, keys, success, observed_mean(cost, seen), k, cost_penalty,
                    cfg.shrink, seen)


def program_seen(table: LiteTable, programs: list[Program]) -> np.ndarray:
    """[Q, L] whether each program's outcome on each row is known from observed cells: a
    single worker's cell; a cascade's first two, and its third where they disagree."""
    o = table.seen
    out = np.zeros((len(table), len(programs)), bool)
    for j, p in enumerate(programs):
        if len(p.workers) == 1:
            out[:, j] = o[:, p.workers[0]]
            continue
        a, b, c = p.workers
        agree = (table.answers[:, a] != NO_ANSWER) & (table.answers[:, a] == table.answers[:, b])
        out[:, j] = o[:, a] & o[:, b] & (agree | o[:, c])
    return out


def observed_mean(cost: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Each program's mean cost over the rows where it is observed; a program observed
    nowhere costs the most any observed one does (never chosen for being unknown)."""
    n = seen.sum(axis=0)
    mean = np.where(n > 0, (cost * seen).sum(axis=0) / np.maximum(n, 1), np.nan)
    fill = np.nanmax(mean) if np.isfinite(mean).any() else 0.0
    return np.where(np.isfinite(mean), mean, fill)


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


def update_selector(old: Selector, table: LiteTable, stale: set[int]) -> Selector:
    """`old`'s fit rows plus `table`'s partial-information rows (over `old`'s programs; the
    table's first workers are `old`'s): what a price change or a few hundred new questions
    teach without discarding the thousands the prior was fit on. An old row's outcome of a
    program that calls a `stale` worker (its answers changed since: a new model, a new
    pool) no longer counts; every other old outcome still holds, since a price is not an
    answer. A new row counts for such a program only where all its cells are observed:
    a cascade ending in a stale worker would otherwise count on the rows where its first
    two agree (answered without the stale one, mostly right) and not where they disagree
    (the stale cell unasked), an estimate selected on its outcome. Program costs are the
    old ones scaled by each worker's observed price ratio (its mean cost on the new rows
    over its old single-call mean; 1 where unobserved), so a price rise shows at once. The
    new rows are not left out of their own estimates (one of `k` neighbours: stated, not
    corrected)."""
    programs = old.programs
    success, _cost = outcomes(table, programs)
    seen = program_seen(table, programs)
    old_seen = old._seen().copy()
    for j, p in enumerate(programs):
        if stale & set(p.workers):
            old_seen[:, j] = False
            seen[:, j] &= table.seen[:, list(p.workers)].all(axis=1)
    single = {p.workers[0]: j for j, p in enumerate(programs) if len(p.workers) == 1}
    o = table.seen
    ratio = np.ones(len(table.workers))
    for w, j in single.items():
        n = o[:, w].sum()
        if n >= 3 and old.mean_cost[j] > 0:
            ratio[w] = float((table.cost[:, w] * o[:, w]).sum() / n) / old.mean_cost[j]
    mean_cost = old.mean_cost.copy()
    for j, p in enumerate(programs):
        base = np.array([old.mean_cost[single[w]] if w in single else 0.0 for w in p.workers])
        if base.sum() > 0:
            mean_cost[j] = old.mean_cost[j] * float((base * ratio[list(p.workers)]).sum()
                                                    / base.sum())
    keys = np.vstack([old.keys, _unit(old.projection(table.features))])
    return Selector(programs, old.projection, keys, np.vstack([old.success, success]),
                    mean_cost, old.k, old.penalty, old.shrink, np.vstack([old_seen, seen]))
