"""The online loop, one round at a time (`Retrainer.round`), top to bottom:

1. read the traffic log's rewarded rows (`rewards`);
2. watch the last promotion: once `rollback.window` of its rows have rewards, replay the
   previous version on the same questions (their every-worker answers re-rolled) and test,
   paired and one-sided, whether the promoted version's live rewards are worse; worse: roll
   the registry back and hot-swap the previous version in (`rollback.test=welch`: against
   the previous version's own last live rewards instead);
3. trigger (`triggers`; also a worker's price changed since the last training, with
   `trigger.on_price_change`: its cached answers are re-priced, nothing is asked); then
   split the new questions by hashed key into training rows and the held-back slice,
   re-roll every worker's answer to them, to a sample of the replay buffer and to the
   anchor questions (`anchor`) at `rollout` priority (`reroll`), continue training the
   serving policy (`Trainer.improve`), roll candidate and serving policy out on the most
   recent held-back questions and run the paired test (`stats`): pass, publish and promote
   by hot-swap; fail, reject.

Each decision is logged with its figures (`decisions`). The app, the trainer and the log
reader are handed in (`ServeApp`, `LiteTrainer`, `read_traffic`), so the same loop runs in
the `retrain` command, in the `OnlineRetrainer` actor beside the app, and in tests.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ray_conductor.errors import ConductorError, ConfigError
from ray_conductor.online.anchor import Anchors, combined, load_anchors
from ray_conductor.online.config import RetrainConfig
from ray_conductor.online.cells import CellBroker, answer_prints, traffic_dollars
from ray_conductor.online.decisions import DecisionLog, Ledger, OnlineMetrics
from ray_conductor.online import drift
from ray_conductor.online.drift import first_call_z
from ray_conductor.online.reroll import (AnswerCache, Reroller, judgeable, price_changed,
                                        price_tags, prices_of)
from ray_conductor.online.rewards import LoggedRow, held_back, reward_range, rewarded_rows
from ray_conductor.online.rows import choose
from ray_conductor.online.state import LoopState, Watch
from ray_conductor.online.trainer import Counterfactual, Trainer
from ray_conductor.online.triggers import Trigger
from ray_conductor.online.verdict import PairedSettings, promotion
from ray_conductor.online.watch import watch

log = logging.getLogger(__name__)
REGISTRY = "registry:"
TIERS = ("lite", "lm")
OUTPUTS = ("state_dir", "registry", "log_dir")  # resolved under `storage`


def place_outputs(cfg: RetrainConfig) -> None:
    """The loop's state, registry and traffic log as absolute paths under `storage`."""
    from ray_conductor.storage import place

    place(cfg, OUTPUTS, remote_ok=False, command="the online loop (its registry and state)")


def tier_trainer(cfg: RetrainConfig, penalty: float, kind: str) -> Trainer:
    """The trainer of a served version's tier: the lite conductor's PPO, or the LM
    conductor's GRPO (`lm_trainer`, which loads torch and the rl package only then)."""
    if kind == "lm":
        from ray_conductor.online.lm_trainer import LMTrainer

        return LMTrainer(cfg.training.lm, penalty, seed=cfg.training.seed)
    from ray_conductor.online.trainer import LiteTrainer

    return LiteTrainer(cfg.training, penalty)


def trained_penalty(pv: Any) -> float:
    """The dollar penalty the served version was trained with (its reward's exchange rate)."""
    if pv.kind == "lm":
        from ray_conductor.online.lm_trainer import lm_penalty

        return lm_penalty(pv.meta)
    from ray_conductor.lite.conductor import LiteConductor
    from ray_conductor.online.trainer import policy_penalty

    return policy_penalty(LiteConductor.load(pv.path))


class Retrainer:
    def __init__(self, cfg: RetrainConfig, app: Any, trainer: Callable[..., Trainer],
                 read: Callable[[str], Any] | None = None,
                 clock: Callable[[], float] = time.time):
        """`app`: a `ServeApp` (or its like); `trainer(cost_penalty, kind)` builds the
        trainer of the served version's kind (lite | lm); `read(log_dir)` returns the traffic
        log (default `read_traffic`)."""
        if read is None:
            from ray_conductor.serve.traffic import read_traffic

            read = read_traffic
        place_outputs(cfg)
        self.cfg, self.app, self.make_trainer, self.read, self.clock = (
            cfg, app, trainer, read, clock)
        fb = cfg.feedback
        if None not in (fb.reward_min, fb.reward_max) and fb.reward_min > fb.reward_max:
            raise ConfigError(f"feedback.reward_min={fb.reward_min:g} is above "
                              f"feedback.reward_max={fb.reward_max:g}")
        self.root = Path(cfg.state_dir)
        self.state = LoopState.load(self.root)
        self.decisions = DecisionLog(self.root / "decisions.jsonl", OnlineMetrics())
        self.decisions.total = Ledger(self.state.extra_calls, self.state.extra_dollars,
                                      self.state.traffic_dollars)
        self.metrics = self.decisions.metrics
        self._broker: CellBroker | None = None  # this round's cells under the budget
        self._pool: tuple[Any, dict[str, str]] | None = None  # this round's pool lookup
        age = cfg.reroll.max_age_hours
        self.cache = AnswerCache(self.root / "answers.jsonl", clock=clock,
                                 max_age_s=None if age is None else age * 3600.0)
        self.trigger = Trigger(cfg.trigger.every_rows, cfg.trigger.every_minutes,
                               cfg.trigger.min_rows)
        self._trainer: Trainer | None = None
        self._anchors: Anchors | None = None  # loaded on first use, per anchor config
        self._lock = threading.Lock()  # one round at a time (the actor also takes calls)

    @classmethod
    def over_app(cls, cfg: RetrainConfig) -> "Retrainer":
        """The loop over the running Serve app `cfg.app`, with the trainer of the served
        version's tier."""
        from ray_conductor.online.serving import ServeApp

        return cls(cfg, ServeApp(cfg.app, verifier=cfg.verifier),
                   lambda penalty, kind="lite": tier_trainer(cfg, penalty, kind))

    # -- one round ---------------------------------------------------------------------------
    def round(self, force: bool = False) -> list[dict[str, Any]]:
        """Watch, maybe train, evaluate and promote; returns the decisions made. A round that
        raises is recorded as `failed` with its cause (after whatever it did before, e.g.
        `adopted`), its unsaved state dropped (its rows count again next round), and the
        error raised on."""
        with self._lock:
            try:
                return self._round(force)
            except Exception as e:
                self.decisions.append("failed", self.cfg.model, reason=(
                    f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"))
                self.state = LoopState.load(self.root)
                raise

    def _round(self, force: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        self._broker = self._pool = None
        if self.state.started is None:
            self.state.started = self.clock()
        reg, pv = self._serving(out)
        trainer = self._trainer_for(pv)
        rows = self._rows(out)
        out += watch(self, rows, reg, trainer)  # the watch after a promotion
        self.metrics.live_rewards(self.cfg.model, rows, self.cfg.rollback.window)
        mine = set(self.learners())
        seen = {r.request_id for r in rows}
        done = set(self.state.consumed) & seen
        new = [r for r in rows if r.model in mine and r.request_id not in done]
        since = (self.clock() - (self.state.last_train or self.state.started)) / 60.0
        why = "forced" if force else self.trigger.why(len(new), since)
        prices, repriced = self._prices()
        if why is None and repriced and self.cfg.trigger.on_price_change:
            why = (f"the price of {', '.join(repriced)} changed (the cached answers are "
                   "re-priced)")
        busy = self.state.watch is not None and not self.cfg.train_while_watching
        if why and not busy:
            self.state.consumed = sorted(done | {r.request_id for r in new})
            self.state.last_train = self.clock()
            out += self._train_round(rows, new, reg, pv, trainer, why)
            self.state.prices = prices or self.state.prices
        elif self.state.prices is None:
            self.state.prices = prices
        self.state.rounds += 1
        t = self.decisions.total
        self.state.extra_calls, self.state.extra_dollars = t.calls, t.dollars
        self.state.save(self.root)
        self.metrics.publish(self.cfg.app, self.cfg.model, t, self.decisions.pending)
        return out

    def _prices(self) -> tuple[dict[str, str] | None, list[str]]:
        """Price fingerprints now and who was repriced since the last training (None, [])."""
        try:
            now = price_tags(prices_of(self._rollout_pool()[0].workers()))
        except Exception as e:  # noqa: BLE001 - the watch's decisions this round stand
            log.warning("worker prices unavailable this round: %s: %s", type(e).__name__, e)
            return None, []
        return now, price_changed(now, self.state.prices or {})

    def _rollout_pool(self) -> tuple[Any, dict[str, str]]:
        """The app's rollout pool and answer prints, looked up once a round."""
        if self._pool is None:
            self._pool = self.app.rollout_pool()
        return self._pool

    def learners(self) -> list[str]:
        return [self.cfg.model, *[m for m in self.cfg.learn_from if m != self.cfg.model]]

    def _rows(self, out: list[dict[str, Any]]) -> list[LoggedRow]:
        """The rewarded rows of the traffic log; unreadable parts the reader moved aside, and
        posted rewards out of `feedback`'s range (ignored), are logged as decisions."""
        df = self.read(self.cfg.log_dir or self.app.log_dir())
        moved = list(getattr(df, "attrs", {}).get("quarantined") or [])
        if moved:
            out.append(self.decisions.append(
                "quarantined", self.cfg.model, files=moved, reason=(
                    f"{len(moved)} unreadable traffic log parts moved aside; the round goes on "
                    "with the rest")))
        lo, hi = reward_range(self.cfg.feedback, self.app)
        ignored: list[str] = []
        rows = rewarded_rows(df, cost_penalty=self.penalty(), verifier=self.app.verifier(),
                             models={*self.learners()},
                             correct_threshold=self.cfg.correct_threshold,
                             answer_format=self.cfg.answer_format, reward_range=(lo, hi),
                             ignored=ignored)
        if len(ignored) > self.state.ignored_rewards:
            out.append(self.decisions.append(
                "quarantined", self.cfg.model, rows=len(ignored) - self.state.ignored_rewards,
                request_ids=ignored[self.state.ignored_rewards:][:20], reason=(
                    f"posted rewards outside [{lo:g}, {hi:g}] ignored")))
        self.state.ignored_rewards = len(ignored)
        self.state.rewarded_rows = max(self.state.rewarded_rows, len(rows))  # earns the budget
        paid = traffic_dollars(df, set(self.learners()))
        if paid > self.state.traffic_dollars:
            self.decisions.spend(traffic_dollars=paid - self.state.traffic_dollars)
            self.state.traffic_dollars = paid
        return rows

    def penalty(self) -> float:
        assert self.state.cost_penalty is not None
        return self.state.cost_penalty

    # -- the serving policy and its registry -------------------------------------------------
    def _serving(self, out: list[dict[str, Any]]) -> tuple[Any, Any]:
        """The registry behind the served model and its served version; a served `lite:DIR`
        is first published as the registry's version and swapped to (`adopted`)."""
        from ray_conductor.policy.registry import PolicyRegistry, resolve_policy

        ref = self.app.reference(self.cfg.model)
        if ref.startswith("lite:"):
            out.append(self._adopt(ref))
            ref = self.app.reference(self.cfg.model)
        if not ref.startswith(REGISTRY):
            raise ConfigError(f"model {self.cfg.model!r} serves {ref!r}: online retraining "
                              "continues a policy in a registry (registry:DIR; a served "
                              "lite:DIR is adopted into one)")
        path, pv = resolve_policy(ref)
        if pv is None or pv.kind not in TIERS:
            raise ConfigError(f"model {self.cfg.model!r} serves {ref!r}, a policy of kind "
                              f"{getattr(pv, 'kind', '?')!r}; online retraining trains "
                              f"{' and '.join(TIERS)} policies")
        reg = PolicyRegistry(ref[len(REGISTRY):].rsplit("@", 1)[0])
        return reg, pv

    def _adopt(self, ref: str) -> dict[str, Any]:
        from ray_conductor.lite import default_policy_dir
        from ray_conductor.policy.registry import PolicyRegistry

        path = ref.split(":", 1)[1]
        path = str(default_policy_dir()) if path == "default" else path
        reg = PolicyRegistry(self.cfg.registry or self.root / "registry")
        pv = reg.publish(path, kind="lite", meta={"source": ref, "adopted_by": "online"})
        reg.promote(pv.version, reason=f"adopted {ref} for online retraining")
        tag = self.app.swap(self.cfg.model, f"{REGISTRY}{reg.root}@{pv.version}")
        return self.decisions.append("adopted", self.cfg.model, version=tag, source=ref,
                                     registry=str(reg.root))

    def _trainer_for(self, pv: Any) -> Trainer:
        """The served version's tier's trainer; the dollar penalty is fixed at the first
        round (`training.cost_penalty`, else the one the served policy was trained with)."""
        if self._trainer is None or getattr(self._trainer, "kind", pv.kind) != pv.kind:
            if self.state.cost_penalty is None:
                given = self.cfg.training.cost_penalty
                self.state.cost_penalty = float(given if given is not None
                                                else trained_penalty(pv))
            self._trainer = self.make_trainer(self.state.cost_penalty, kind=pv.kind)
        return self._trainer

    # -- train, evaluate, decide -------------------------------------------------------------
    def _train_round(self, rows: list[LoggedRow], new: list[LoggedRow], reg: Any, pv: Any,
                     trainer: Trainer, why: str) -> list[dict[str, Any]]:
        cfg, model, tr = self.cfg, self.cfg.model, self.cfg.training
        fresh = list({r.key: r for r in judgeable(new)}.values())  # the latest row per question
        latest = {r.key: r for r in judgeable(rows)}
        anchors = {r.key: r for r in self._anchor_rows()}
        held_anchors = {r.key: r for r in self._anchor_rows(held=True)}
        pick = choose([r.key for r in fresh], self.state.buffer, self.state.held, set(latest),
                      is_held=lambda k: held_back(k, cfg.evaluation.holdout),
                      buffer_rows=tr.buffer_rows, recent_rows=tr.recent_rows,
                      replay_ratio=tr.replay_ratio, eval_rows=cfg.evaluation.rows,
                      rng=np.random.default_rng(tr.seed + self.state.rounds),
                      anchors=list(anchors), held_anchors=list(held_anchors))
        self.state.buffer, self.state.held = pick.buffer, pick.held_keys
        look = {**held_anchors, **anchors, **latest}
        train, held = [look[k] for k in pick.train], [look[k] for k in pick.held]
        hanchors = [look[k] for k in pick.held_anchors]
        t0 = time.perf_counter()
        drifted, tested = self._drift(trainer, pv, fresh)
        head = [drifted] if drifted is not None else []
        cells = self.cells()
        workers = cells.workers
        if self.full_reroll:  # every worker's answer, first first (traffic before anchors)
            answers, stats = cells.answers(held + train + hanchors)
        else:
            answers, stats = cells.explore(trainer, Path(pv.path), train, held + hanchors,
                                           self.penalty())
        if self.full_reroll:  # complete rows only; budgeted: filled after training
            held, hanchors = ([r for r in rs if r.key in answers] for rs in (held, hanchors))
        held_cf = Counterfactual(held, answers, workers)
        anchor_cf = Counterfactual(hanchors, answers, workers)
        fetches = hasattr(trainer, "cells") and not self.full_reroll  # asks for its cells
        train_cf = Counterfactual([r for r in train if r.key in answers or fetches], answers,
                                  workers)
        counts = {"trigger": why, "new_rows": len(new), "new_questions": len(fresh),
                  "train_rows": len(train_cf), "replayed": len(pick.replay),
                  "anchor_rows": sum(k in answers for k in pick.anchors),
                  "held_anchor_rows": len(anchor_cf), "held_rows": len(held_cf),
                  "reroll": vars(stats), "reroll_s": time.perf_counter() - t0}
        if tested:
            counts["drift_z"] = tested
        if drifted is not None:
            counts["drifted"] = [d["worker"] for d in drifted["workers"]]
        if len(train_cf) < tr.min_rows or len(held_cf) < cfg.evaluation.min_rows:
            return head + [self.decisions.append("skipped", model, version=pv.tag, reason=(
                f"{len(train_cf)} training and {len(held_cf)} held-back questions with "
                f"{'every' if self.full_reroll else 'an observed'} worker's answer; need "
                f"{tr.min_rows} and {cfg.evaluation.min_rows}"), **counts)]
        out_dir = self.root / "candidates" / f"round-{self.state.rounds:05d}"
        if hasattr(trainer, "stale"):  # the prior's outcomes of these workers no longer hold
            trainer.stale = cells.stale()
        if hasattr(trainer, "cells"):  # a trainer that asks for cells itself (`fetch`)
            trainer.cells = cells
        cand_dir, figures = trainer.improve(Path(pv.path), train_cf, out_dir)
        out = head + [self.decisions.append("trained", model, version=pv.tag,
                                            candidate=str(cand_dir), **counts,
                                            training=figures)]
        share = cfg.evaluation.anchor_share if len(anchor_cf) else 0.0
        held_cf = cells.scorable(trainer, [Path(pv.path), cand_dir], held_cf, seed=tr.seed,
                                 budget=None if not share else
                                 int(cells.allowance() * (1 - share)))
        anchor_cf = cells.scorable(trainer, [Path(pv.path), cand_dir], anchor_cf, seed=tr.seed)
        if len(held_cf) < cfg.evaluation.min_rows and len(anchor_cf) < cfg.evaluation.min_rows:
            shutil.rmtree(cand_dir, ignore_errors=True)
            return out + [self.decisions.append("skipped", model, version=pv.tag, reason=(
                f"only {len(held_cf)} held-back questions"
                + (f" and {len(anchor_cf)} held-back anchors" if hanchors else "")
                + f" could be scored within the call budget; need "
                f"{cfg.evaluation.min_rows}"))]
        out += self._decide(reg, pv, trainer, cand_dir, held_cf, anchor_cf)
        return out

    def _drift(self, trainer: Trainer, pv: Any, rows: list[LoggedRow]
               ) -> tuple[dict[str, Any] | None, dict[str, float]]:
        """Workers whose answers changed with no config change to show it
        (`drift.first_call_z`: a worker's served answers in the round's new rows, as first
        calls, right `reroll.drift_z` standard errors more or less often than the serving
        policy's estimates for those questions). Such a worker's answer fingerprint gets a
        new epoch dated at the first of these rows: its cached answers from before (anchors
        included) are void and asked again within the budget, its old outcomes leave the
        prior (`stale`), as after a config change. A worker is tested again only once a
        policy trained after its last drift serves. Returns the `drifted` decision (None where
        nothing drifted) and every worker's z tested (the round's `trained` decision carries
        them as `drift_z`)."""
        r = self.cfg.reroll
        if self.full_reroll or r.drift_z is None or not rows or \
                not hasattr(trainer, "estimates"):
            return None, {}
        cells = self.cells()
        served = cells.rr.served(rows)
        if not served:
            return None, {}
        p, n, _, names = trainer.estimates(Path(pv.path), Counterfactual(rows, served,
                                                                        cells.workers))
        zs, found = drift.detect(first_call_z(rows, served, p, n, names, r.drift_min_cells),
                                 self.state.drift, pv.version, cells.rr.fingerprints,
                                 r.drift_z)
        if not found:
            return None, zs
        since = min(row.time for row in rows)
        drift.start_epochs(found, self.state.drift, cells.rr.fingerprints, self.cache, since,
                           pv.version)
        return self.decisions.append("drifted", self.cfg.model, version=pv.tag, workers=found,
                                     since=since, reason=drift.reason(found)), zs

    @property
    def full_reroll(self) -> bool:
        return self.cfg.reroll.calls_per_row is None

    def cells(self) -> CellBroker:
        """This round's cells under the budget (the pool is looked up once a round)."""
        if self._broker is None:
            pool, prints = self._rollout_pool()
            verifier = combined(self.app.verifier(),
                                self._anchors.data if self._anchors else None)
            r = self.cfg.reroll
            prints = drift.with_epochs(answer_prints(self.app, prints), self.state.drift,
                                       self.cache)  # changed without a config change
            rr = Reroller(pool, prints, self.cache, verifier,
                          concurrency=r.concurrency, timeout_s=r.timeout_s, reprice=r.reprice)
            self._broker = CellBroker(rr, list(pool.workers()), r, self.decisions,
                                      self.state.rewarded_rows)
        return self._broker

    def _anchor_rows(self, held: bool = False) -> list[LoggedRow]:
        """The anchor questions (`training.anchor`) to train on, or (`held`) the held-back
        ones to evaluate on (`evaluation.anchor_rows`); loaded once per pool spec."""
        a, e = self.cfg.training.anchor, self.cfg.evaluation
        if not a.pool or (held and not e.anchor_rows):
            return []
        self._anchors = load_anchors(a, e.anchor_rows, e.holdout,
                                     a.data_dir or self.app.config().data_dir, self._anchors)
        return self._anchors.held if held else self._anchors.train

    def _decide(self, reg: Any, pv: Any, trainer: Trainer, cand_dir: Path,
                held: Counterfactual, anchors: Counterfactual | None = None
                ) -> list[dict[str, Any]]:
        """Score both policies on held-back traffic (and anchors) and apply the verdict
        (`verdict.promotion`)."""
        model = self.cfg.model
        serving = candidate = np.zeros(0)  # none scored within the budget: the anchors decide
        if len(held):
            serving, candidate = trainer.score(Path(pv.path), held), trainer.score(cand_dir,
                                                                                   held)
        a_serving = a_candidate = None
        if anchors is not None and len(anchors) >= self.cfg.evaluation.min_rows:
            a_serving, a_candidate = (trainer.score(Path(pv.path), anchors),
                                      trainer.score(cand_dir, anchors))
        v = promotion(serving, candidate, self.test_settings(), a_serving, a_candidate)
        if len(serving):
            self.metrics.eval_reward(model, "serving", float(serving.mean()))
            self.metrics.eval_reward(model, "candidate", float(candidate.mean()))
        out = [self.decisions.append("evaluated", model, version=pv.tag, **v.figures)]
        if v.passed_by is None:
            shutil.rmtree(cand_dir, ignore_errors=True)
            return out + [self.decisions.append("rejected", model, version=pv.tag,
                                                reason=v.reason, **v.figures)]
        return out + [self._promote(reg, pv, cand_dir, v.figures, trainer, v.reason)]

    def test_settings(self) -> PairedSettings:
        return PairedSettings.of(self.cfg.evaluation, self.cfg.training.seed)

    def _promote(self, reg: Any, pv: Any, cand_dir: Path, figures: dict[str, Any],
                 trainer: Trainer, reason: str) -> dict[str, Any]:
        model, t0 = self.cfg.model, time.perf_counter()
        keep = trainer.meta(cand_dir) if hasattr(trainer, "meta") else {}
        new = reg.publish(cand_dir, kind=getattr(trainer, "kind", pv.kind),
                          meta={"parent": pv.version, **keep, **figures})
        reg.promote(new.version, reason=reason, figures=figures)
        try:
            tag = self.app.swap(model, f"{REGISTRY}{reg.root}@{new.version}")
        except ConductorError as e:
            reg.rollback(reason=f"the hot-swap to {new.tag} failed: {e}")
            return self.decisions.append("failed", model, version=pv.tag, candidate=new.tag,
                                         reason=f"hot-swap failed: {e}")
        shutil.rmtree(cand_dir, ignore_errors=True)  # the registry holds its copy
        self.state.watch = Watch(new.version, new.tag, pv.version, pv.tag, self.clock())
        self.metrics.served_version(model, new.version)
        return self.decisions.append("promoted", model, version=tag, previous=pv.tag,
                                     reason=reason, swap_s=time.perf_counter() - t0, **figures)

    # -- a growing pool ----------------------------------------------------------------------
    def grow(self, workers: list[Any]) -> dict[str, Any]:
        """The pool is about to gain `workers` (`WorkerInfo`s): publish and promote the served
        policy grown to know them (it calls them only once a round has trained on them), so
        the app can be redeployed with the bigger pool without retraining from scratch. Call
        it before the redeploy: the grown policy does not load on the old pool."""
        from ray_conductor.online.grow import publish_grown

        with self._lock:
            reg, pv = self._serving([])
            out, names, reason = publish_grown(reg, pv, workers)
            self.state.watch = None
            self.state.save(self.root)
            return self.decisions.append("extended", self.cfg.model, version=out.tag,
                                         previous=pv.tag, reason=reason, workers=names)

    # -- running -----------------------------------------------------------------------------
    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Rounds every `poll_s` until `stop()` or `max_rounds`; a round that raises is
        logged (`failed`) and the loop goes on (a bad config raises at once)."""
        done = 0
        while not stop():
            try:
                self.round(force=self.cfg.force and done == 0)
            except ConfigError:
                raise
            except Exception:  # noqa: BLE001 - the loop outlives one bad round (`failed`)
                log.exception("online round failed")
            done += 1
            if self.cfg.max_rounds is not None and done >= self.cfg.max_rounds:
                return
            end = time.monotonic() + self.cfg.poll_s
            while time.monotonic() < end and not stop():
                time.sleep(min(1.0, self.cfg.poll_s))
