"""One round's (question, worker) cells under the call budget (`CellBroker`): what costs
nothing (served traces, the cache), exploration on the training rows (`explore`), the
cells a paired test needs to score both policies exactly (`scorable`), and the full
re-roll (`full`); every call is spent from the allowance (`explore.allowance`) and noted
in the decision log's ledger (the next decision carries it).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ray_conductor.data.splits import unit_hash
from ray_conductor.errors import DataError
from ray_conductor.online.decisions import DecisionLog
from ray_conductor.online.explore import allowance, changed_first, rank_cells, spread
from ray_conductor.online.reroll import Cells, Reroller, RerollStats, merge
from ray_conductor.online.rewards import LoggedRow
from ray_conductor.online.trainer import Counterfactual, Trainer


def answer_prints(app: Any, prints: dict[str, str]) -> dict[str, str]:
    """Each worker's answer fingerprint (what the cache is keyed by: a price change keeps
    it), from the app's worker pool config where it shows one; else `prints` as given. A
    `replay/` worker's is keyed by its recording (`recordings`), not the pool's file."""
    settings = getattr(app, "settings", None)
    if settings is None:
        return dict(prints)
    from ray_conductor.workers.config import answer_fingerprint, as_pool_config

    pool_cfg = as_pool_config(settings()["pool_config"])
    config = getattr(app, "config", None)
    digests = recordings(pool_cfg, config().data_dir if config else None)
    return {w.name: answer_fingerprint(w, pool_cfg.replay, digests.get(w.name))
            for w in pool_cfg.workers}


def recordings(pool_cfg: Any, data_dir: str | None) -> dict[str, str]:
    """worker name -> the digest of its recorded answers, for the `replay/` workers of a pool
    config (a pool that cannot be read: none, and the spec stays in the fingerprint). Each
    pool is read once per file version (`_digests`)."""
    from ray_conductor.data.pools import parse_spec

    out: dict[str, str] = {}
    by_spec: dict[str, dict[str, str]] = {}
    for w in pool_cfg.workers:
        spec = w.api_base or pool_cfg.replay
        if not w.model.startswith("replay/") or not spec:
            continue
        if spec not in by_spec:
            try:
                files = parse_spec(spec, data_dir)[1]
                stamp = tuple((str(f), f.stat().st_mtime_ns) for f in files)
                by_spec[spec] = _digests(spec, data_dir, stamp)
            except (DataError, OSError, ValueError):  # unreadable: the spec fingerprint
                by_spec[spec] = {}
        if (d := by_spec[spec].get(w.model.split("/", 1)[1])) is not None:
            out[w.name] = d
    return out


@functools.lru_cache(maxsize=8)
def _digests(spec: str, data_dir: str | None, stamp: tuple) -> dict[str, str]:
    """The pool's digests per model; `stamp` (its files' mtimes) keys a rewritten file anew."""
    from ray_conductor.data.pools import load_pool

    return load_pool(spec, data_dir).answer_digests()


def traffic_dollars(df: Any, models: set[str]) -> float:
    """What the answered requests of `models` in the traffic log cost."""
    if not len(df) or "cost" not in df or "model" not in df:
        return 0.0
    ok = df["model"].isin(models) & (df["status"] == 200 if "status" in df else True)
    return float(df.loc[ok, "cost"].fillna(0.0).sum())


class CellBroker:
    def __init__(self, rr: Reroller, workers: list[Any], cfg: Any, log: DecisionLog,
                 rewarded_rows: int):
        """`cfg`: the loop's `RerollConfig`; `rewarded_rows`: the rewarded traffic rows
        read so far (what the budget is earned by)."""
        self.rr, self.workers, self.cfg, self.log = rr, workers, cfg, log
        self.rewarded_rows, self.round_calls = rewarded_rows, 0
        self.fetched = RerollStats()  # what a trainer's `fetch`es got and cost this round
        self.fetch_left: int | None = None  # the calls a trainer's fetches may still make

    @property
    def full(self) -> bool:
        return self.cfg.calls_per_row is None

    def allowance(self) -> int:
        """Calls the loop may still make now: earned by rewarded rows (`calls_per_row`),
        less those spent, within this round's `calls_per_round`."""
        spent = self.log.total.calls + self.log.pending.calls
        return allowance(self.rewarded_rows, self.cfg.calls_per_row, spent,
                         cap=max(0, self.cfg.calls_per_round - self.round_calls))

    def spend(self, stats: RerollStats) -> None:
        self.round_calls += stats.calls
        self.log.spend(stats.calls, stats.dollars)

    def stale(self) -> set[str]:
        """Workers whose answer fingerprint changed while the loop ran (their answers from
        before, the serving policy's fit included, are another config's)."""
        fp = self.rr.fingerprints
        return {w for w in self.rr.workers if w in fp and self.rr.cache.since(w, fp[w]) > 0}

    def fetch(self, wanted: list[tuple[LoggedRow, str]], have: Cells | None = None) -> Cells:
        """The budgeted-cells API for a trainer (the LM tier's GRPO: a sampled plan whose
        step needs an unobserved cell): the `wanted` (question, worker) cells, most valuable
        first, cached ones free, within what is left of the allowance (and of the
        exploration share `explore` left to the trainer); the calls are spent and accounted
        (`fetched` keeps the round's sums). A cell not returned is out of budget (or a
        transient failure): that plan is not scored."""
        budget = self.allowance()
        if self.fetch_left is not None:
            budget = min(budget, self.fetch_left)
        got, st = self.rr.cells(wanted, budget, have)
        self.spend(st)
        if self.fetch_left is not None:
            self.fetch_left -= st.calls
        self.fetched.add(st, "calls", "dollars", "cached", "failed", "out_of_budget")
        return got

    def answers(self, rows: list[LoggedRow]) -> tuple[Cells, RerollStats]:
        """The full re-roll: every worker's answer, first rows first."""
        answers, stats = self.rr.answers(rows, self.allowance())
        self.spend(stats)
        return answers, stats

    def known(self, rows: list[LoggedRow], stats: RerollStats) -> Cells:
        """What costs nothing: the rows' served cells and their cached ones."""
        answers = self.rr.served(rows, stats)
        got, st = self.rr.cells([(r, w) for r in rows for w in self.rr.workers], 0, answers)
        stats.add(st, "cached", "repriced", "price_change_reasks", "expired")
        return merge(answers, got)

    def explore(self, trainer: Trainer, policy: Path, train: list[LoggedRow],
                evaluate: list[LoggedRow], penalty: float) -> tuple[Cells, RerollStats]:
        """The free cells of every row, then up to `explore_share` of the allowance on the
        training rows' most valuable unobserved cells (`explore.rank_cells`: from the
        policy's estimates where the trainer offers them, else one worker per row). A
        trainer that asks for cells itself (a `cells` attribute: the LM tier, whose sampled
        plans name the cells they need) is left that share for its `fetch`es instead.
        The cells of a worker whose answers changed (`stale`) or that nothing is known of
        (no observed neighbour behind any estimate: one that joined) come first
        (`explore.changed_first`)."""
        stats = RerollStats(rows=len(train) + len(evaluate))
        answers = self.known(train + evaluate, stats)
        budget = int(self.allowance() * self.cfg.explore_share)
        if hasattr(trainer, "cells"):
            self.fetch_left = budget
        elif budget > 0 and train:
            names = self.rr.workers
            if hasattr(trainer, "estimates"):
                p, n, cost, names = trainer.estimates(
                    policy, Counterfactual(train, answers, self.workers))
                seen = np.array([[w in answers.get(r.key, {}) for w in names] for r in train])
                ranked = rank_cells(p, n, cost, penalty, seen)
                unknown = {w for j, w in enumerate(names) if not np.asarray(n)[:, j].any()}
            else:
                ranked = [(i, j) for i, r in enumerate(train) for j, w in enumerate(names)
                          if w not in answers.get(r.key, {})]
                unknown = set()
            ranked = changed_first(ranked, names, self.stale() | unknown)
            got, st = self.rr.cells([(train[i], names[j]) for i, j in ranked], budget, answers)
            merge(answers, got)
            self.spend(st)
            stats.add(st, "calls", "dollars", "failed", "out_of_budget")
        stats.complete = len(answers)
        return answers, stats

    def scorable(self, trainer: Trainer, policies: list[Path], data: Counterfactual,
                 passes: int = 8, seed: int = 0, budget: int | None = None
                 ) -> Counterfactual:
        """The questions of `data` on which every step the `policies`' greedy rollouts take
        is observed (exact scores), after asking the unobserved cells they read within the
        allowance (each pass reveals the next step's cell). Without `trainer.needed`: the
        questions with every worker's answer. Full re-roll: `data`. `budget`: at most
        that many calls here (None: the allowance).

        The questions are walked in a random order (a hash of `seed` and the question's
        key: the same order every round, so the cells one round bought extend the next
        round's prefix instead of being scattered over it) and the result is the longest
        prefix of it that could be completed: a random sample of `data`, whether a question
        is in it does not depend on which cells a policy needs there. Keeping every question
        that needs nothing instead biases the paired test against a change: after a worker's
        answers change, its old cells are void, so the questions that need nothing are the
        ones where neither policy asks that worker, and a candidate that stops asking a
        degraded worker is judged only where the serving policy did not ask it either. The
        stopping rule (the prefix ends where the budget does) leaves a bias of order 1/n."""
        if self.full or not len(data):
            return data
        rows = sorted(data.rows, key=lambda r: unit_hash(f"scorable/{seed}/{r.key}"))
        kept: list[LoggedRow] = []
        pos, size, calls0 = 0, 4, self.round_calls
        stop = None if budget is None else calls0 + max(0, int(budget))

        def left() -> int:
            return self.allowance() if stop is None else min(self.allowance(),
                                                             stop - self.round_calls)
        while pos < len(rows):  # in chunks: a pass asks for a whole chunk's cells at once
            chunk = Counterfactual(rows[pos:pos + size], data.answers, data.workers)
            done = self._complete(trainer, policies, chunk, passes, left)
            kept += done.rows
            if len(done) < len(chunk):
                break
            pos += size
            per_row = (self.round_calls - calls0) / pos  # the next chunk: twice as long,
            size = 2 * size if per_row == 0 else max(  # or what the allowance left buys
                1, min(2 * size, int(left() / per_row)))
        keep = {r.key for r in kept}
        return Counterfactual([r for r in data.rows if r.key in keep], data.answers,
                              data.workers)

    def _complete(self, trainer: Trainer, policies: list[Path], view: Counterfactual,
                  passes: int, left: Callable[[], int]) -> Counterfactual:
        """The longest prefix of `view` whose needed cells `left()` calls could buy, in
        passes (each pass asks every question's next cells, in order)."""
        for _ in range(passes):
            need = self._need(trainer, policies, view)
            budget = left()
            if not need or budget <= 0:
                break
            wanted = [(r, w) for r in view.rows for w in sorted(need.get(r.key, ()))]
            got, st = self.rr.cells(wanted, budget, view.answers)
            merge(view.answers, got)
            self.spend(st)
            view = _prefix(view, need)
            if not st.calls and not got:
                break
        return _prefix(view, self._need(trainer, policies, view))

    def _need(self, trainer: Trainer, policies: list[Path], data: Counterfactual
              ) -> dict[str, set[str]]:
        """Per question key, the unobserved cells the `policies` read there."""
        need: dict[str, set[str]] = {}
        if not len(data):
            return need
        if hasattr(trainer, "needed"):
            for p in policies:
                for k, ws in trainer.needed(p, data).items():
                    need.setdefault(k, set()).update(ws)
            return need
        need = {r.key: set(self.rr.workers) - set(data.answers.get(r.key, {}))
                for r in data.rows}
        return {k: v for k, v in need.items() if v}


def _prefix(view: Counterfactual, need: dict[str, set[str]]) -> Counterfactual:
    """`view` up to its first question with a cell in `need` still unobserved."""
    for i, r in enumerate(view.rows):
        if any(w not in view.answers.get(r.key, {}) for w in need.get(r.key, ())):
            return Counterfactual(view.rows[:i], view.answers, view.workers)
    return view
