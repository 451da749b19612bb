"""The online loop's decisions, round by round, without Ray: a real policy registry, state
and decision log; the app (served references and the swap), the trainer and the traffic log
are small stand-ins with known answers, so each branch is forced: skip, reject, promote,
keep, roll back, adopt a served lite:DIR, and a failed hot-swap that leaves the registry as
it was. (The end-to-end test drives the same loop against a real Serve app.)"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from online_stubs import App

from ray_conductor.errors import ConfigError
from ray_conductor.online.config import RetrainConfig
from ray_conductor.online.loop import Retrainer
from ray_conductor.online.trainer import Counterfactual
from ray_conductor.policy.registry import PolicyRegistry
from ray_conductor.workers.base import Completion

class Trainer:
    """A policy directory's quality is a number in it; `improve` adds `gain`; `score` gives
    each held-back question its quality plus fixed noise."""

    kind = "lite"

    def __init__(self, gain):
        self.gain, self.trained_on = gain, []

    def improve(self, policy_dir, data: Counterfactual, out_dir):
        self.trained_on.append(len(data))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "q").write_text(str(quality(policy_dir) + self.gain))
        return out_dir, {"start_reward": 0.0, "best_reward": self.gain, "wall_s": 0.0}

    def score(self, policy_dir, data: Counterfactual):
        noise = np.random.default_rng(0).normal(0, 0.05, len(data))
        return quality(policy_dir) + noise


def quality(path):
    return float((Path(path) / "q").read_text())


class Log:
    """The traffic log: rows are appended by the test, with a reward each."""

    def __init__(self):
        self.rows = []
        self.t = 1000.0

    def add(self, n, version, reward, model="online", start=0, answer="A", label="A"):
        for i in range(start, start + n):
            self.t += 1.0
            self.rows.append({"request_id": f"r{len(self.rows)}", "status": 200, "model": model,
                              "policy_version": version, "question": f"question {i}",
                              "query_id": None, "answer": f"The answer is ({answer})",
                              "cost": 0.0, "reward": reward, "label": label,
                              "time": pd.Timestamp(self.t, unit="s", tz="UTC")})

    def __call__(self, _log_dir):
        return pd.DataFrame(self.rows)


def setup(tmp_path, gain, **over):
    reg = PolicyRegistry(tmp_path / "registry")
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "q").write_text("0.5")
    (v1 / "lite.json").write_text(json.dumps({"info": {"trained": {"cost_penalty": 1.0}}}))
    reg.publish(v1, kind="lite")
    reg.promote(1)
    cfg = RetrainConfig(app="a", model="online", state_dir=str(tmp_path / "state"))
    cfg.trigger.every_rows, cfg.trigger.every_minutes = 40, None
    cfg.evaluation.min_rows, cfg.training.min_rows = 5, 5
    cfg.rollback.window, cfg.rollback.min_baseline, cfg.rollback.min_paired = 10, 10, 5
    cfg.training.cost_penalty = 0.0
    for k, v in over.items():
        setattr(cfg, k, v)
    app, log, trainer = App(f"registry:{reg.root}@1"), Log(), Trainer(gain)
    loop = Retrainer(cfg, app, lambda penalty, kind="lite": trainer, read=log,
                     clock=lambda: log.t)
    return loop, app, log, trainer, reg


def kinds(decisions):
    return [d["kind"] for d in decisions]


def test_no_trigger_no_training_then_a_better_candidate_is_promoted(tmp_path):
    loop, app, log, trainer, reg = setup(tmp_path, gain=0.2)
    log.add(39, "v1", 0.5)
    assert loop.round() == [] and trainer.trained_on == []
    log.add(1, "v1", 0.5, start=39)
    made = loop.round()
    assert kinds(made) == ["trained", "evaluated", "promoted"]
    evaluated, promoted = made[1], made[2]
    assert evaluated["test"]["passed"] and evaluated["candidate_mean"] > evaluated["serving_mean"]
    assert 5 <= evaluated["n"] < 40 and made[0]["train_rows"] + evaluated["n"] == 40
    assert promoted["version"] == "v2" and promoted["previous"] == "v1"
    assert app.swaps == [f"registry:{reg.root}@2"] and reg.promoted().version == 2
    assert reg.history()[-1]["figures"]["n"] == evaluated["n"]
    assert app.pool.calls == 40 * 2  # every worker re-asked once per question
    assert loop.decisions.read()[-1]["kind"] == "promoted"  # on disk too
    from ray_conductor.online.command import describe

    assert "candidate 0.7" in describe(evaluated) and "promoted online v2" in describe(promoted)
    assert not (tmp_path / "state" / "candidates" / "round-00001").exists()  # registry has it


def test_a_candidate_that_is_no_better_is_rejected(tmp_path):
    loop, app, log, trainer, reg = setup(tmp_path, gain=0.0)
    log.add(40, "v1", 0.5)
    made = loop.round()
    assert kinds(made) == ["trained", "evaluated", "rejected"]
    assert not made[1]["test"]["passed"] and "lower bound" in made[2]["reason"]
    assert app.swaps == [] and reg.promoted().version == 1 and len(reg.versions()) == 1


def test_too_few_questions_skip_and_new_rows_are_counted_once(tmp_path):
    loop, app, log, trainer, reg = setup(tmp_path, gain=0.2)
    loop.cfg.evaluation.min_rows = 500
    log.add(40, "v1", 0.5)
    assert kinds(loop.round()) == ["skipped"]
    assert loop.round() == []  # the same 40 rows do not trigger twice
    log.add(40, "v1", 0.5, start=40)
    (skip,) = loop.round()
    assert skip["kind"] == "skipped" and skip["new_rows"] == 40
    assert app.pool.calls == 80 * 2  # the first 40 were answered from the cache


def test_a_promotion_whose_live_reward_drops_is_rolled_back(tmp_path):
    loop, app, log, trainer, reg = setup(tmp_path, gain=0.2)
    loop.cfg.rollback.test = "welch"  # against v1's own live rewards (the paired test: below)
    log.add(40, "v1", 0.5)
    assert kinds(loop.round())[-1] == "promoted"
    log.add(9, "v2", 0.0, start=100)
    assert loop.round() == []  # 9 of the 10 rows the watch waits for
    log.add(1, "v2", 0.0, start=109)
    (back,) = loop.round()
    assert back["kind"] == "rolled_back" and back["version"] == "v1"
    assert back["test"]["dropped"] and back["test"]["mean_old"] == 0.5
    assert app.swaps[-1] == f"registry:{reg.root}@1" and reg.promoted().version == 1
    assert reg.history()[-1]["action"] == "rollback" and loop.state.watch is None


def test_a_promotion_that_holds_is_kept_and_training_waits_for_the_watch(tmp_path):
    loop, app, log, trainer, reg = setup(tmp_path, gain=0.2)
    log.add(40, "v1", 0.5)
    loop.round()
    log.add(45, "v2", 0.55, start=100)  # enough rows to trigger, but v2 is on watch ...
    made = loop.round()
    kept = made[0]
    assert kinds(made)[0] == "kept" and kept["test_kind"] == "paired"
    assert not kept["test"]["passed"] and kept["live_mean"] == 1.0  # label A, answer A
    from ray_conductor.online.command import describe

    assert "replayed on the same 10 questions" in describe(kept)
    assert kinds(made)[1:] == ["trained", "evaluated", "promoted"]  # ... which ends first
    assert trainer.trained_on[1] > trainer.trained_on[0]  # new rows plus replayed ones


class GoodTrainer(Trainer):
    """Every version asks `good`: a question's reward is whether good's re-rolled answer is
    right (the world, not the version, decides)."""

    def score(self, policy_dir, data: Counterfactual):
        return np.array([float(data.answers[r.key]["good"].correct) for r in data.rows])


@pytest.mark.parametrize("served,label,test,expected", [
    ("B", "A", "paired", "rolled_back"),  # v2 answers wrong where v1 (good) is right
    ("A", "C", "paired", "kept"),  # the questions got harder for every version
    ("A", "C", "welch", "rolled_back"),  # ... which the unpaired test blames on v2
])
def test_the_paired_watch_blames_a_version_only_for_what_it_did_worse(
        tmp_path, served, label, test, expected):
    loop, app, log, _, reg = setup(tmp_path, gain=0.2)
    loop.cfg.rollback.test = test
    log.add(40, "v1", None)  # judged by their label: v1's live reward is 1.0
    assert kinds(loop.round())[-1] == "promoted"
    loop._trainer = GoodTrainer(0.2)  # from now on the replay scores by good's answers
    calls = app.pool.calls
    log.add(10, "v2", None, start=100, answer=served, label=label)
    (watch,) = loop.round()
    assert watch["kind"] == expected
    if test == "paired":
        assert watch["test_kind"] == "paired" and watch["n"] == 10
        assert watch["live_mean"] == (1.0 if served == label else 0.0)
        assert watch["previous_replayed_mean"] == (1.0 if label == "A" else 0.0)
        assert app.pool.calls == calls + 10 * 2  # the window's questions re-rolled
    else:
        assert watch["test"]["mean_old"] == 1.0 and watch["test"]["mean_new"] == 0.0
    assert reg.promoted().version == (1 if expected == "rolled_back" else 2)
    if expected == "rolled_back":
        assert app.swaps[-1] == f"registry:{reg.root}@1" and "v2" in watch["reason"]


def test_the_paired_watch_falls_back_to_welch_without_judgeable_questions(tmp_path):
    loop, app, log, trainer, reg = setup(tmp_path, gain=0.2)
    log.add(40, "v1", 0.5)
    loop.round()
    log.add(10, "v2", 0.0, start=100, label=None)  # a posted reward only: nothing to replay
    (back,) = loop.round()
    assert back["kind"] == "rolled_back" and back["test"]["dropped"]
    assert "0 judgeable questions of 10" in back["paired_skipped"]


def test_a_failed_hot_swap_leaves_the_previous_version_promoted(tmp_path):
    loop, app, log, trainer, reg = setup(tmp_path, gain=0.2)
    app.fail_swap = True
    log.add(40, "v1", 0.5)
    made = loop.round()
    assert kinds(made) == ["trained", "evaluated", "failed"]
    assert reg.promoted().version == 1 and loop.state.watch is None


def test_a_served_lite_dir_is_adopted_into_a_registry(tmp_path):
    loop, app, log, trainer, reg = setup(tmp_path, gain=0.2)
    lite = tmp_path / "lite_policy"
    shutil.copytree(reg.get(1).path, lite)
    app.ref = f"lite:{lite}"
    log.add(10, "lite-lite_policy", 0.5)
    (adopted,) = loop.round()
    assert adopted["kind"] == "adopted" and adopted["source"] == f"lite:{lite}"
    own = PolicyRegistry(tmp_path / "state" / "registry")
    assert app.ref == f"registry:{own.root}@1" and own.promoted().kind == "lite"


def test_only_registry_policies_of_a_trainable_kind_are_retrained(tmp_path):
    loop, app, _, _, reg = setup(tmp_path, gain=0.2)
    app.ref = "knn"
    with pytest.raises(ConfigError, match="continues a policy in a registry"):
        loop.round()
    plans = tmp_path / "scripted"
    plans.mkdir()
    (plans / "plans.json").write_text("{}")
    reg.promote(reg.publish(plans, kind="scripted").version)
    app.ref = f"registry:{reg.root}@2"
    with pytest.raises(ConfigError, match="of kind 'scripted'; online retraining trains lite "
                                          "and lm policies"):
        loop.round()


def test_questions_with_a_transient_failure_wait_for_the_next_round(tmp_path):
    """Regression: after a redeploy the loop called the old, dead proxies; every failure went
    into the table as a worker that did not answer, and the round trained and evaluated on
    that. A transient failure now leaves its question out (and uncached) until it answers."""
    loop, app, log, trainer, reg = setup(tmp_path, gain=0.2)

    async def gone(worker, messages, **params):
        app.pool.calls += 1
        return Completion(worker=worker, error="worker proxy is unreachable",
                          error_code="proxy_unreachable")

    real, app.pool.complete = app.pool.complete, gone
    log.add(40, "v1", 0.5)
    (skip,) = loop.round()
    assert skip["kind"] == "skipped" and skip["reroll"]["retry"] == 40
    assert skip["train_rows"] == skip["held_rows"] == 0 and trainer.trained_on == []
    assert len(loop.cache) == 0
    app.pool.complete = real
    log.add(40, "v1", 0.5, start=40)
    assert kinds(loop.round()) == ["trained", "evaluated", "promoted"]
    assert trainer.trained_on[0] >= 40  # the 40 that failed were asked again


def test_anchor_questions_train_beside_the_traffic_and_are_re_asked_only_after_a_change(
        tmp_path):
    """`training.anchor`: known questions from a pool, re-asked of the current workers and
    trained on with the traffic; never held back; asked again only when a worker's config
    fingerprint changes (a price, a model), else answered from the cache."""
    from ray_conductor.config import default_data_dir
    from ray_conductor.online.anchor import ANCHOR
    from ray_conductor.online.rewards import held_back

    loop, app, log, trainer, reg = setup(tmp_path, gain=0.0)
    loop.cfg.training.anchor.pool, loop.cfg.training.anchor.rows = "demo", 25
    loop.cfg.training.anchor.data_dir = default_data_dir()
    log.add(40, "v1", 0.5)
    first = loop.round()[0]
    assert first["kind"] == "trained" and first["anchor_rows"] == 25
    assert trainer.trained_on[0] == first["train_rows"] == 25 + 40 - first["held_rows"]
    anchors = loop._anchor_rows()
    assert len(anchors) == 25 and all(r.model == ANCHOR and r.judge.kind == "verifier"
                                      for r in anchors)
    assert not any(held_back(r.key, loop.cfg.evaluation.holdout) for r in anchors)
    assert app.pool.calls == (40 + 25) * 2
    log.add(40, "v1", 0.5, start=40)
    loop.round()
    assert app.pool.calls == (80 + 25) * 2  # anchors (and old traffic) from the cache
    prints = {"cheap": "fp", "good": "fp-new-price"}
    app.rollout_pool = lambda: (app.pool, prints)
    log.add(40, "v1", 0.5, start=80)
    third = loop.round()[0]
    assert third["anchor_rows"] == 25
    # the changed worker is asked everything again (anchors included), the other only the new
    assert app.pool.calls - (80 + 25) * 2 == third["reroll"]["calls"] >= 25 + 40


def test_answers_past_the_age_limit_are_asked_again_in_a_later_round(tmp_path):
    """With `reroll.max_age_hours`, a round re-asks the workers whatever they answered longer
    ago than that, though no config changed (a model swapped under its name shows)."""
    loop, app, log, trainer, reg = setup(tmp_path, gain=0.0)
    loop.cfg.reroll.max_age_hours = 1.0
    loop = Retrainer(loop.cfg, app, lambda penalty, kind="lite": trainer, read=log,
                     clock=lambda: log.t)
    log.add(40, "v1", 0.5)
    loop.round()
    assert app.pool.calls == 40 * 2
    log.add(40, "v1", 0.5, start=40)
    second = loop.round()[0]
    assert app.pool.calls == 80 * 2 and second["reroll"]["expired"] == 0  # 40 s later
    log.t += 2 * 3600
    log.add(40, "v1", 0.5, start=80)
    third = loop.round()[0]
    assert third["reroll"]["expired"] > 0
    assert third["reroll"]["calls"] == 2 * third["reroll"]["rows"]  # every answer asked again
    assert app.pool.calls == 80 * 2 + third["reroll"]["calls"]


def test_an_anchor_pool_that_cannot_be_loaded_is_a_one_line_config_error(tmp_path):
    loop, app, log, trainer, reg = setup(tmp_path, gain=0.2)
    loop.cfg.training.anchor.pool = f"parquet:{tmp_path / 'missing.parquet'}"
    loop.cfg.training.anchor.data_dir = str(tmp_path)
    log.add(40, "v1", 0.5)
    with pytest.raises(ConfigError, match=r"training.anchor.pool=.*cannot be loaded") as e:
        loop.round()
    assert "\n" not in str(e.value) and trainer.trained_on == []


class AnchorTrainer(Trainer):
    """The candidate is exactly `traffic_gain` better on traffic (too small a slice for the
    paired test to see a gain), and `gain` better on anchor questions give or take noise
    (sd 0.42 per question)."""

    def __init__(self, gain, traffic_gain):
        super().__init__(gain)
        self.traffic_gain = traffic_gain

    def score(self, policy_dir, data: Counterfactual):
        from ray_conductor.online.anchor import ANCHOR

        serving = quality(policy_dir) == 0.5
        on_anchors = np.array([r.model == ANCHOR for r in data.rows])
        noise = np.random.default_rng(0 if serving else 1).normal(0, 0.3, len(data))
        if serving:
            return 0.5 + noise
        noise[~on_anchors] = np.random.default_rng(0).normal(0, 0.3, len(data))[~on_anchors]
        return 0.5 + noise + np.where(on_anchors, self.gain, self.traffic_gain)


@pytest.mark.parametrize("traffic_gain,expected", [(0.0, "promoted"), (-0.05, "rejected")])
def test_held_back_anchors_promote_a_candidate_the_traffic_alone_cannot_tell(
        tmp_path, traffic_gain, expected):
    """The held-back traffic shows no gain; 200 held-back anchors show one, and then the
    candidate is promoted unless its gain on the traffic is negative."""
    from ray_conductor.config import default_data_dir
    from ray_conductor.online.rewards import held_back

    loop, app, log, _, reg = setup(tmp_path, gain=0.1)
    trainer = AnchorTrainer(0.1, traffic_gain)
    loop.make_trainer = lambda penalty, kind="lite": trainer
    a = loop.cfg.training.anchor
    a.pool, a.rows, a.data_dir = "demo", 25, default_data_dir()
    loop.cfg.evaluation.anchor_rows = 200
    log.add(40, "v1", 0.5)
    made = loop.round()
    assert kinds(made) == ["trained", "evaluated", expected]
    ev = made[1]
    assert made[0]["held_anchor_rows"] == ev["anchors"]["n"] == 200
    assert not ev["test"]["passed"] and ev["anchors"]["test"]["passed"]
    assert ev["passed_by"] == ("anchors" if expected == "promoted" else None)
    held = loop._anchor_rows(held=True)
    assert all(held_back(r.key, loop.cfg.evaluation.holdout) for r in held)
    assert not {r.key for r in held} & {r.key for r in loop._anchor_rows()}
    if expected == "rejected":
        assert "traffic gain is negative" in made[2]["reason"]
    else:
        assert "held-back anchors" in made[2]["reason"] and reg.promoted().version == 2
    from ray_conductor.online.command import describe

    assert "200 held-back anchors" in describe(ev)


@pytest.mark.parametrize("guard,expected", [(True, "rejected"), (False, "promoted")])
def test_a_traffic_pass_is_refused_when_the_anchors_get_significantly_worse(
        tmp_path, guard, expected):
    """Better on held-back traffic (by 0.05 on every question), 0.1 worse on 200 held-back
    anchors: the guard turns the pass down; without it the candidate is promoted."""
    from ray_conductor.config import default_data_dir

    loop, app, log, _, reg = setup(tmp_path, gain=-0.1)
    trainer = AnchorTrainer(-0.1, 0.05)
    loop.make_trainer = lambda penalty, kind="lite": trainer
    a = loop.cfg.training.anchor
    a.pool, a.rows, a.data_dir = "demo", 25, default_data_dir()
    loop.cfg.evaluation.anchor_rows, loop.cfg.evaluation.anchor_guard = 200, guard
    log.add(40, "v1", 0.5)
    made = loop.round()
    assert kinds(made) == ["trained", "evaluated", expected]
    ev = made[1]
    assert ev["test"]["passed"] and not ev["anchors"]["test"]["passed"]
    assert ("worse" in ev["anchors"]) == guard
    if guard:
        assert ev["anchors"]["worse"]["passed"] and ev["guarded"] and ev["passed_by"] is None
        assert "significantly worse" in made[2]["reason"] and reg.promoted().version == 1
    else:
        assert ev["passed_by"] == "traffic" and reg.promoted().version == 2


def test_a_round_whose_budget_scores_too_little_traffic_is_decided_on_the_anchors(tmp_path):
    """A call budget that, with `anchor_share` 0.9, buys the cells of fewer held-back traffic
    questions than `min_rows` but of enough held-back anchors: the round is not skipped,
    the anchors decide. With a quarter of that budget neither reaches `min_rows`: skipped,
    naming both counts."""
    from ray_conductor.config import default_data_dir

    loop, app, log, _, reg = setup(tmp_path, gain=0.5)
    trainer = AnchorTrainer(0.5, 0.0)
    loop.make_trainer = lambda penalty, kind="lite": trainer
    loop.cfg.reroll.calls_per_row, loop.cfg.evaluation.anchor_share = 2.0, 0.9
    a = loop.cfg.training.anchor
    a.pool, a.rows, a.data_dir = "demo", 25, default_data_dir()
    loop.cfg.evaluation.anchor_rows = 200
    log.add(40, "v1", 0.5)
    made = loop.round()
    assert kinds(made) == ["trained", "evaluated", "promoted"], made[-1].get("reason")
    ev = made[1]
    assert ev["n"] < 5 <= ev["anchors"]["n"] and ev["passed_by"] == "anchors"
    assert app.pool.calls <= 2.0 * 40 and reg.promoted().version == 2
    (tmp_path / "plain").mkdir()
    loop2, app2, log2, _, _ = setup(tmp_path / "plain", gain=0.5)
    loop2.make_trainer = lambda penalty, kind="lite": trainer
    loop2.cfg.reroll.calls_per_row = 0.5  # too little for either to reach min_rows
    a = loop2.cfg.training.anchor
    a.pool, a.rows, a.data_dir = "demo", 25, default_data_dir()
    loop2.cfg.evaluation.anchor_rows = 200
    log2.add(40, "v1", 0.5)
    made = loop2.round()
    assert kinds(made) == ["trained", "skipped"], made
    assert re.search(r"only \d held-back questions and \d held-back anchors could be scored",
                     made[-1]["reason"])
