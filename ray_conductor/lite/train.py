"""`train_lite`: fit the lite conductor on a replay pool's train split, top to bottom.

Load the pool and its cached question embeddings; carve a validation slice out of train
(hashed query ids; it tunes and early-stops, the test split is never read); fit the
supervised selector (the baseline, and the teacher); optionally behaviour-clone the
selector into the policy; then PPO iterations, each followed by a greedy check on train rows
(and, in budget mode, a step of the Lagrange multiplier toward the target $/query) and on
the validation slice (the best iteration is kept). Writes `run_dir/policy` (the PPO
conductor), `run_dir/selector` (the baseline), `metrics.jsonl`, TensorBoard under `tb/` and
`summary.json`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ray_conductor.config import RayConfig, default_data_dir, opt, storage_opt, to_dict
from ray_conductor.errors import ConfigError, TrainingError
from ray_conductor.lite.bc import behaviour_clone, demonstrations
from ray_conductor.lite.conductor import META_FILE, LiteConductor, Rollouts
from ray_conductor.lite.encoder import EMBED_MODEL, embed, fit_featurizer
from ray_conductor.lite.env import default_cost_scale
from ray_conductor.lite.episode import MAX_CALLS, n_actions, state_dim
from ray_conductor.lite.net import LiteNet, Projection
from ray_conductor.lite.ppo import (
    PPOSettings, build_ppo, iteration_metrics, net_state, set_cost_penalty)
from ray_conductor.lite.selector import (
    Selector, SelectorConfig, choose, fit_selector, penalty_for_budget)
from ray_conductor.lite.table import LiteTable, build_table


@dataclass
class LiteTrainConfig:
    pool: str = opt("demo", "demo | mmlu_pro:PATH | routerbench:CSV[,CSV] | records:PATH[,PATH] "
                    "| parquet:PATH")
    split: str = opt("train", "the rows to fit on (never test)", choices=("train", "all"))
    data_dir: str = opt(factory=default_data_dir, help="where bare pool names are looked up")
    storage: str | None = storage_opt()
    run_dir: str = opt("runs/lite", "where the policy, selector and metrics go")
    overwrite: bool = opt(False, "replace a policy already in run_dir")
    cost_penalty: float = opt(30.0, "reward = correct - cost_penalty * dollars", min=0)
    budget: float | None = opt(None, "target $/query: cost_penalty becomes a Lagrange "
                                     "multiplier (null: fixed penalty)", gt=0)
    budget_rate: float = opt(0.3, "multiplier step: lam *= exp(rate * (cost/budget - 1))",
                             gt=0)
    max_calls: int = opt(4, "worker calls per question at most", min=1, max=MAX_CALLS)
    # What the policy sees of a question: a few PCA dims of its embedding, and the selector's
    # shrunk per-worker estimates. 64 dims without the prior let PPO memorise train questions
    # (MMLU-Pro: train accuracy up to 0.81 while validation fell to 0.72).
    projection_dim: int = opt(16, "PCA dims of the question embedding (0: all 384)", min=0)
    feature_noise: float = opt(0.0, "std of noise on those dims per training episode", min=0)
    prior: bool = opt(True, "also show the policy the selector's per-worker estimates")
    val_fraction: float = opt(0.15, "share of train held out to pick the best iteration",
                              gt=0, max=0.49)
    iterations: int = opt(60, "PPO iterations at most", min=0)
    timesteps: int | None = opt(None, "stop once this many env steps were sampled", min=1)
    time_budget_s: float | None = opt(540.0, "stop PPO after this long (wall clock)", gt=0)
    check_rows: int = opt(2000, "train rows for each iteration's greedy check", min=1)
    bc_warm_start: bool = opt(True, "behaviour-clone the selector before PPO (PPO alone "
                                    "falls short)")
    bc_steps: int = opt(2000, "behaviour-cloning minibatch updates", min=0)
    seed: int = opt(0, "random seed")
    torch_threads: int = opt(1, "threads per process; more only oversubscribes small machines",
                             min=1)
    progress: bool = opt(True, "show progress bars")
    selector: SelectorConfig = opt(factory=SelectorConfig, help="the supervised selector")
    ppo: PPOSettings = opt(factory=PPOSettings, help="RLlib PPO: batch, lr, env runners, "
                                                     "learners")
    ray: RayConfig = opt(factory=RayConfig, help="how to reach or start Ray")


def pool_table(data, split: str, featurizer) -> LiteTable:
    """The split's rows with raw question embeddings. The pool's whole question list is
    embedded once and cached, so train, validation and test share one cache entry (the
    encoder is frozen and reads no labels)."""
    every = data.queries("all")
    emb = embed([q.query for q in every], featurizer, cache=True)
    row = {q.query_id: i for i, q in enumerate(every)}
    return build_table(data, split, lambda _texts: emb[[row[q.query_id]
                                                          for q in data.queries(split)]])


def _check(cfg: LiteTrainConfig) -> Path:
    if cfg.split == "test":
        raise ConfigError("train-lite fits on split=train (or all); never on test")
    if cfg.budget is not None and cfg.budget <= 0:
        raise ConfigError(f"budget={cfg.budget}: give a positive target $/query, or null")
    if cfg.max_calls < 1:
        raise ConfigError(f"max_calls={cfg.max_calls}: the policy must be allowed one call")
    if not 0 < cfg.val_fraction < 0.5:
        raise ConfigError(f"val_fraction={cfg.val_fraction}: use a value in (0, 0.5)")
    if cfg.ppo.minibatch_size > cfg.ppo.train_batch_size:
        raise ConfigError(f"ppo.minibatch_size={cfg.ppo.minibatch_size}: must be at most "
                          f"ppo.train_batch_size={cfg.ppo.train_batch_size}")
    run_dir = Path(cfg.run_dir)
    if (run_dir / "policy" / META_FILE).exists() and not cfg.overwrite:
        raise ConfigError(f"{run_dir} already holds a trained lite policy; choose another "
                          f"run_dir or pass overwrite=true")
    return run_dir


class _Log:
    """metrics.jsonl (one row per iteration) and TensorBoard scalars."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        self.path.write_text("")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"))

    def write(self, step: int, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"iteration": step, **row}) + "\n")
        for k, v in row.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.tb.close()


def _score(r: Rollouts, cfg: LiteTrainConfig, penalty: float) -> float:
    """Validation objective: reward at the configured penalty; in budget mode accuracy, with
    overspending beyond 5% of the budget ranked below every policy within it."""
    if cfg.budget is None:
        return float(r.correct.mean() - penalty * r.cost.mean())
    over = r.cost.mean() / cfg.budget - 1.05
    return float(r.correct.mean()) if over <= 0 else -over


def train_lite(cfg: LiteTrainConfig) -> dict[str, Any]:
    from ray_conductor.data.pools import load_pool
    from ray_conductor.runtime import init_ray

    run_dir = _check(cfg)
    torch.set_num_threads(max(1, cfg.torch_threads))
    t0 = time.perf_counter()
    data = load_pool(cfg.pool, data_dir=cfg.data_dir)
    _check_budget(data, cfg)
    featurizer = fit_featurizer([q.query for q in data.queries(cfg.split)])
    fit, val = pool_table(data, cfg.split, featurizer).split_validation(cfg.val_fraction)
    if len(fit) < 10 or len(val) < 1:
        raise ConfigError(f"split={cfg.split!r} of {cfg.pool!r} is too small to train on "
                          f"({len(fit)} fit rows, {len(val)} validation rows)")
    selector, sel_penalty = _fit_selector(fit, val, cfg)
    conductor = _skeleton(fit, cfg, selector, featurizer)
    baseline = _selector_conductor(selector, conductor, cfg)
    feats_fit = conductor.question_features(fit.features, leave_one_out=True)
    feats_val = conductor.question_features(val.features)
    env_table = fit.with_features(feats_fit)
    log = _Log(run_dir)
    init, bc = None, {}
    if cfg.bc_warm_start:
        init, bc = _clone(conductor, env_table, selector, sel_penalty, fit, cfg)
    penalty = sel_penalty if cfg.budget is not None else cfg.cost_penalty
    prep_s = time.perf_counter() - t0

    init_ray(cfg.ray)
    algo = build_ppo(env_table, cfg.ppo, max_calls=cfg.max_calls, cost_penalty=penalty,
                     cost_scale=conductor.cost_scale, seed=cfg.seed,
                     feature_noise=_noise(conductor, cfg), init_state=init)
    t_ppo = time.perf_counter()
    try:
        best, last = _ppo_iterations(algo, conductor, fit, feats_fit, val, feats_val, penalty,
                                     cfg, log, t0, bc)
    finally:
        log.close()
        algo.stop()
    conductor.net.load_state_dict(best["state"])
    conductor.info.update(trained={"iteration": best["iteration"], "cost_penalty":
                                   best["penalty"], "val": best["val"], **bc},
                          config=to_dict(cfg))
    # both are checked before either is written: a diverged run saves nothing
    check_policy_of(baseline, run_dir / "selector")
    check_policy_of(conductor, run_dir / "policy")
    baseline.save(run_dir / "selector", overwrite=True)
    conductor.save(run_dir / "policy", overwrite=cfg.overwrite)
    summary = {"pool": cfg.pool, "split": cfg.split, "fit_rows": len(fit),
               "val_rows": len(val), "iterations": last.get("iteration", 0),
               "best_iteration": best["iteration"], "env_steps": last.get("env_steps_lifetime"),
               "prep_s": prep_s, "ppo_s": time.perf_counter() - t_ppo,
               "wall_s": time.perf_counter() - t0,
               "val": {"ppo": best["val"],
                       "selector": baseline.rollout(val).summary(conductor.workers)},
               "bc": bc, "policy": str(run_dir / "policy"),
               "selector": str(run_dir / "selector")}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def continue_ppo(algo, conductor: LiteConductor, iterations: int,
                 judge: Callable[[LiteConductor], tuple[float, dict[str, Any]]],
                 after: Callable[[int, dict[str, Any], dict[str, Any]], bool] | None = None
                 ) -> tuple[dict[str, Any], list[float], dict[str, Any]]:
    """The one PPO continuation, used by `train-lite` and by online retraining
    (`online.trainer.LiteTrainer`): up to `iterations` PPO iterations of `algo`, each
    followed by loading the learner's weights into `conductor` and `judge(conductor)` ->
    (score, figures); `after(iteration, metrics row, figures)` logs or adjusts, True stops.
    Returns the best candidate ({"score", "iteration", "state", **figures}; the starting
    weights are one: PPO may only make a good start worse), the score curve (start
    first) and the last metrics row. Non-finite losses or weights stop it (nothing kept)."""
    conductor.net.load_state_dict(net_state(algo))
    score, figures = judge(conductor)
    best = {"score": score, "iteration": 0, "state": net_state(algo), **figures}
    curve, row = [score], {}
    for it in range(1, iterations + 1):
        row = {"iteration": it, **iteration_metrics(algo.train())}
        state = net_state(algo)
        _finite(row, state, it)
        conductor.net.load_state_dict(state)
        score, figures = judge(conductor)
        curve.append(score)
        if score > best["score"]:
            best = {"score": score, "iteration": it, "state": state, **figures}
        if after is not None and after(it, row, figures):
            break
    return best, curve, row


def _ppo_iterations(algo, conductor: LiteConductor, fit: LiteTable, feats_fit: np.ndarray,
                    val: LiteTable, feats_val: np.ndarray, penalty: float,
                    cfg: LiteTrainConfig, log: _Log, t0: float, start_info: dict[str, Any]
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """`continue_ppo` with greedy checks on train rows and the validation slice and
    (budget mode) a multiplier step after each iteration. Returns the best candidate and
    the last metrics row."""
    check_rows = np.random.default_rng(cfg.seed).permutation(len(fit))[: cfg.check_rows]
    check, check_feats = fit.take(check_rows), feats_fit[check_rows]
    lam = [penalty]  # the multiplier, stepped between iterations in budget mode
    t_ppo = time.perf_counter()

    def judge(c: LiteConductor) -> tuple[float, dict[str, Any]]:
        on_val = c.rollout(val, features=feats_val)
        return _score(on_val, cfg, lam[0]), {"val": on_val.summary(c.workers),
                                             "penalty": lam[0]}

    def after(it: int, row: dict[str, Any], figures: dict[str, Any]) -> bool:
        on_fit = conductor.rollout(check, features=check_feats)
        row.update(**_prefixed("train", on_fit.summary(conductor.workers)),
                   **_prefixed("val", figures["val"]), cost_penalty=lam[0],
                   wall_s=time.perf_counter() - t0)
        if cfg.budget is not None:  # dual ascent on the multiplier, from greedy spend
            step = cfg.budget_rate * (on_fit.cost.mean() / cfg.budget - 1)
            lam[0] = min(lam[0] * math.exp(min(step, 20.0)), MAX_PENALTY)
            set_cost_penalty(algo, lam[0])
        log.write(it, {k: v for k, v in row.items() if k != "iteration"})
        bar.update()
        bar.set_postfix(ret=row.get("episode_return_mean", float("nan")),
                        val_acc=row["val_accuracy"], val_cost=row["val_cost_per_query"])
        return bool((cfg.timesteps and row.get("env_steps_lifetime", 0) >= cfg.timesteps) or (
            cfg.time_budget_s and time.perf_counter() - t_ppo > cfg.time_budget_s))

    with tqdm(total=cfg.iterations, desc="train-lite", disable=not cfg.progress) as bar:
        conductor.net.load_state_dict(net_state(algo))
        first = judge(conductor)[1]
        log.write(0, {**start_info, **_prefixed("val", first["val"]), "cost_penalty": penalty})
        best, _curve, row = continue_ppo(algo, conductor, cfg.iterations, judge, after)
    return best, row


MAX_PENALTY = 1e9  # $-penalty ceiling of the budget multiplier (it grows by exp steps)


def _check_budget(data, cfg: LiteTrainConfig) -> None:
    """A budget below what answering costs on this pool cannot be met by any policy (the
    multiplier would grow without bound): refuse it before any work."""
    if cfg.budget is None:
        return
    cost = data.matrix(cfg.split).cost
    cheapest = np.where(cost > 0, cost, np.inf).min(axis=1, initial=np.inf)
    cheapest = cheapest[np.isfinite(cheapest)]  # questions with a priced answer
    floor = float(cheapest.mean()) if len(cheapest) else 0.0
    if cfg.budget < floor:
        raise ConfigError(f"budget={cfg.budget:g}: below the cheapest answer on this pool "
                          f"(${floor:.6g} per question on average, the cheapest worker of "
                          f"each); give budget >= {floor:.6g}, or null")


def _finite(row: dict[str, Any], state: dict[str, torch.Tensor], it: int) -> None:
    """Stop (saving nothing) once the losses or the weights turn non-finite."""
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)
           and k in ("policy_loss", "vf_loss", "entropy", "mean_kl")]
    bad += [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise TrainingError(f"PPO iteration {it}: {', '.join(bad[:3])} turned non-finite; "
                            f"nothing was saved: lower ppo.lr or cost_penalty, or check the "
                            f"pool's costs")


def check_policy_of(conductor: LiteConductor, path: Path) -> None:
    """What `save` would refuse, refused before anything of the run is written."""
    from ray_conductor.lite.schema import check_policy

    meta, weights = conductor.to_saved()
    try:
        check_policy(meta, weights, str(path / META_FILE))
    except ConfigError as e:
        raise TrainingError(f"not saving the trained policies: {e}") from None


def _noise(conductor: LiteConductor, cfg: LiteTrainConfig) -> np.ndarray:
    """Noise on the projected embedding only; the prior's estimates are smooth already."""
    n_prior = len(conductor.workers) if conductor.prior is not None else 0
    return np.array([cfg.feature_noise] * conductor.projection.dim + [0.0] * n_prior,
                    dtype=np.float32)


def _prefixed(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in d.items() if isinstance(v, (int, float))}


def _fit_selector(fit: LiteTable, val: LiteTable, cfg: LiteTrainConfig
                  ) -> tuple[Selector, float]:
    """The selector and its penalty: the configured one, or in budget mode the penalty that
    meets the budget on the validation slice."""
    selector = fit_selector(fit, max_calls=cfg.max_calls, cfg=cfg.selector)
    penalty = cfg.cost_penalty
    if cfg.budget is not None:
        penalty = penalty_for_budget(selector.probs(val.features), selector.mean_cost,
                                     cfg.budget)
    selector.penalty = penalty
    return selector, penalty


def _skeleton(fit: LiteTable, cfg: LiteTrainConfig, selector: Selector, featurizer
              ) -> LiteConductor:
    """The PPO conductor before training: projection, prior, spaces and an initial net."""
    proj = Projection.fit(fit.features, cfg.projection_dim)
    w = len(fit.workers)
    obs_dim = proj.dim + (w if cfg.prior else 0) + state_dim(w, cfg.max_calls)
    net = LiteNet(obs_dim, n_actions(w), cfg.ppo.hidden)
    fmt = fit.answer_format
    return LiteConductor(fit.workers, fit.strength, proj, net=net,
                         prior=selector if cfg.prior else None, max_calls=cfg.max_calls,
                         cost_scale=default_cost_scale(fit), comparable=fit.comparable,
                         embed_model=EMBED_MODEL, featurizer=featurizer,
                         info={"pool": cfg.pool, "answer_format": fmt})


def _selector_conductor(selector: Selector, like: LiteConductor, cfg: LiteTrainConfig
                        ) -> LiteConductor:
    """The supervised baseline as a conductor of its own (same pool, same episode rules)."""
    return LiteConductor(like.workers, like.strength, like.projection, selector=selector,
                         max_calls=cfg.max_calls, cost_scale=like.cost_scale,
                         comparable=like.comparable, embed_model=like.embed_model,
                         featurizer=like.featurizer,
                         info={**like.info, "trained": {"cost_penalty": selector.penalty},
                               "config": to_dict(cfg)})


def _clone(conductor: LiteConductor, env_table: LiteTable, selector: Selector, penalty: float,
           fit: LiteTable, cfg: LiteTrainConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """Behaviour-clone the selector's leave-one-out choices into the conductor's net."""
    picks = choose(selector.probs(fit.features, leave_one_out=True), selector.mean_cost, penalty)
    demos = demonstrations(env_table, selector.programs, picks, max_calls=cfg.max_calls,
                           cost_scale=conductor.cost_scale, cost_penalty=penalty)
    stats = behaviour_clone(conductor.net, demos, steps=cfg.bc_steps, seed=cfg.seed)
    return {k: v.detach().clone() for k, v in conductor.net.state_dict().items()}, stats
