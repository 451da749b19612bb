"""`ProgramHead`: the conductor LM's plan chosen by a small read-out of its own hidden state.

Imitating the lite tier's programs stalls (benchmarks/lm_probe.py): the teacher's program is
barely predictable from the question text, so the LM learns its majority program. What the
LM's representation does carry is each program's chance of being right and its cost. A
`ProgramHead` is that read-out: two ridge regressions from the LM's mean-pooled last hidden
state over the question (`TransformersEngine.embed`) to each program's correctness and
dollar cost, fit on a pool's recorded answers, and the plan is the program with the highest
`correct - lam * cost`. The program is written as a workflow in the plan language, so it
runs, is traced and judged like any plan the LM writes.

Programs: a single worker, or a cascade `(a, b, c)`: ask a and b; only when their answers
differ ask c; vote (the lite tier's `Program`). The fit (`fit_head`) picks the ridge penalty
and lam by cross-validation on the training rows: the most accurate setting whose
out-of-fold cost stays under the budget. Pure numpy; the files are plain JSON and an .npz
read without pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ray_conductor.errors import ConfigError
from ray_conductor.workflow.model import Step, Workflow
from ray_conductor.workflow.programs import ANSWER_SUBTASK, ESCALATE_SUBTASK, VOTE, VOTE_SUBTASK

HEAD_JSON = "program_head.json"
HEAD_ARRAYS = "program_head.npz"
LAMBDAS = (0.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0)  # per dollar
ALPHAS = (1.0, 10.0, 100.0)  # ridge penalty per training row


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, ...]:
    """(mean, scale, weights, intercept) of a multi-output ridge regression: standardised
    inputs, an unpenalised intercept, penalty `alpha` per training row."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    a = (x - mu) / sd
    ym = y.mean(0)
    w = np.linalg.solve(a.T @ a + alpha * len(a) * np.eye(a.shape[1]), a.T @ (y - ym))
    return mu, sd, w, ym


def ridge(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, alpha: float) -> np.ndarray:
    """`ridge_fit` on (xtr, ytr), predicting xte."""
    mu, sd, w, ym = ridge_fit(xtr, ytr, alpha)
    return ((xte - mu) / sd) @ w + ym


def ridge_oof(x: np.ndarray, y: np.ndarray, folds: np.ndarray, alpha: float) -> np.ndarray:
    """Out-of-fold predictions of `ridge` over the folds."""
    out = np.zeros(y.shape, dtype=np.float64)
    for f in np.unique(folds):
        out[folds == f] = ridge(x[folds != f], y[folds != f], x[folds == f], alpha)
    return out


def choose(p_correct: np.ndarray, p_cost: np.ndarray, lam: float) -> np.ndarray:
    """Per row, the program with the highest predicted `correct - lam * cost`."""
    return np.argmax(p_correct - lam * p_cost, axis=1)


def judged(correct: np.ndarray, cost: np.ndarray, picks: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cost) of choosing program `picks[i]` on row i."""
    rows = np.arange(len(picks))
    return float(correct[rows, picks].mean()), float(cost[rows, picks].mean())


def select(x: np.ndarray, correct: np.ndarray, cost: np.ndarray, folds: np.ndarray,
           budget: float, alphas: Sequence[float] = ALPHAS,
           lambdas: Sequence[float] = LAMBDAS) -> dict[str, float]:
    """The (alpha, lam) with the best out-of-fold accuracy at a mean cost <= `budget` dollars
    per question (of settings equally accurate, the cheapest: on a few thousand rows exact
    ties are common); with none under the budget, the cheapest setting tried."""
    best: dict[str, float] | None = None
    cheapest: dict[str, float] | None = None
    for alpha in alphas:
        pc = ridge_oof(x, correct, folds, alpha)
        pk = ridge_oof(x, cost, folds, alpha)
        for lam in lambdas:
            acc, dollars = judged(correct, cost, choose(pc, pk, lam))
            row = {"alpha": float(alpha), "lam": float(lam), "cv_accuracy": acc,
                   "cv_cost": dollars}
            if dollars <= budget and (best is None or (acc, -dollars) >
                                      (best["cv_accuracy"], -best["cv_cost"])):
                best = row  # the most accurate; of equally accurate settings, the cheapest
            if cheapest is None or dollars < cheapest["cv_cost"]:
                cheapest = row
    assert cheapest is not None
    got = best if best is not None else {**cheapest, "over_budget": 1.0}
    return {**got, "cv_accuracy": round(got["cv_accuracy"], 4),
            "cv_cost": round(got["cv_cost"], 8)}


@dataclass
class ProgramHead:
    """Ridge read-outs of each program's correctness and cost from an LM feature row."""

    workers: list[str]  # the names programs refer to
    programs: list[tuple[str, ...]]  # (a,) or (a, b, c)
    mean: np.ndarray  # [D] input standardisation
    scale: np.ndarray  # [D]
    w_correct: np.ndarray  # [D, P]
    b_correct: np.ndarray  # [P]
    w_cost: np.ndarray  # [D, P]
    b_cost: np.ndarray  # [P]
    lam: float  # reward per dollar given up
    question_chars: int = 400  # the head reads the question's first N characters
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d, p = self.w_correct.shape
        shapes = {"mean": (self.mean.shape, (d,)), "scale": (self.scale.shape, (d,)),
                  "b_correct": (self.b_correct.shape, (p,)), "w_cost": (self.w_cost.shape, (d, p)),
                  "b_cost": (self.b_cost.shape, (p,))}
        bad = [f"{k} {tuple(got)} (want {want})" for k, (got, want) in shapes.items()
               if tuple(got) != want]
        if bad or len(self.programs) != p:
            raise ConfigError(f"program head: inconsistent shapes: {', '.join(bad) or ''}"
                              f"{len(self.programs)} programs for {p} outputs; refit it")
        for prog in self.programs:
            if len(prog) not in (1, 3) or len(set(prog)) != len(prog):
                raise ConfigError(f"program head: program {list(prog)} is neither one worker "
                                  "nor a cascade of three different workers; refit it")

    @property
    def dim(self) -> int:
        return int(self.w_correct.shape[0])

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted correctness and cost [N, P] per feature row."""
        a = (np.asarray(x, np.float64) - self.mean) / self.scale
        return a @ self.w_correct + self.b_correct, a @ self.w_cost + self.b_cost

    def choose(self, x: np.ndarray, offered: Sequence[str] | None = None,
               cascades: Sequence[bool] | None = None) -> np.ndarray:
        """Per feature row, the index of the program to run; programs calling a worker not in
        `offered` are never chosen (-1 where none is left). `cascades[i]` False: row i's
        answers cannot be compared (free text, code), so its vote could pick nothing; only a
        single worker is chosen there."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"program head reads {self.dim} features per question, got "
                              f"{x.shape}; it was fit on another model: refit it")
        pc, pk = self.predict(x)
        score = pc - self.lam * pk
        if offered is not None:
            have = set(offered)
            ok = np.array([all(w in have for w in p) and (len(p) == 1 or VOTE in have)
                           for p in self.programs])
            score = np.where(ok[None, :], score, -np.inf)
        if cascades is not None:
            single = np.array([len(p) == 1 for p in self.programs])
            allowed = np.asarray(cascades, dtype=bool)[:, None] | single[None, :]
            score = np.where(allowed, score, -np.inf)
        best = np.argmax(score, axis=1)
        return np.where(np.isfinite(score[np.arange(len(x)), best]), best, -1)

    def workflow(self, k: int) -> Workflow:
        """Program k in the plan language: a single step, or a, b, c-if-they-differ, vote."""
        prog = self.programs[k]
        if len(prog) == 1:
            return Workflow.single(prog[0], ANSWER_SUBTASK)
        a, b, c = prog
        return Workflow((Step(a, ANSWER_SUBTASK, ()), Step(b, ANSWER_SUBTASK, ()),
                         Step(c, ESCALATE_SUBTASK, "all", "disagree"),
                         Step(VOTE, VOTE_SUBTASK, "all")))

    def digest(self) -> str:
        """8 hex digits naming this head's programs, weights and price (a version tag)."""
        import hashlib

        h = hashlib.sha256(json.dumps([self.workers, [list(p) for p in self.programs],
                                       self.lam, self.question_chars]).encode())
        for a in (self.mean, self.scale, self.w_correct, self.b_correct, self.w_cost,
                  self.b_cost):
            h.update(np.ascontiguousarray(a, np.float64).tobytes())
        return h.hexdigest()[:8]

    def describe(self, k: int) -> str:
        p = self.programs[k]
        return p[0] if len(p) == 1 else f"{p[0]} and {p[1]} agree, else vote with {p[2]}"

    # -- files ---------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / HEAD_ARRAYS, mean=self.mean, scale=self.scale, w_correct=self.w_correct,
                 b_correct=self.b_correct, w_cost=self.w_cost, b_cost=self.b_cost)
        (out / HEAD_JSON).write_text(json.dumps(
            {"workers": self.workers, "programs": [list(p) for p in self.programs],
             "lam": self.lam, "question_chars": self.question_chars, "meta": self.meta},
            indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "ProgramHead":
        d = Path(directory)
        if not (d / HEAD_JSON).is_file() or not (d / HEAD_ARRAYS).is_file():
            raise ConfigError(f"conductor.head={str(directory)!r}: no {HEAD_JSON} and "
                              f"{HEAD_ARRAYS} there; fit one with `ray-conductor fit-head`")
        try:
            spec = json.loads((d / HEAD_JSON).read_text())
            with np.load(d / HEAD_ARRAYS, allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k], np.float64) for k in
                          ("mean", "scale", "w_correct", "b_correct", "w_cost", "b_cost")}
            return cls(workers=[str(w) for w in spec["workers"]],
                       programs=[tuple(str(w) for w in p) for p in spec["programs"]],
                       lam=float(spec["lam"]), question_chars=int(spec["question_chars"]),
                       meta=dict(spec.get("meta") or {}), **arrays)
        except ConfigError:
            raise
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise ConfigError(f"conductor.head={str(directory)!r} is unreadable ({type(e).__name__}"
                              f": {e}); refit it with `ray-conductor fit-head`") from None


def fit_head(x: np.ndarray, correct: np.ndarray, cost: np.ndarray, folds: np.ndarray,
             workers: Sequence[str], programs: Sequence[tuple[str, ...]], budget: float, *,
             question_chars: int = 400, meta: dict[str, Any] | None = None) -> ProgramHead:
    """A head fit on every row of (x, correct [N, P], cost [N, P]), its penalty and lam those
    `select` finds over `folds`."""
    x = np.asarray(x, np.float64)
    correct, cost = np.asarray(correct, np.float64), np.asarray(cost, np.float64)
    if len(x) != len(correct) or correct.shape != cost.shape or len(programs) != correct.shape[1]:
        raise ConfigError(f"fit_head: {len(x)} feature rows, correct {correct.shape}, cost "
                          f"{cost.shape}, {len(programs)} programs do not line up")
    if len(np.unique(folds)) < 2:
        raise ConfigError("fit_head needs at least two folds to choose its settings")
    chosen = select(x, correct, cost, folds, budget)
    mu, sd, wc, bc = ridge_fit(x, correct, chosen["alpha"])
    _, _, wk, bk = ridge_fit(x, cost, chosen["alpha"])
    return ProgramHead(list(workers), [tuple(p) for p in programs], mu, sd, wc, bc, wk, bk,
                       chosen["lam"], question_chars,
                       {**(meta or {}), "selection": chosen, "budget": budget, "rows": len(x)})
