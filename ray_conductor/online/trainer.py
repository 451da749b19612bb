"""What a policy tier must offer the online loop (`Trainer`), and the lite conductor's.

A tier continues training a policy directory on counterfactual data (`improve`: a new
policy directory, never an overwrite) and scores a policy per question on the same kind of
data (`score`: the reward of each question, for the paired test). The LM conductor would
plug in here at GPU scale with the same loop; this module has the lite tier, which retrains
in minutes on a CPU.

`LiteTrainer.improve` warm-starts RLlib PPO (the `train-lite` machinery, `lite.ppo`) from the
serving policy's own weights, with a small learning rate and few iterations, on the new rows
plus a replay buffer of earlier ones (the loop mixes them), and keeps the iteration whose
greedy reward on those rows is best, the starting weights included: PPO may only make a good
policy worse. With `refit_prior` it also refits the policy's prior (the selector whose
per-worker estimates the net reads) on those rows, clones the new selector's choices and
continues PPO from there (features leave each row out of the prior fit on it); the better of
the two runs on the training rows is the candidate. A worker the policy has never seen
extends its action space first (`extend`); its prior knows it only once enough rows observe
it (recorded anchors do): the prior is then fit anew over every worker and the net reads the
newcomer's estimate too (`widen_prior_inputs`), else an update of the old prior could never
name it and the cloned choices would teach the net to leave it alone.

Partial-information rows: a question's data may hold only some workers' answers (what its
served trace carried, plus the cells a budgeted re-roll asked). Training sees only the
observed cells (`LiteTable.observed`: an episode never calls an unobserved worker; the
prior's estimates count observed outcomes only, see `lite.selector`). Scoring is exact or
not done: `needed` names the unobserved cells a policy's greedy rollout would read, the loop
asks them within its budget, and the paired test compares only questions whose every step
is observed. The greedy check that picks the best PPO iteration on training rows reads an
unobserved cell as a failed call (it favours observed choices; the paired test decides).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ray_conductor.errors import ConfigError
from ray_conductor.lite.conductor import LiteConductor
from ray_conductor.lite.table import NO_ANSWER, LiteTable, worker_strength
from ray_conductor.online.anchor import ANCHOR
from ray_conductor.online.config import TrainingConfig
from ray_conductor.online.extend import clone_worker, extend_workers
from ray_conductor.online.reroll import RerollAnswer, build_table
from ray_conductor.online.rewards import LoggedRow
from ray_conductor.workers.base import WorkerInfo

DEFAULT_PENALTY = 30.0  # train-lite's default, for a policy that does not say its own


@dataclass
class Counterfactual:
    """Questions and the workers' answers known for each (every worker's after a full
    re-roll; some of them in partial-information rows), over the pool's `workers`."""

    rows: list[LoggedRow]
    answers: dict[str, dict[str, RerollAnswer]]
    workers: list[WorkerInfo]

    def __len__(self) -> int:
        return len(self.rows)


class Trainer(Protocol):
    """`kind`: the registry kind of the policies it writes. A trainer may also offer
    `meta(policy_dir) -> dict`: what a published version of its candidate keeps in the
    registry (the LM tier: the conductor settings it runs with)."""

    kind: str

    def improve(self, policy_dir: Path, data: Counterfactual, out_dir: Path
                ) -> tuple[Path, dict[str, Any]]: ...

    def score(self, policy_dir: Path, data: Counterfactual) -> np.ndarray: ...


def _ppo(settings: Any) -> Any:
    """PPOSettings from the typed config (OmegaConf hands a dataclass or a DictConfig)."""
    from ray_conductor.lite.ppo import PPOSettings

    if isinstance(settings, PPOSettings):
        return settings
    from ray_conductor.config import to_dict

    return PPOSettings(**to_dict(settings))


def soften(net: Any, temperature: float) -> None:
    """Divide the policy's logits by `temperature` (its last layer): greedy decisions stay
    the same, but PPO samples the other actions often enough to learn about them (a trained
    policy puts ~1e-5 on a worker it never calls, a new one included). Undone (`1/T`) on
    the weights kept, so rounds do not compound."""
    import torch

    with torch.no_grad():
        net.pi[-1].weight.div_(temperature)
        net.pi[-1].bias.div_(temperature)


def stand_in(table: LiteTable, old: list[str], new: str, penalty: float) -> str:
    """The old worker whose single-call reward on these questions is closest to the new
    one's: the new worker starts as its clone (PPO then tells them apart)."""
    seen = table.seen  # partial rows: each worker's mean over its observed cells
    reward = ((table.correct - penalty * table.cost) * seen).sum(axis=0) / np.maximum(
        seen.sum(axis=0), 1)
    j = table.workers.index(new)
    gaps = [abs(reward[table.workers.index(w)] - reward[j]) for w in old]
    return old[int(np.argmin(gaps))]


def singles(programs: Any) -> list[tuple[int, ...]]:
    """The single-worker programs' workers, in order (what the net reads one estimate of)."""
    return [p.workers for p in programs if len(p.workers) == 1]


def widen_prior_inputs(conductor: LiteConductor, added: int) -> None:
    """In place: the net reads `added` more prior estimates (new workers', after the old
    ones in the question features), with zero weights: it computes what it did before until
    it is trained on them."""
    import torch

    from ray_conductor.lite.episode import state_dim
    from ray_conductor.lite.net import LiteNet

    net = conductor.net
    assert net is not None and added > 0
    n_q = net.obs_dim - state_dim(len(conductor.workers), conductor.max_calls)
    wide = LiteNet(net.obs_dim + added, net.n_actions, net.hidden)
    wide.load_state_dict({k: v for k, v in net.state_dict().items()
                          if k not in ("pi.0.weight", "vf.0.weight")}, strict=False)
    with torch.no_grad():
        for old, new in ((net.pi[0], wide.pi[0]), (net.vf[0], wide.vf[0])):
            new.weight.zero_()
            new.weight[:, :n_q] = old.weight[:, :n_q]
            new.weight[:, n_q + added:] = old.weight[:, n_q:]
    wide.eval()
    conductor.net = wide


def policy_penalty(conductor: LiteConductor) -> float:
    """The dollar penalty a lite policy was trained with (its reward's own exchange rate)."""
    trained = (conductor.info or {}).get("trained") or {}
    return float(trained.get("cost_penalty", DEFAULT_PENALTY))


class LiteTrainer:
    kind = "lite"

    def __init__(self, settings: TrainingConfig, cost_penalty: float):
        self.settings, self.cost_penalty = settings, float(cost_penalty)
        self.stale: set[str] = set()  # workers whose answers changed since the policy's fit
        self._judge_table: LiteTable | None = None  # partial rows, estimates filled in
        self._prior_fit: tuple[Any, str] | None = None  # this round's prior (`_new_prior`)
        self._emb: dict[tuple[str, str], np.ndarray] = {}  # (featurizer, key) -> embedding

    def load(self, policy_dir: Path | str) -> LiteConductor:
        return LiteConductor.load(policy_dir)

    def table(self, conductor: LiteConductor, data: Counterfactual,
              keep_empty: bool = False) -> LiteTable:
        """`data` as a table over the conductor's workers, then any new ones (vote
        strengths: the conductor's own, and a new worker's price)."""
        known = {w.name: w for w in data.workers}
        missing = sorted(set(conductor.workers) - set(known))
        if missing:
            raise ConfigError(f"workers {missing} left the pool; a lite policy cannot drop "
                              "actions online: train a new one (ray-conductor train-lite)")
        new = [known[n] for n in known if n not in conductor.workers]
        names = [*conductor.workers, *(w.name for w in new)]
        strength = np.concatenate([conductor.strength, worker_strength(new)])
        return build_table(data.rows, data.answers, self._embed(conductor, data.rows), names,
                           strength, keep_empty)

    def _embed(self, conductor: LiteConductor, rows: list[LoggedRow]) -> np.ndarray:
        tag = repr(conductor.featurizer.to_dict())
        todo = [r for r in dict.fromkeys(rows) if (tag, r.key) not in self._emb]
        # anchors come as one stable list: cached on disk, so a restarted loop reuses them
        for batch, cache in (([r for r in todo if r.model == ANCHOR], True),
                             ([r for r in todo if r.model != ANCHOR], False)):
            if batch:
                for r, v in zip(batch, conductor.embed([r.question for r in batch],
                                                       cache=cache)):
                    self._emb[(tag, r.key)] = v
        if not rows:
            return np.zeros((0, 384), np.float32)
        return np.stack([self._emb[(tag, r.key)] for r in rows])

    def rewards(self, conductor: LiteConductor, table: LiteTable,
                features: np.ndarray | None = None) -> np.ndarray:
        """Each row's greedy reward (`features`: the controller's inputs, if computed)."""
        r = conductor.rollout(table.reorder(conductor.workers), features=features)
        return r.correct.astype(np.float64) - self.cost_penalty * r.cost

    def score(self, policy_dir: Path, data: Counterfactual) -> np.ndarray:
        """Each question's greedy reward, aligned with `data.rows` (exact where every cell
        the rollout reads is observed: `needed`)."""
        conductor = self.load(policy_dir)
        return self.rewards(conductor, self.table(conductor, data, keep_empty=True))

    def needed(self, policy_dir: Path, data: Counterfactual) -> dict[str, list[str]]:
        """Per question key, the unobserved cells the policy's greedy rollout reads (none:
        its score on the question is exact). Asking them and calling again converges in at
        most `max_calls` passes (each pass reveals the next step's cell)."""
        conductor = self.load(policy_dir)
        table = self.table(conductor, data, keep_empty=True).reorder(conductor.workers)
        if table.observed is None:
            return {}
        r = conductor.rollout(table)
        out: dict[str, list[str]] = {}
        for i, wf in enumerate(r.workflows):
            miss = [conductor.workers[j] for j in wf if not table.observed[i, j]]
            if miss:
                out[table.query_ids[i]] = miss
        return out

    def estimates(self, policy_dir: Path, data: Counterfactual
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Per row of `data` (in order) and worker: estimated correctness, the observed
        neighbours behind it, each worker's mean $ per call, and the worker names: from the
        policy's prior (its single-worker programs), else each worker's observed rate."""
        conductor = self.load(policy_dir)
        names = [w.name for w in data.workers]
        none = RerollAnswer(None, False, 0.0, False)
        got = [[data.answers.get(r.key, {}).get(w) for w in names] for r in data.rows]
        seen = np.array([[a is not None for a in row] for row in got], bool).reshape(
            len(got), len(names))
        correct = np.array([[(a or none).correct for a in row] for row in got],
                           float).reshape(seen.shape)
        cost = np.array([[(a or none).cost for a in row] for row in got], float).reshape(
            seen.shape)
        n_w = seen.sum(axis=0)
        rate = (correct.sum(axis=0) + 1.0) / (n_w + 2.0)  # a Beta(1, 1) start
        mean_cost = np.where(n_w > 0, cost.sum(axis=0) / np.maximum(n_w, 1), 0.0)
        p = np.repeat(rate[None, :], len(got), axis=0)
        n = np.repeat(n_w[None, :].astype(float), len(got), axis=0)
        prior = conductor.prior
        if prior is not None and data.rows:
            singles = {p_.workers[0]: k for k, p_ in enumerate(prior.programs)
                       if len(p_.workers) == 1}
            probs, den = prior.evidence(self._embed(conductor, data.rows))
            for j, name in enumerate(names):
                if name in conductor.workers and conductor.workers.index(name) in singles:
                    k = singles[conductor.workers.index(name)]
                    p[:, j], n[:, j] = probs[:, k], den[:, k]
        return p, n, mean_cost, names

    def _imputed(self, conductor: LiteConductor, table: LiteTable) -> LiteTable | None:
        """Partial rows with every unobserved cell drawn from the prior's estimate (this
        round's, from these rows: `_new_prior`): correct with its estimated probability, at
        the worker's mean observed cost, an answer of its own (the right one where correct).
        What the greedy checks (best iteration, plain vs refit run) and the demonstrations
        read; PPO's episodes never do (they call observed cells only), nor does the paired
        test. None for complete rows or a policy without a prior."""
        if table.observed is None or conductor.prior is None:
            return None
        table = table.reorder(table.workers)
        sel = (self._prior_fit or self._new_prior(conductor, table))[0]
        probs = sel.probs(table.features)
        seen = table.seen
        p, prior_cost = np.full(seen.shape, 0.5), np.zeros(seen.shape[1])
        for k, prog in enumerate(sel.programs):
            if len(prog.workers) == 1:
                p[:, prog.workers[0]] = probs[:, k]
                prior_cost[prog.workers[0]] = sel.mean_cost[k]
        n = seen.sum(axis=0)  # a worker never observed costs what the prior says
        mean_cost = np.where(n > 0, (table.cost * seen).sum(axis=0) / np.maximum(n, 1),
                             prior_cost)
        rng = np.random.default_rng(self.settings.seed)
        draw = rng.random(seen.shape) < p
        correct = np.where(seen, table.correct, draw)
        right = np.where(table.correct & seen, table.answers, NO_ANSWER).max(axis=1)
        right = np.where(right == NO_ANSWER, 1000, right)  # a code for the right answer
        wrong = 2000 + np.arange(seen.shape[1])[None, :]  # wrong answers disagree
        answers = np.where(seen, table.answers,
                           np.where(draw, right[:, None], wrong)).astype(np.int32)
        return replace(table, correct=correct, answers=answers,
                       cost=np.where(seen, table.cost, mean_cost[None, :]),
                       responded=np.where(seen, table.responded, True), observed=None)

    def _new_prior(self, conductor: LiteConductor, table: LiteTable) -> tuple[Any, str]:
        """The prior for `table` (over the conductor's workers, in its order) and how it was
        made: "updated" or "fit" (anew, over every worker of the table). Partial rows
        *update* the old prior (`update_selector`: its fit rows stay, so a few dozen rows
        cannot undo it; a `stale` worker's old outcomes drop). A worker the old prior has
        no estimate of (one that joined the pool) gets one only from a fit over the table:
        done when at least `refit_min_rows` rows observe each such worker (the anchors'
        recorded cells do), else the update (the newcomer stays the net's to learn).
        Complete rows: a fit, if there are `refit_min_rows` of them (else None, "")."""
        from ray_conductor.lite.selector import SelectorConfig, fit_selector, update_selector

        old = conductor.prior
        known = len(singles(old.programs))
        seen = table.seen
        unknown = list(range(known, len(table.workers)))
        fit = (table.observed is None and len(table) >= self.settings.refit_min_rows) or (
            bool(unknown) and all(seen[:, j].sum() >= self.settings.refit_min_rows
                                  for j in unknown))
        if fit:
            cfg = SelectorConfig(shrink=old.shrink)
            return fit_selector(table, max_calls=conductor.max_calls,
                                cost_penalty=self.cost_penalty, cfg=cfg), "fit"
        if table.observed is None:
            return None, ""
        stale = {conductor.workers.index(w) for w in self.stale if w in conductor.workers}
        return update_selector(old, table, stale), "updated"

    def _refit_prior(self, conductor: LiteConductor, table: LiteTable) -> dict[str, Any]:
        """Refit (or update: `_new_prior`) the conductor's prior (the selector whose
        per-worker estimates it reads) on `table`, the re-rolled rows of the current world,
        and behaviour-clone the new selector's choices into the net (from its current
        weights). A prior that learnt new workers widens the net's inputs first
        (`widen_prior_inputs`). {} when skipped."""
        if not self.settings.refit_prior or conductor.prior is None:
            return {}
        from ray_conductor.lite.bc import behaviour_clone, demonstrations
        from ray_conductor.lite.selector import choose

        old = conductor.prior
        sel, how = self._prior_fit or self._new_prior(conductor, table)
        # the net reads one estimate per single worker; cascades may reorder (by price)
        if sel is None or singles(sel.programs)[:len(singles(old.programs))] != singles(
                old.programs):
            return {}
        updated = how == "updated"
        if len(singles(sel.programs)) > len(singles(old.programs)):  # new workers estimated
            widen_prior_inputs(conductor, len(singles(sel.programs)) - len(singles(
                old.programs)))
        conductor.prior = sel
        feats = conductor.question_features(table.features, leave_one_out=not updated)
        probs = sel.probs(table.features, leave_one_out=not updated)
        if table.observed is not None:  # demonstrations step through estimated cells
            table = self._judge_table if self._judge_table is not None else table
        picks = choose(probs, sel.mean_cost, self.cost_penalty)
        demos = demonstrations(table.with_features(feats), sel.programs, picks,
                               max_calls=conductor.max_calls, cost_scale=conductor.cost_scale,
                               cost_penalty=self.cost_penalty)
        stats = behaviour_clone(conductor.net, demos, steps=self.settings.bc_steps,
                                seed=self.settings.seed)
        return {"rows": len(table), "bc": stats, "updated": updated,
                "workers_estimated": [table.workers[p[0]] for p in singles(
                    sel.programs)[len(singles(old.programs)):]]}

    def _continue(self, conductor: LiteConductor, table: LiteTable,
                  refit: bool = False) -> dict[str, Any]:
        """Warm-started PPO from the conductor's current weights on `table` (over its
        workers, in its order: what `table()` builds); the iteration
        (the start included) whose greedy reward on these rows is best. `refit`: the prior
        was fit on exactly these rows, so each row is left out of it (else it would see its
        own answer)."""
        from ray_conductor.lite.ppo import build_ppo
        from ray_conductor.lite.train import continue_ppo

        assert conductor.net is not None
        feats = conductor.question_features(table.features, leave_one_out=refit)
        soften(conductor.net, self.settings.temperature)
        start = {k: v.detach().clone() for k, v in conductor.net.state_dict().items()}
        settings = replace(_ppo(self.settings.ppo), hidden=list(conductor.net.hidden))
        noise = np.zeros(feats.shape[1], np.float32)  # on the projected embedding only
        noise[:conductor.projection.dim] = self.settings.feature_noise
        algo = build_ppo(table.with_features(feats), settings,
                         max_calls=conductor.max_calls, cost_penalty=self.cost_penalty,
                         cost_scale=conductor.cost_scale, seed=self.settings.seed,
                         init_state=start, feature_noise=noise)
        try:
            judged = self._judge_table if table.observed is not None else None
            best, curve, _ = continue_ppo(
                algo, conductor, self.settings.iterations,
                lambda c: (float(self.rewards(c, table if judged is None else judged,
                                                feats).mean()), {}))
        finally:
            algo.stop()
        return {"reward": best["score"], "iteration": best["iteration"],
                "state": best["state"], "first": curve[0], "curve": curve}

    def improve(self, policy_dir: Path, data: Counterfactual, out_dir: Path
                ) -> tuple[Path, dict[str, Any]]:
        t0 = time.perf_counter()
        conductor = self.load(policy_dir)
        table = self.table(conductor, data)
        added = table.workers[len(conductor.workers):]
        pending = [w for w in conductor.info.get("pending_workers", []) if w in table.workers]
        settled = [w for w in conductor.workers if w not in pending]
        inits = {}
        for name in added:
            inits[name] = self.settings.new_worker_init
            if inits[name] == "like":
                inits[name] = f"like:{stand_in(table, settled, name, self.cost_penalty)}"
            conductor = extend_workers(conductor, [name],
                                       [table.strength[table.workers.index(name)]], inits[name])
        if pending and self.settings.new_worker_init == "like":
            for name in pending:  # added while serving, never called yet: clone, then learn
                like = stand_in(table, settled, name, self.cost_penalty)
                clone_worker(conductor, name, like)
                inits[name] = f"like:{like}"
            conductor.info.pop("pending_workers", None)
            added = [*added, *pending]
        assert conductor.net is not None
        old_prior, old_net = conductor.prior, conductor.net
        old_state = {k: v.detach().clone() for k, v in conductor.net.state_dict().items()}
        self._prior_fit = None
        if conductor.prior is not None and (table.observed is not None or
                                            self.settings.refit_prior):
            self._prior_fit = self._new_prior(conductor, table)
        self._judge_table = self._imputed(conductor, table)
        plain = self._continue(conductor, table)
        refit, run = {}, plain
        if self.settings.refit_prior:
            conductor.net.load_state_dict(old_state)
            refit = self._refit_prior(conductor, table)
            if refit:
                taught = self._continue(conductor, table, refit=not refit["updated"])
                refit["best_reward"], refit["kept"] = taught["reward"], False
                if taught["reward"] > plain["reward"]:
                    run, refit["kept"] = taught, True
        if not refit.get("kept"):
            conductor.prior, conductor.net = old_prior, old_net
        conductor.net.load_state_dict(run["state"])
        soften(conductor.net, 1.0 / self.settings.temperature)  # back to its own scale
        figures = {"rows": len(table), "workers_added": list(added), "inits": inits,
                   "start_reward": run["first"], "best_reward": run["reward"],
                   "best_iteration": run["iteration"], "iterations": self.settings.iterations,
                   "curve": run["curve"], "cost_penalty": self.cost_penalty, "prior_refit": refit,
                   "wall_s": time.perf_counter() - t0}
        conductor.info = {**conductor.info, "online": figures,
                          "trained": {**(conductor.info.get("trained") or {}),
                                      "cost_penalty": self.cost_penalty}}
        conductor.save(out_dir, overwrite=True)
        return Path(out_dir), figures
