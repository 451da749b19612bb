"""The watch after a promotion: once `rollback.window` of the promoted version's rows have
rewards, its live rewards are tested against the previous version replayed on the same
questions (paired: the cells both need are asked within the call budget, `cells`), or
against the previous version's own last live rewards (`rollback.test=welch`); a drop rolls
the registry back and hot-swaps the previous version in. Functions over the loop
(`loop.Retrainer`), which sequences them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ray_conductor.errors import ConfigError
from ray_conductor.online.reroll import RerollStats, judgeable
from ray_conductor.online.rewards import LoggedRow
from ray_conductor.online.state import Watch
from ray_conductor.online.stats import drop_test
from ray_conductor.online.trainer import Counterfactual, Trainer
from ray_conductor.online.verdict import watch_drop

REGISTRY = "registry:"


def watch(loop: Any, rows: list[LoggedRow], reg: Any, trainer: Trainer
           ) -> list[dict[str, Any]]:
    w, cfg, model = loop.state.watch, loop.cfg.rollback, loop.cfg.model
    if w is None:
        return []
    current = reg.promoted()
    if current is None or current.version != w.version:
        loop.state.watch = None
        return [loop.decisions.append("kept", model, version=w.tag, reason=(
            "the registry's promoted version changed outside the loop; watch ended"))]
    live = [r for r in rows if r.model == model and r.version == w.tag and r.time >= w.since]
    if len(live) < cfg.window:
        return []
    window = live[:cfg.window]
    loop.state.watch = None
    fell_back = None
    if cfg.test == "paired":
        paired, fell_back = paired_watch(loop, window, w, reg, trainer)
        if paired is not None:
            res, figures = paired
            return watch_verdict(loop, reg, w, res.passed, figures, (
                f"live reward of {w.tag} {figures['live_mean']:.4f} vs "
                f"{figures['previous_replayed_mean']:.4f} for {w.previous_tag} replayed "
                f"on the same {res.n} questions (p={res.p_value:.3g})"))
    mine = [r.reward for r in window]
    before = [r.reward for r in rows if r.model == model and r.version == w.previous_tag
              and r.time < w.since][-cfg.baseline:]
    extra = {"paired_skipped": fell_back} if fell_back else {}
    if len(before) < cfg.min_baseline:
        return [loop.decisions.append("kept", model, version=w.tag, reason=(
            f"only {len(before)} live rewards of {w.previous_tag}: nothing to compare"),
            mean_live=float(np.mean(mine)), **extra)]
    res = drop_test(mine, before, alpha=cfg.alpha, margin=cfg.margin)
    return watch_verdict(loop, reg, w, res.dropped, {"test": res.figures(), **extra}, (
        f"live reward of {w.tag} dropped: {res.mean_new:.4f} vs {res.mean_old:.4f} "
        f"(p={res.p_value:.3g})"))

def paired_watch(loop: Any, window: list[LoggedRow], w: Watch, reg: Any, trainer: Trainer
                  ) -> tuple[tuple[Any, dict[str, Any]] | None, str | None]:
    """The paired live test: on the window's judgeable questions, the promoted version's
    live reward (its served answer judged as the replay judges one, so feedback on
    another scale compares alike) against the previous version replayed on every
    worker's re-rolled answer. ((result, figures), None), or (None, why not)."""
    cfg = loop.cfg.rollback
    judged = list({r.key: r for r in judgeable(window)}.values())
    if len(judged) < cfg.min_paired:
        return None, (f"{len(judged)} judgeable questions of {len(window)}; the paired "
                      f"test needs rollback.min_paired={cfg.min_paired}")
    try:
        previous, promoted = reg.get(w.previous), reg.get(w.version)
    except (ConfigError, KeyError, OSError) as e:
        return None, f"version {w.previous_tag} cannot be loaded: {str(e)[:200]}"
    if previous.kind != promoted.kind:
        return None, (f"{w.previous_tag} is a {previous.kind} policy and {w.tag} a "
                      f"{promoted.kind} one: one trainer cannot replay both")
    t0 = time.perf_counter()
    cells = loop.cells()
    if loop.full_reroll:
        answers, stats = cells.answers(judged)
        data = Counterfactual([r for r in judged if r.key in answers], answers,
                              cells.workers)
    else:
        stats = RerollStats(rows=len(judged))
        answers = cells.known(judged, stats)
        calls0 = cells.round_calls
        data = cells.scorable(trainer, [Path(previous.path), Path(promoted.path)],
                              Counterfactual(judged, answers, cells.workers))
        stats.calls = cells.round_calls - calls0
    if len(data) < cfg.min_paired:
        return None, (f"only {len(data)} of {len(judged)} questions could be replayed "
                      f"exactly; the paired test needs {cfg.min_paired}")
    try:
        before = trainer.score(Path(previous.path), data)
        replayed = trainer.score(Path(promoted.path), data)
    except ConfigError as e:  # e.g. a worker the previous version plans with has left
        return None, f"{w.previous_tag} cannot be replayed: {str(e)[:200]}"
    verifier = loop.app.verifier()
    live = np.array([float(r.judge(r.answer, verifier)) - loop.penalty() * r.cost
                     for r in data.rows])
    res = watch_drop(before, live, alpha=cfg.alpha, margin=cfg.margin,
                     s=loop.test_settings())
    return (res, {"test_kind": "paired", "n": len(data), "window": len(window),
                  "live_mean": float(live.mean()),
                  "previous_replayed_mean": float(before.mean()),
                  "promoted_replayed_mean": float(replayed.mean()),
                  "test": res.figures(), "reroll": vars(stats),
                  "reroll_s": time.perf_counter() - t0}), None

def watch_verdict(loop: Any, reg: Any, w: Watch, dropped: bool, figures: dict[str, Any],
                   why: str) -> list[dict[str, Any]]:
    model = loop.cfg.model
    if not dropped:
        return [loop.decisions.append("kept", model, version=w.tag, previous=w.previous_tag,
                                      **figures)]
    t0 = time.perf_counter()
    back = reg.rollback(reason=why)
    tag = loop.app.swap(model, f"{REGISTRY}{reg.root}@{back.version}")
    loop.metrics.served_version(model, back.version)
    return [loop.decisions.append("rolled_back", model, version=tag, previous=w.tag,
                                  reason=why, **figures, wall_s=time.perf_counter() - t0)]
