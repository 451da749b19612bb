"""`RetrainConfig`: the online loop as typed config (`configs/online.yaml` and `key=value`
overrides). The app, its traffic log and its worker pool are read from the running Serve
app itself, so a plain `ray-conductor retrain model=NAME` retrains what is being served."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray_conductor.config import RayConfig, opt, storage_opt
from ray_conductor.lite.ppo import PPOSettings


@dataclass
class TriggerConfig:
    every_rows: int | None = opt(200, "train after this many new rewarded rows (null: never "
                                      "by count)", min=1)
    every_minutes: float | None = opt(60.0, "train after this long (null: never by time)",
                                      gt=0)
    min_rows: int = opt(50, "a timed trigger needs at least this many new rewarded rows",
                        min=1)
    on_price_change: bool = opt(True, "train at the next round after a worker's price "
                                      "changes, new rows or not (the cached answers are "
                                      "re-priced: no call is made for the change)")


@dataclass
class EvaluationConfig:
    holdout: float = opt(0.25, "share of questions (by hashed id) held back, never trained "
                               "on", gt=0, max=0.9)
    rows: int = opt(400, "most recent held-back questions the paired test compares on",
                    min=2)
    min_rows: int = opt(30, "fewer held-back questions scored (and fewer held-back anchors): "
                            "skip the round (no decision); traffic this short cannot pass "
                            "a candidate, anchors that reach it decide", min=2)
    test: str = opt("t", "paired t-test or percentile bootstrap", choices=("t", "bootstrap"))
    alpha: float = opt(0.05, "one-sided level of the paired test", gt=0, max=0.5)
    min_gain: float = opt(0.002, "the lower bound of the mean reward gain must exceed this "
                                 "(0.002: 0.2 points of accuracy, or 3% of the demo's cost at "
                                 "the lite penalty; see the README)")
    bootstrap_samples: int = opt(2000, "resamples of the bootstrap", min=100)
    anchor_rows: int = opt(0, "held-back anchor questions (training.anchor's pool, in the "
                              "held-back slice, never trained on) also compared: a candidate "
                              "passes on them if it is not worse on held-back traffic", min=0)
    anchor_guard: bool = opt(True, "with held-back anchors, a candidate that passes on "
                                   "held-back traffic must not be significantly worse on the "
                                   "anchors (the same test, the other way round)")
    max_anchor_loss: float = opt(0.0, "the guard rejects only a mean anchor loss significantly "
                                      "above this", min=0)
    anchor_share: float = opt(0.5, "with a call budget and held-back anchors: the share of "
                                   "what is left for scoring after training that is kept for "
                                   "the anchors' cells (the rest scores held-back traffic "
                                   "first; 0: traffic first, anchors get what it leaves; "
                                   "0.5: better in shift.py (c) and (d), no worse in (b))",
                              min=0, max=1)


@dataclass
class RollbackConfig:
    window: int = opt(100, "rewarded rows of a promoted version before its live test", min=2)
    test: str = opt("paired", "paired: the promoted version's live rewards against the "
                              "previous version replayed on the same questions (a shift in "
                              "the traffic or a worker's answers is not blamed on the "
                              "policy); welch: against the previous version's own last live "
                              "rewards (other questions)", choices=("paired", "welch"))
    min_paired: int = opt(20, "fewer judgeable questions in the window (or a previous "
                              "version that cannot be replayed): the welch test", min=2)
    baseline: int = opt(200, "welch: most recent rewarded rows of the previous version it "
                             "is compared with", min=2)
    min_baseline: int = opt(20, "welch: fewer previous rows: keep the promotion untested",
                            min=2)
    alpha: float = opt(0.05, "one-sided level of the live drop test", gt=0, max=0.5)
    margin: float = opt(0.0, "roll back only if worse than the previous mean by more", min=0)


@dataclass
class AnchorConfig:
    pool: str | None = opt(None, "a pool spec whose questions every round re-asks of the "
                                 "current workers and trains on beside the traffic (null: "
                                 "none); see the README's online section")
    data_dir: str | None = opt(None, "where a bare anchor pool name is looked up (null: "
                                     "the app's data_dir)")
    split: str = opt("train", "the anchor pool's rows (never test)", choices=("train", "all"))
    rows: int = opt(1000, "anchor questions at most (a stable hashed sample); each costs one "
                          "call per worker whenever that worker's config changes", min=1)
    recorded: bool = opt(True, "the pool's recorded answers count as the workers' answers for "
                               "the config the loop first sees (free; re-priced on a price "
                               "change; asked again after a worker's model, parameters, "
                               "endpoint or pool changes); off: every anchor is asked")


@dataclass
class LMTrainingConfig:
    """The LM conductor's continued GRPO (`online.lm_trainer`), when the served version is of
    kind lm."""

    iterations: int = opt(4, "GRPO updates per round", min=1)
    questions: int = opt(8, "training questions per update", min=1)
    group_size: int = opt(8, "sampled plans per question (the GRPO group)", min=2)
    temperature: float = opt(1.0, "sampling temperature of the plans", gt=0)
    lr: float = opt(1e-5, "learning rate (the paper: 1e-6 on 7B; small models need more)",
                    gt=0)
    clip_eps: float = opt(0.2, "PPO clip range", gt=0)
    parse_fail: float = opt(-0.5, "reward of an unparsable sampled plan (below a wrong "
                                  "answer's 0)")
    select_rows: int = opt(64, "training questions whose greedy reward picks the best "
                               "iteration (the start included)", min=1)
    micro_batch_size: int | None = opt(None, "sequences per backward pass (null: the group "
                                             "size, so a group's shared prompt runs once; a "
                                             "micro-batch across questions runs each prompt "
                                             "in full, in far more memory)", min=1)
    bf16: bool = opt(False, "bf16 autocast in the updates")
    autocast: bool = opt(False, "bf16 autocast in generation")
    batch_size: int = opt(16, "prompts per generation batch", min=1)
    device: str = opt("cpu", "where the loop's learner and engine run (cuda on a GPU node)")


@dataclass
class TrainingConfig:
    iterations: int = opt(8, "warm-started PPO iterations per round", min=1)
    cost_penalty: float | None = opt(None, "reward = correct - cost_penalty * dollars (null: "
                                           "the serving policy's own)", min=0)
    temperature: float = opt(1.0, "divide the serving policy's logits by this before PPO: "
                                  "the same greedy decisions, more exploration", gt=0)
    new_worker_init: str = opt("like", "a new worker starts as a clone of the old worker "
                                       "with the closest single-call reward (like), as the "
                                       "mean of the old ones (average) or never chosen (never)",
                               choices=("like", "average", "never"))
    feature_noise: float = opt(0.0, "std of noise on the projected question features per "
                                    "episode (a few hundred questions are easy to memorise)",
                               min=0)
    refit_prior: bool = opt(True, "also train a candidate whose prior (the selector whose "
                                  "per-worker estimates the policy reads) is refit on the "
                                  "re-rolled rows, its choices cloned before PPO; the better "
                                  "run on the training rows wins (a worker whose answers or "
                                  "price changed is re-estimated at once)")
    refit_min_rows: int = opt(100, "fewer training questions: keep the old prior", min=1)
    bc_steps: int = opt(500, "behaviour-cloning updates after a prior refit", min=0)
    recent_rows: int = opt(400, "train on the new questions plus the most recent earlier ones "
                                "up to this many: after a shift the recent traffic is the new "
                                "world, and a few dozen new rows alone make a noisy candidate",
                           min=0)
    replay_ratio: float = opt(1.0, "older rows (beyond recent_rows) mixed in per new row, "
                                   "against forgetting", min=0)
    buffer_rows: int = opt(5000, "earlier training questions remembered", min=0)
    min_rows: int = opt(30, "fewer complete training questions: skip the round", min=1)
    anchor: AnchorConfig = opt(factory=AnchorConfig, help="known questions re-asked of the "
                                                         "current workers and trained on")
    lm: LMTrainingConfig = opt(factory=LMTrainingConfig, help="the LM conductor's continued "
                                                              "GRPO (a served lm version)")
    seed: int = opt(0, "random seed")
    torch_threads: int = opt(1, "torch threads of the loop (serving keeps the rest)", min=1)
    ppo: PPOSettings = opt(factory=lambda: PPOSettings(
        train_batch_size=1000, minibatch_size=250, num_epochs=4, lr=1e-4,
        num_envs_per_env_runner=32), help="RLlib PPO settings of the continued training")


@dataclass
class RerollConfig:
    calls_per_row: float | None = opt(None, "extra worker calls per rewarded traffic row at "
                                            "most (exploration, the paired test's cells, "
                                            "anchors and watches included), spent on the "
                                            "cells most likely to change a choice; served "
                                            "answers are free (null: the full re-roll, every "
                                            "worker's answer to every question)", min=0)
    explore_share: float = opt(0.5, "with calls_per_row: the share of a round's allowance "
                                    "exploration may spend before training (the rest: the "
                                    "cells the paired test needs, then carried over)",
                               min=0, max=1)
    reprice: bool = opt(True, "a price-only change re-prices cached answers from their "
                              "tokens and asks nothing (false: asks again, as before)")
    calls_per_round: int = opt(20000, "worker calls one round may make for counterfactual "
                                      "answers (cache hits are free)", min=1)
    concurrency: int = opt(32, "counterfactual calls in flight", min=1)
    timeout_s: float = opt(120.0, "one counterfactual call's deadline", gt=0)
    max_age_hours: float | None = opt(None, "ask a worker again when its cached answer is "
                                            "older than this (null: only when its config "
                                            "changes)", gt=0)
    drift_z: float | None = opt(4.0, "with calls_per_row: a worker whose served answers in a "
                                     "round's new rows are right this many standard errors "
                                     "more or less often than the serving policy estimates "
                                     "changed without a config change (a provider swapped "
                                     "its model): its answers from before those rows are "
                                     "void, as after a config change (null: off)", gt=0)
    drift_min_cells: int = opt(20, "served answers of a worker a round needs before it tests "
                                   "that worker for drift", min=2)


@dataclass
class FeedbackConfig:
    """What a posted reward may be. The loop ignores (and counts) logged rewards outside the
    range: by default the app's own `feedback_reward_range`, the range its `/v1/feedback`
    door refuses with a 400 (rewards logged before the door checked, or by another writer,
    still pass through here)."""

    reward_min: float | None = opt(None, "lowest posted reward taken as given, in the "
                                         "policy's reward units (null: the app's "
                                         "feedback_reward_range, else -1)")
    reward_max: float | None = opt(None, "highest posted reward taken as given (null: the "
                                         "app's feedback_reward_range, else 1)")


@dataclass
class RetrainConfig:
    app: str = opt("conductor", "the running Serve app")
    model: str = opt("conductor", "the served model (policy) to retrain")
    learn_from: list[str] = opt(factory=list, help="other served models whose rewarded rows "
                                                   "also teach (default: only `model`)")
    storage: str | None = storage_opt()
    state_dir: str = opt("online/{app}/{model}", "decisions.jsonl, state, answer cache, "
                                                 "candidates")
    registry: str | None = opt(None, "registry to publish into when `model` serves lite:DIR "
                                     "(null: STATE_DIR/registry)")
    log_dir: str | None = opt(None, "traffic log to read (null: the app's log_dir)")
    verifier: str = opt("pool", "judge unlabelled recorded questions with the app's replay "
                                "pool (pool) or not at all (none)", choices=("pool", "none"))
    correct_threshold: float = opt(0.5, "a posted reward at least this marks the served "
                                        "answer correct (when no label or verifier)")
    answer_format: str = opt("mc", "answer format of questions no verifier knows")
    once: bool = opt(False, "run one round and exit")
    force: bool = opt(False, "train in this round whatever the trigger says")
    mode: str = opt("loop", "loop: run here; actor: start the loop as a Ray actor beside "
                            "the app and return", choices=("loop", "actor"))
    poll_s: float = opt(30.0, "seconds between rounds", gt=0)
    max_rounds: int | None = opt(None, "stop after this many rounds (null: run until "
                                       "stopped)", min=1)
    train_while_watching: bool = opt(False, "train a new candidate before the last promotion "
                                            "passed its live watch")
    trigger: TriggerConfig = opt(factory=TriggerConfig, help="when to train")
    evaluation: EvaluationConfig = opt(factory=EvaluationConfig, help="the paired test")
    rollback: RollbackConfig = opt(factory=RollbackConfig, help="the live watch")
    training: TrainingConfig = opt(factory=TrainingConfig, help="the continued training")
    reroll: RerollConfig = opt(factory=RerollConfig, help="counterfactual answers")
    feedback: FeedbackConfig = opt(factory=FeedbackConfig, help="the range of posted rewards")
    ray: RayConfig = opt(factory=RayConfig, help="how to reach the Ray cluster the app runs "
                                                 "on (auto)")


def as_retrain_config(cfg: Any = None) -> RetrainConfig:
    """A typed `RetrainConfig` from a dataclass, a DictConfig, a plain dict or None."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ray_conductor.errors import ConfigError

    if isinstance(cfg, RetrainConfig):
        return cfg
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RetrainConfig), cfg or {})
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"bad retrain config at {key!r}: {str(e).strip().splitlines()[0]}") \
            from None
