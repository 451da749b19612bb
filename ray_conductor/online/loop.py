"""The online loop, one round at a time (`Retrainer.round`), top to bottom:

1. read the traffic log's rewarded rows (`rewards`);
2. watch the last promotion: once `rollback.window` of its rows have rewards, compare their
   mean with the previous version's last live rewards (one-sided Welch test); worse: roll
   the registry back and hot-swap the previous version in;
3. trigger (`triggers`), then: split the new questions by hashed key into training rows
   and the held-back slice, re-roll every worker's answer to them, to a sample of the
   replay buffer and to the anchor questions (`anchor`) at `rollout` priority (`reroll`),
   continue training the serving policy
   (`Trainer.improve`), roll candidate and serving policy out on the most recent held-back
   questions and run the paired test (`stats`): pass, publish and promote by hot-swap;
   fail, reject.

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

from ray_conductor.errors import ConductorError, ConfigError, DataError
from ray_conductor.online.anchor import Anchors, anchor_rows, combined
from ray_conductor.online.config import RetrainConfig
from ray_conductor.online.decisions import DecisionLog, OnlineMetrics
from ray_conductor.online.reroll import AnswerCache, Reroller, judgeable
from ray_conductor.online.rewards import LoggedRow, held_back, rewarded_rows
from ray_conductor.online.state import LoopState, Watch, remember
from ray_conductor.online.stats import drop_test, paired_test
from ray_conductor.online.trainer import Counterfactual, Trainer
from ray_conductor.online.triggers import Trigger

log = logging.getLogger(__name__)
REGISTRY = "registry:"


class Retrainer:
    def __init__(self, cfg: RetrainConfig, app: Any, trainer: Callable[[float], Trainer],
                 read: Callable[[str], Any] | None = None,
                 clock: Callable[[], float] = time.time):
        """`app`: a `ServeApp` (or its like); `trainer(cost_penalty)` builds the tier's
        trainer; `read(log_dir)` returns the traffic log (default `read_traffic`)."""
        if read is None:
            from ray_conductor.serve.traffic import read_traffic

            read = read_traffic
        self.cfg, self.app, self.make_trainer, self.read, self.clock = (
            cfg, app, trainer, read, clock)
        self.root = Path(cfg.state_dir)
        self.state = LoopState.load(self.root)
        self.decisions = DecisionLog(self.root / "decisions.jsonl", OnlineMetrics())
        self.metrics = self.decisions.metrics
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
        """The loop over the running Serve app `cfg.app`, with the lite tier's trainer."""
        from ray_conductor.online.serving import ServeApp
        from ray_conductor.online.trainer import LiteTrainer

        return cls(cfg, ServeApp(cfg.app, verifier=cfg.verifier),
                   lambda penalty: LiteTrainer(cfg.training, penalty))

    # -- one round ---------------------------------------------------------------------------
    def round(self, force: bool = False) -> list[dict[str, Any]]:
        """Watch, maybe train, evaluate and promote; returns the decisions made."""
        with self._lock:
            return self._round(force)

    def _round(self, force: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.state.started is None:
            self.state.started = self.clock()
        reg, pv = self._serving(out)
        trainer = self._trainer_for(pv.path)
        rows = self._rows()
        out += self._watch(rows, reg)
        self._live_gauge(rows)
        mine = set(self.learners())
        seen = {r.request_id for r in rows}
        done = set(self.state.consumed) & seen
        new = [r for r in rows if r.model in mine and r.request_id not in done]
        since = (self.clock() - (self.state.last_train or self.state.started)) / 60.0
        why = "forced" if force else self.trigger.why(len(new), since)
        busy = self.state.watch is not None and not self.cfg.train_while_watching
        if why and not busy:
            self.state.consumed = sorted(done | {r.request_id for r in new})
            self.state.last_train = self.clock()
            out += self._train_round(rows, new, reg, pv, trainer, why)
        self.state.rounds += 1
        self.state.save(self.root)
        return out

    def learners(self) -> list[str]:
        return [self.cfg.model, *[m for m in self.cfg.learn_from if m != self.cfg.model]]

    def _rows(self) -> list[LoggedRow]:
        df = self.read(self.cfg.log_dir or self.app.log_dir())
        models = {*self.learners()}
        return rewarded_rows(df, cost_penalty=self._penalty(), verifier=self.app.verifier(),
                             models=models, correct_threshold=self.cfg.correct_threshold,
                             answer_format=self.cfg.answer_format)

    def _penalty(self) -> float:
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
                              "continues a lite policy (lite:DIR or registry:DIR)")
        path, pv = resolve_policy(ref)
        if pv is None or pv.kind != "lite":
            raise ConfigError(f"model {self.cfg.model!r} serves {ref!r}, a policy of kind "
                              f"{getattr(pv, 'kind', '?')!r}; online retraining trains lite "
                              "policies")
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

    def _trainer_for(self, policy_dir: str) -> Trainer:
        if self._trainer is None:
            if self.state.cost_penalty is None:
                from ray_conductor.lite.conductor import LiteConductor
                from ray_conductor.online.trainer import policy_penalty

                given = self.cfg.training.cost_penalty
                self.state.cost_penalty = float(
                    given if given is not None else policy_penalty(LiteConductor.load(policy_dir)))
            self._trainer = self.make_trainer(self.state.cost_penalty)
        return self._trainer

    # -- the watch after a promotion ---------------------------------------------------------
    def _watch(self, rows: list[LoggedRow], reg: Any) -> list[dict[str, Any]]:
        w, cfg, model = self.state.watch, self.cfg.rollback, self.cfg.model
        if w is None:
            return []
        current = reg.promoted()
        if current is None or current.version != w.version:
            self.state.watch = None
            return [self.decisions.append("kept", model, version=w.tag, reason=(
                "the registry's promoted version changed outside the loop; watch ended"))]
        mine = [r.reward for r in rows if r.model == model and r.version == w.tag
                and r.time >= w.since]
        if len(mine) < cfg.window:
            return []
        before = [r.reward for r in rows if r.model == model and r.version == w.previous_tag
                  and r.time < w.since][-cfg.baseline:]
        self.state.watch = None
        if len(before) < cfg.min_baseline:
            return [self.decisions.append("kept", model, version=w.tag, reason=(
                f"only {len(before)} live rewards of {w.previous_tag}: nothing to compare"),
                mean_live=float(np.mean(mine[:cfg.window])))]
        res = drop_test(mine[:cfg.window], before, alpha=cfg.alpha, margin=cfg.margin)
        if not res.dropped:
            return [self.decisions.append("kept", model, version=w.tag, previous=w.previous_tag,
                                          test=res.figures())]
        t0 = time.perf_counter()
        back = reg.rollback(reason=f"live reward of {w.tag} dropped: {res.mean_new:.4f} vs "
                                   f"{res.mean_old:.4f} (p={res.p_value:.3g})")
        tag = self.app.swap(model, f"{REGISTRY}{reg.root}@{back.version}")
        self.metrics.served_version(model, back.version)
        return [self.decisions.append("rolled_back", model, version=tag, previous=w.tag,
                                      test=res.figures(), wall_s=time.perf_counter() - t0)]

    def _live_gauge(self, rows: list[LoggedRow]) -> None:
        by: dict[str, list[float]] = {}
        for r in rows:
            if r.model == self.cfg.model:
                by.setdefault(r.version, []).append(r.reward)
        for version, rewards in by.items():
            self.metrics.live_reward(self.cfg.model, version,
                                     float(np.mean(rewards[-self.cfg.rollback.window:])))

    # -- train, evaluate, decide -------------------------------------------------------------
    def _train_round(self, rows: list[LoggedRow], new: list[LoggedRow], reg: Any, pv: Any,
                     trainer: Trainer, why: str) -> list[dict[str, Any]]:
        cfg, model = self.cfg, self.cfg.model
        fresh = list({r.key: r for r in judgeable(new)}.values())  # the latest row per question
        hold = cfg.evaluation.holdout
        train_new = [r for r in fresh if not held_back(r.key, hold)]
        self.state.held = remember(self.state.held, [r.key for r in fresh
                                                     if held_back(r.key, hold)],
                                   cfg.evaluation.rows)
        latest = {r.key: r for r in judgeable(rows)}
        older = [k for k in self.state.buffer if k in latest and
                 k not in {r.key for r in train_new}]
        self.state.buffer = remember(self.state.buffer, [r.key for r in train_new],
                                     cfg.training.buffer_rows)
        n_recent = min(len(older), max(0, cfg.training.recent_rows - len(train_new)))
        recent, rest = older[len(older) - n_recent:], older[:len(older) - n_recent]
        n_old = min(len(rest), round(cfg.training.replay_ratio * len(train_new)))
        rng = np.random.default_rng(cfg.training.seed + self.state.rounds)
        replay = [latest[k] for k in recent] + [
            latest[rest[i]] for i in sorted(rng.choice(len(rest), n_old, replace=False))]
        held = [latest[k] for k in self.state.held if k in latest]
        train = train_new + replay
        taken = {r.key for r in train} | {r.key for r in held}
        anchors = [r for r in self._anchor_rows() if r.key not in taken]
        train += anchors  # after the traffic: the call budget goes to the traffic first
        held_anchors = [r for r in self._anchor_rows(held=True) if r.key not in taken]
        pool, prints = self.app.rollout_pool()
        verifier = combined(self.app.verifier(), self._anchors.data if self._anchors else None)
        rr = Reroller(pool, prints, self.cache, verifier,
                      concurrency=cfg.reroll.concurrency, timeout_s=cfg.reroll.timeout_s)
        t0 = time.perf_counter()
        answers, stats = rr.answers(held + train + held_anchors, cfg.reroll.calls_per_round)
        workers = list(pool.workers())
        held_cf = Counterfactual([r for r in held if r.key in answers], answers, workers)
        anchor_cf = Counterfactual([r for r in held_anchors if r.key in answers], answers,
                                   workers)
        train_cf = Counterfactual([r for r in train if r.key in answers], answers, workers)
        counts = {"trigger": why, "new_rows": len(new), "new_questions": len(fresh),
                  "train_rows": len(train_cf), "replayed": len(replay),
                  "anchor_rows": sum(r.key in answers for r in anchors),
                  "held_anchor_rows": len(anchor_cf),
                  "held_rows": len(held_cf), "reroll": vars(stats),
                  "reroll_s": time.perf_counter() - t0}
        if len(train_cf) < cfg.training.min_rows or len(held_cf) < cfg.evaluation.min_rows:
            return [self.decisions.append("skipped", model, version=pv.tag, reason=(
                f"{len(train_cf)} training and {len(held_cf)} held-back questions with every "
                f"worker's answer; need {cfg.training.min_rows} and {cfg.evaluation.min_rows}"),
                **counts)]
        out_dir = self.root / "candidates" / f"round-{self.state.rounds:05d}"
        cand_dir, figures = trainer.improve(Path(pv.path), train_cf, out_dir)
        out = [self.decisions.append("trained", model, version=pv.tag, candidate=str(cand_dir),
                                     **counts, training=figures)]
        out += self._decide(reg, pv, trainer, cand_dir, held_cf, anchor_cf)
        return out

    def _anchor_rows(self, held: bool = False) -> list[LoggedRow]:
        """The anchor questions (`training.anchor`) to train on, or (`held`) the held-back
        ones to evaluate on (`evaluation.anchor_rows`); loaded once per pool spec."""
        a = self.cfg.training.anchor
        if not a.pool or (held and not self.cfg.evaluation.anchor_rows):
            return []
        data_dir = a.data_dir or self.app.config().data_dir
        tag = f"{a.pool}|{data_dir}|{a.split}|{a.rows}|{self.cfg.evaluation.anchor_rows}"
        if self._anchors is None or self._anchors.tag != tag:
            from ray_conductor.data.pools import load_pool

            try:
                data = load_pool(a.pool, data_dir)
            except (DataError, OSError) as e:
                raise ConfigError(f"training.anchor.pool={a.pool!r} cannot be loaded: "
                                  f"{str(e).splitlines()[0][:200]}; name a pool spec such as "
                                  "mmlu_pro or parquet:PATH, or leave it null") from None
            hold = self.cfg.evaluation.holdout
            self._anchors = Anchors(tag, data, anchor_rows(data, a.split, a.rows, hold),
                                    anchor_rows(data, a.split, self.cfg.evaluation.anchor_rows,
                                                hold, held=True))
        return self._anchors.held if held else self._anchors.train

    def _decide(self, reg: Any, pv: Any, trainer: Trainer, cand_dir: Path,
                held: Counterfactual, anchors: Counterfactual | None = None
                ) -> list[dict[str, Any]]:
        """The paired test on held-back traffic; with held-back anchors (at least
        `evaluation.min_rows`), a candidate also passes if it is better on them and its mean
        gain on held-back traffic is not negative."""
        cfg, model = self.cfg.evaluation, self.cfg.model

        def test(data: Counterfactual) -> tuple[Any, np.ndarray, np.ndarray]:
            serving, candidate = trainer.score(Path(pv.path), data), trainer.score(cand_dir, data)
            return paired_test(candidate - serving, alpha=cfg.alpha, min_gain=cfg.min_gain,
                               method=cfg.test, samples=cfg.bootstrap_samples,
                               seed=self.cfg.training.seed), serving, candidate

        res, serving, candidate = test(held)
        self.metrics.eval_reward(model, "serving", float(serving.mean()))
        self.metrics.eval_reward(model, "candidate", float(candidate.mean()))
        figures: dict[str, Any] = {"n": len(held), "serving_mean": float(serving.mean()),
                                   "candidate_mean": float(candidate.mean()),
                                   "test": res.figures()}
        passed_by = "traffic" if res.passed else None
        if anchors is not None and len(anchors) >= cfg.min_rows:
            ares, aserving, acandidate = test(anchors)
            figures["anchors"] = {"n": len(anchors), "serving_mean": float(aserving.mean()),
                                  "candidate_mean": float(acandidate.mean()),
                                  "test": ares.figures()}
            if passed_by is None and ares.passed and res.mean >= 0:
                passed_by = "anchors"
        figures["passed_by"] = passed_by
        out = [self.decisions.append("evaluated", model, version=pv.tag, **figures)]
        if passed_by is None:
            shutil.rmtree(cand_dir, ignore_errors=True)
            why = (f"lower bound {res.lcb:.4f} of the mean gain {res.mean:.4f} is not above "
                   f"min_gain {cfg.min_gain:g} (p={res.p_value:.3g}, n={res.n})")
            if "anchors" in figures:
                a = figures["anchors"]["test"]
                why += (f"; on {figures['anchors']['n']} held-back anchors the gain is "
                        f"{a['mean']:.4f} (lower bound {a['lcb']:.4f})"
                        + (", but the traffic gain is negative" if a["passed"] else ""))
            return out + [self.decisions.append("rejected", model, version=pv.tag,
                                                reason=why, **figures)]
        return out + [self._promote(reg, pv, cand_dir, figures)]

    def _promote(self, reg: Any, pv: Any, cand_dir: Path, figures: dict[str, Any]
                 ) -> dict[str, Any]:
        model, t0 = self.cfg.model, time.perf_counter()
        new = reg.publish(cand_dir, kind="lite", meta={"parent": pv.version, **figures})
        reason = (f"held-back reward {figures['candidate_mean']:.4f} vs "
                  f"{figures['serving_mean']:.4f}, lower bound of the gain "
                  f"{figures['test']['lcb']:.4f} (n={figures['n']})")
        if figures.get("passed_by") == "anchors":
            a = figures["anchors"]
            reason += (f"; on {a['n']} held-back anchors {a['candidate_mean']:.4f} vs "
                       f"{a['serving_mean']:.4f}, lower bound of the gain "
                       f"{a['test']['lcb']:.4f}")
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
        import tempfile

        from ray_conductor.lite.conductor import LiteConductor
        from ray_conductor.lite.table import worker_strength
        from ray_conductor.online.extend import prepare_for_pool

        with self._lock:
            reg, pv = self._serving([])
            conductor = LiteConductor.load(pv.path)
            new = [w for w in workers if w.name not in conductor.workers]
            if not new:
                raise ConfigError(f"the served policy {pv.tag} already knows "
                                  f"{[w.name for w in workers]}")
            grown = prepare_for_pool(conductor, list(zip([w.name for w in new],
                                                         worker_strength(new))))
            with tempfile.TemporaryDirectory() as tmp:
                out = reg.publish(grown.save(Path(tmp) / "policy"), kind="lite",
                                  meta={"parent": pv.version, "grown": [w.name for w in new]})
            reason = f"the pool gains {[w.name for w in new]}"
            reg.promote(out.version, reason=reason)
            self.state.watch = None
            self.state.save(self.root)
            return self.decisions.append("extended", self.cfg.model, version=out.tag,
                                         previous=pv.tag, reason=reason,
                                         workers=[w.name for w in new])

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
            except Exception as e:  # noqa: BLE001 - the loop outlives one bad round
                log.exception("online round failed")
                self.decisions.append("failed", self.cfg.model,
                                      reason=f"{type(e).__name__}: {str(e)[:300]}")
            done += 1
            if self.cfg.max_rounds is not None and done >= self.cfg.max_rounds:
                return
            end = time.monotonic() + self.cfg.poll_s
            while time.monotonic() < end and not stop():
                time.sleep(min(1.0, self.cfg.poll_s))
