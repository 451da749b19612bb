"""The two tests that decide: promote a candidate (paired, one-sided) and roll a promotion
back (two-sample, one-sided). Pure numpy and scipy (scipy comes with ray[rllib]).

Promotion is paired: candidate and serving policy are rolled out on the same held-back
questions, so each question's difference removes its difficulty from the comparison, and
the two near-deterministic policies agree on most questions (a difference of exactly 0),
which a paired test treats as the evidence it is. The candidate must beat the serving policy
by more than `min_gain` at level `alpha`: the one-sided lower confidence bound of the mean
difference must exceed `min_gain`. `t` is the paired t-test (the mean of n >= 30 bounded
differences is close to normal); `bootstrap` the percentile bootstrap of the same mean.

Rollback compares the live rewards of the promoted version with the previous version's last
live rewards (Welch's t: other requests, other variances), one-sided: did it get worse?
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

METHODS = ("t", "bootstrap")


@dataclass(frozen=True)
class PairedResult:
    """H1: mean(diff) > min_gain. `lcb`: the one-sided (1 - alpha) lower bound of the mean."""

    method: str
    n: int
    mean: float
    sd: float
    lcb: float
    p_value: float
    alpha: float
    min_gain: float
    passed: bool

    def figures(self) -> dict[str, Any]:
        return asdict(self)


def paired_test(diffs: Sequence[float], *, alpha: float = 0.05, min_gain: float = 0.0,
                method: str = "t", samples: int = 2000, seed: int = 0) -> PairedResult:
    """One-sided test that the paired differences (candidate - serving) have a mean above
    `min_gain`. Fewer than 2 differences never pass."""
    d = np.asarray(diffs, dtype=np.float64)
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    n = len(d)
    if n < 2:
        mean = float(d.mean()) if n else 0.0
        return PairedResult(method, n, mean, 0.0, -np.inf, 1.0, alpha, min_gain, False)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if method == "t":
        lcb, p = _t_bound(mean, sd, n, alpha, min_gain)
    else:
        lcb, p = _bootstrap_bound(d, alpha, min_gain, samples, seed)
    return PairedResult(method, n, mean, sd, lcb, p, alpha, min_gain, bool(lcb > min_gain))


def _t_bound(mean: float, sd: float, n: int, alpha: float, min_gain: float
             ) -> tuple[float, float]:
    from scipy import stats

    se = sd / np.sqrt(n)
    if se == 0.0:  # every difference the same: the mean is known exactly
        return mean, 0.0 if mean > min_gain else 1.0
    lcb = mean - float(stats.t.ppf(1.0 - alpha, n - 1)) * se
    return lcb, float(stats.t.sf((mean - min_gain) / se, n - 1))


def _bootstrap_bound(d: np.ndarray, alpha: float, min_gain: float, samples: int, seed: int
                     ) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(samples, len(d)))].mean(axis=1)
    return float(np.quantile(means, alpha)), float((means <= min_gain).mean())


@dataclass(frozen=True)
class DropResult:
    """H1: mean(new) < mean(old) - margin (the promoted version got worse)."""

    n_new: int
    n_old: int
    mean_new: float
    mean_old: float
    diff: float
    t: float
    df: float
    p_value: float
    alpha: float
    margin: float
    dropped: bool

    def figures(self) -> dict[str, Any]:
        return asdict(self)


def drop_test(new: Sequence[float], old: Sequence[float], *, alpha: float = 0.05,
              margin: float = 0.0) -> DropResult:
    """Welch's one-sided t-test that the new live rewards are below the old ones by more
    than `margin`. Needs at least 2 of each (else it never says "dropped")."""
    from scipy import stats

    a, b = np.asarray(new, np.float64), np.asarray(old, np.float64)
    na, nb = len(a), len(b)
    ma = float(a.mean()) if na else 0.0
    mb = float(b.mean()) if nb else 0.0
    if na < 2 or nb < 2:
        return DropResult(na, nb, ma, mb, ma - mb, 0.0, 0.0, 1.0, alpha, margin, False)
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
    se = float(np.sqrt(va + vb))
    gap = ma - mb + margin  # < 0 when the new version is worse by more than the margin
    if se == 0.0:
        return DropResult(na, nb, ma, mb, ma - mb, 0.0, float(na + nb - 2),
                          0.0 if gap < 0 else 1.0, alpha, margin, gap < 0)
    df = float((va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)))  # Welch-Satterthwaite
    t = gap / se
    p = float(stats.t.cdf(t, df))
    return DropResult(na, nb, ma, mb, ma - mb, float(t), df, p, alpha, margin, p < alpha)
