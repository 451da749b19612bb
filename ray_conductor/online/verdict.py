"""The promotion verdict as a pure function over numbers (`promotion`), and the watch's
(`watch_drop`): the loop hands in per-question rewards, gets back what to do and why.

Promotion: the paired test on held-back traffic (candidate minus serving, one-sided, its
lower bound above `min_gain`); with at least `min_rows` held-back anchors the test is
two-sided in effect: a candidate passes on traffic only if it is not significantly worse on
the anchors (the guard: the same test the other way round, against `max_anchor_loss`), and
on the anchors only if it is better there and its mean gain on held-back traffic is not
negative. Held-back traffic short of `min_rows` (the call budget bought fewer) cannot pass
a candidate, but the anchors still can: the round is decided on them, with the few traffic
questions scored (none: no check) as the guard against a moved mix: they veto only a
candidate significantly worse on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_conductor.online.stats import paired_test


@dataclass
class PairedSettings:
    alpha: float = 0.05
    min_gain: float = 0.002
    method: str = "t"
    samples: int = 2000
    seed: int = 0
    min_rows: int = 30
    anchor_guard: bool = True
    max_anchor_loss: float = 0.0

    @classmethod
    def of(cls, evaluation: Any, seed: int) -> "PairedSettings":
        e = evaluation
        return cls(e.alpha, e.min_gain, e.test, e.bootstrap_samples, seed, e.min_rows,
                   e.anchor_guard, e.max_anchor_loss)


@dataclass
class Verdict:
    passed_by: str | None  # "traffic" | "anchors" | None (rejected)
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _test(diffs: np.ndarray, min_gain: float, s: PairedSettings) -> Any:
    return paired_test(diffs, alpha=s.alpha, min_gain=min_gain, method=s.method,
                       samples=s.samples, seed=s.seed)


def promotion(serving: np.ndarray, candidate: np.ndarray, s: PairedSettings,
              anchor_serving: np.ndarray | None = None,
              anchor_candidate: np.ndarray | None = None) -> Verdict:
    """Rewards per held-back question of the serving policy and the candidate (and on the
    held-back anchors, if any): promote (by traffic, by anchors) or reject, with figures."""
    serving, candidate = np.asarray(serving, float), np.asarray(candidate, float)
    res = _test(candidate - serving, s.min_gain, s)
    scored = len(serving) > 0
    figures: dict[str, Any] = {"n": len(serving),
                               "serving_mean": float(serving.mean()) if scored else None,
                               "candidate_mean": float(candidate.mean()) if scored else None,
                               "test": res.figures()}
    passed_by = "traffic" if res.passed and len(serving) >= s.min_rows else None
    if anchor_serving is not None and anchor_candidate is not None \
            and len(anchor_serving) >= s.min_rows:
        aserving, acandidate = np.asarray(anchor_serving, float), np.asarray(anchor_candidate,
                                                                             float)
        ares = _test(acandidate - aserving, s.min_gain, s)
        figures["anchors"] = {"n": len(aserving), "serving_mean": float(aserving.mean()),
                              "candidate_mean": float(acandidate.mean()),
                              "test": ares.figures()}
        if s.anchor_guard:  # significantly worse on the anchors by more than allowed?
            worse = _test(aserving - acandidate, s.max_anchor_loss, s)
            figures["anchors"]["worse"] = worse.figures()
            if worse.passed and passed_by == "traffic":
                passed_by, figures["guarded"] = None, True
        if passed_by is None and ares.passed and not _traffic_veto(serving, candidate, res, s):
            passed_by = "anchors"
    figures["passed_by"] = passed_by
    return Verdict(passed_by, figures, _why(res, figures, s))


def _traffic_veto(serving: np.ndarray, candidate: np.ndarray, res: Any,
                  s: PairedSettings) -> bool:
    """Whether held-back traffic overrules the anchors (a moved question mix): with
    `min_rows` questions or more scored, a negative mean gain; with fewer (the budget bought
    only a few), only a candidate significantly worse there (a one-sided test the other way
    round): the sign of five questions' mean is a coin, not evidence."""
    if len(serving) == 0:
        return False
    if len(serving) >= s.min_rows:
        return res.mean < 0
    return bool(_test(serving - candidate, 0.0, s).passed)


def _why(res: Any, figures: dict[str, Any], s: PairedSettings) -> str:
    if figures["passed_by"] is not None:
        why = (f"held-back reward {figures['candidate_mean']:.4f} vs "
               f"{figures['serving_mean']:.4f}, lower bound of the gain {res.lcb:.4f} "
               f"(n={figures['n']})" if figures["n"] else "no held-back traffic scored")
        if figures["passed_by"] == "anchors":
            a = figures["anchors"]
            why += (f"; on {a['n']} held-back anchors {a['candidate_mean']:.4f} vs "
                    f"{a['serving_mean']:.4f}, lower bound of the gain "
                    f"{a['test']['lcb']:.4f}")
        return why
    why = (f"lower bound {res.lcb:.4f} of the mean gain {res.mean:.4f} is not above "
           f"min_gain {s.min_gain:g} (p={res.p_value:.3g}, n={res.n})")
    if res.passed and res.n < s.min_rows:
        why = (f"the held-back traffic gain {res.mean:.4f} is on only {res.n} questions "
               f"(min_rows {s.min_rows})")
    if figures.get("guarded"):
        why = f"the held-back traffic gain {res.mean:.4f} passed (lower bound {res.lcb:.4f}, n={res.n})"
    if "anchors" in figures:
        a = figures["anchors"]["test"]
        why += (f"; on {figures['anchors']['n']} held-back anchors the gain is "
                f"{a['mean']:.4f} (lower bound {a['lcb']:.4f})"
                + ((", but the traffic gain is negative" if res.n >= s.min_rows else
                    ", but it is significantly worse on the held-back traffic")
                   if a["passed"] else ""))
        if figures.get("guarded"):
            bound = -figures["anchors"]["worse"]["lcb"]
            why += (f", significantly worse than the serving policy (upper bound "
                    f"{bound:.4f} below -max_anchor_loss {s.max_anchor_loss:g})")
    return why


def watch_drop(previous_replayed: np.ndarray, live: np.ndarray, *, alpha: float,
               margin: float, s: PairedSettings) -> Any:
    """The paired watch: is the promoted version's live reward worse than the previous
    version replayed on the same questions (by more than `margin`)? A `PairedResult`
    whose `passed` means "dropped"."""
    return paired_test(np.asarray(previous_replayed, float) - np.asarray(live, float),
                       alpha=alpha, min_gain=margin, method=s.method, samples=s.samples,
                       seed=s.seed)
