"""A new worker grows a trained lite policy's action space in place: the old decisions are
kept (exactly, where the new worker is not chosen), the grown policy saves and loads, and
continued training learns to use a better newcomer without starting over."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ray_conductor.errors import ConfigError
from ray_conductor.lite import LiteConductor, default_policy_dir
from ray_conductor.lite.env import observe
from ray_conductor.lite.episode import state_dim
from ray_conductor.online.extend import extend_workers, state_columns

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shipped():
    from ray_conductor.data.pools import load_pool
    from ray_conductor.lite.train import pool_table

    policy = LiteConductor.load(default_policy_dir())
    table = pool_table(load_pool("demo"), "test", policy.featurizer)
    return policy, table


def with_copy(table, worker: str, name: str = "newcomer", cost_factor: float = 0.1):
    """The table plus a worker answering as `worker` does, at a tenth of its price."""
    j = table.workers.index(worker)

    def add(a, f=1):
        return np.concatenate([a, a[:, j:j + 1] * f], axis=1)

    return replace(table, answers=add(table.answers), correct=add(table.correct),
                   cost=add(table.cost, cost_factor), responded=add(table.responded),
                   workers=[*table.workers, name], strength=np.append(table.strength, 1.0))


def test_state_columns_move_per_worker_blocks():
    # 2 workers -> 3, max_calls 2: called 0-1, answered 3-4, agrees 6-7, the rest from 9 on
    cols = state_columns(2, 3, 2)
    assert cols.tolist() == [0, 1, 3, 4, 6, 7, *range(9, 19)]
    assert len(cols) == state_dim(2, 2) and cols.max() < state_dim(3, 2)


def test_never_init_is_exactly_the_old_policy_on_the_bigger_pool(shipped):
    policy, table = shipped
    grown = extend_workers(policy, ["newcomer"], [1.0], init="never")
    old, new = policy.rollout(table), grown.rollout(with_copy(table, "gpt-4o"))
    assert new.workflows == old.workflows
    assert np.array_equal(new.correct, old.correct) and np.allclose(new.cost, old.cost)
    assert grown.workers == [*policy.workers, "newcomer"] and policy.net.n_actions == 14


def test_average_init_keeps_every_old_logit_until_the_newcomer_is_called(shipped):
    policy, table = shipped
    grown = extend_workers(policy, ["newcomer"], [1.0], init="average")
    feats = policy.question_features(table.features[:40])
    rng = np.random.default_rng(0)
    for f in feats:  # random partial episodes over the old workers
        ep_old, ep_new = policy.new_episode(), grown.new_episode()
        for w in rng.permutation(len(policy.workers))[: rng.integers(0, 4)]:
            ans = int(rng.integers(0, 3))
            ep_old.record(int(w), ans, 0.001)
            ep_new.record(int(w), ans, 0.001)
        o_old = observe(f, ep_old, policy.cost_scale)["observations"]
        o_new = observe(f, ep_new, grown.cost_scale)["observations"]
        with torch.no_grad():
            lo = policy.net.pi(torch.as_tensor(o_old))
            ln = grown.net.pi(torch.as_tensor(o_new))
            vo = policy.net.value(torch.as_tensor(o_old))
            vn = grown.net.value(torch.as_tensor(o_new))
        w = len(policy.workers)
        assert torch.allclose(ln[:w], lo[:w], atol=1e-5)  # old workers
        assert torch.allclose(ln[w + 1:], lo[w:], atol=1e-5)  # vote, stop
        assert torch.allclose(ln[w], lo[:w].mean(), atol=1e-4)  # the newcomer: their mean
        assert torch.allclose(vn, vo, atol=1e-5)
    old, new = policy.rollout(table), grown.rollout(with_copy(table, "gpt-4o"))
    newcomer = len(policy.workers)
    uses = np.array([newcomer in wf for wf in new.workflows])
    kept = [a == b for a, b, u in zip(old.workflows, new.workflows, uses) if not u]
    assert all(kept) and uses.mean() < 0.5


def test_like_init_clones_an_old_worker_and_ties_go_to_the_old_one(shipped):
    policy, table = shipped
    grown = extend_workers(policy, ["newcomer"], [1.0], init="like:gpt-4o")
    f = policy.question_features(table.features[:20])
    ep = grown.new_episode()
    obs = np.stack([observe(x, ep, grown.cost_scale)["observations"] for x in f])
    with torch.no_grad():
        logits = grown.net.pi(torch.as_tensor(obs))
    k = policy.workers.index("gpt-4o")
    assert torch.equal(logits[:, -3], logits[:, k])  # the newcomer scores as gpt-4o does
    first = [wf[0] for wf in grown.rollout(with_copy(table, "gpt-4o")).workflows]
    old_first = [wf[0] for wf in policy.rollout(table).workflows]
    assert first == old_first  # a tie goes to the old worker (the lower action index)


def test_a_grown_policy_saves_loads_and_refuses_what_it_cannot_grow(shipped, tmp_path):
    policy, table = shipped
    grown = extend_workers(policy, ["newcomer"], [1.0])
    grown.save(tmp_path / "p")
    back = LiteConductor.load(tmp_path / "p", [*policy.workers, "newcomer"])
    assert back.info["extended"] == [{"workers": ["newcomer"], "init": "average"}]
    t = with_copy(table, "gpt-4o")
    assert back.rollout(t).workflows == grown.rollout(t).workflows
    with pytest.raises(ConfigError, match="must be new"):
        extend_workers(policy, ["gpt-4o"], [1.0])
    with pytest.raises(ConfigError, match="init="):
        extend_workers(policy, ["x"], [1.0], init="random")
    with pytest.raises(ConfigError, match="not one of the policy's workers"):
        extend_workers(policy, ["x"], [1.0], init="like:nobody")
    assert policy.workers[-1] != "newcomer" and policy.net.n_actions == 14  # untouched


@pytest.mark.ray
@pytest.mark.slow
def test_continued_training_learns_to_call_a_better_newcomer(ray_cluster, shipped, tmp_path):
    """The pool gains a worker as accurate as gpt-4o at a hundredth of its price: the
    trainer grows the shipped policy, keeps training it on re-rolled answers through a real
    (replay) pool, and the grown policy calls the newcomer and earns more."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.online.config import TrainingConfig
    from ray_conductor.online.reroll import AnswerCache, Reroller
    from ray_conductor.online.rewards import Judge, LoggedRow, query_key
    from ray_conductor.online.trainer import Counterfactual, LiteTrainer

    pool_path = grown_pool(tmp_path / "pool.parquet", "gpt-4o", "newcomer", 0.01)
    data = load_pool(f"parquet:{pool_path}")
    rows = [LoggedRow(f"r{i}", 0.0, "online", "v1", q.query, q.query_id,
                      query_key(q.query_id, q.query), "", 0.0, 0.0, "verifier",
                      Judge("verifier", "mc", query_id=q.query_id))
            for i, q in enumerate(data.queries("test")[:200])]
    pool = ReplayPool(data)
    answers, stats = Reroller(pool, {w.name: "x" for w in pool.workers()}, AnswerCache(),
                              data).answers(rows, budget=10**6)
    assert stats.complete == 200 and stats.calls == 200 * 13
    cf = Counterfactual(rows, answers, list(pool.workers()))
    cfg = TrainingConfig(iterations=6)
    cfg.ppo.lr = 1e-3
    trainer = LiteTrainer(cfg, cost_penalty=30.0)
    out, figures = trainer.improve(default_policy_dir(), cf, tmp_path / "cand")
    assert figures["workers_added"] == ["newcomer"]
    assert figures["inits"]["newcomer"].startswith("like:")  # a clone of a similar worker
    assert figures["best_reward"] > figures["start_reward"] + 0.03
    cand = LiteConductor.load(out, [w.name for w in pool.workers()])
    table = trainer.table(cand, cf)
    uses = np.mean([len(cand.workers) - 1 in wf for wf in cand.rollout(table).workflows])
    assert uses > 0.5
    assert trainer.score(out, cf).mean() == pytest.approx(figures["best_reward"])


def grown_pool(path: Path, like: str, name: str, cost_factor: float) -> Path:
    """The demo pool plus worker `name`: `like`'s recorded answers at `cost_factor` x its
    price (a derived canonical table, written with the project's own table code)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ray_conductor.data.pools import DEMO_PATH
    from ray_conductor.data.table import conform, read_table, write_table

    table, report = read_table(DEMO_PATH)
    rows = table.filter(pc.equal(table["model"], like))
    rows = rows.set_column(rows.schema.get_field_index("model"), "model",
                           pa.array([name] * rows.num_rows, pa.string()))
    rows = rows.set_column(rows.schema.get_field_index("cost"), "cost",
                           pc.multiply(rows["cost"], cost_factor))
    return write_table(pa.concat_tables([table, conform(rows)]), path, report)


def test_a_pool_that_grows_gets_a_version_that_knows_the_newcomer(shipped, tmp_path):
    """`Retrainer.grow` before a redeploy: the served policy, grown with `init="never"`
    (unchanged behaviour), is published and promoted; continued training later clones the
    pending newcomer from a similar worker (`clone_worker`)."""
    from ray_conductor.online.config import RetrainConfig
    from ray_conductor.online.extend import clone_worker
    from ray_conductor.online.loop import Retrainer
    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.workers.base import WorkerInfo

    policy, table = shipped
    reg = PolicyRegistry(tmp_path / "registry")
    reg.publish(default_policy_dir(), kind="lite")
    reg.promote(1)

    class App:
        def reference(self, model):
            return f"registry:{reg.root}@{reg.promoted().version}"

    cfg = RetrainConfig(app="a", model="online", state_dir=str(tmp_path / "state"))
    loop = Retrainer(cfg, App(), trainer=None, read=lambda _: None)
    made = loop.grow([WorkerInfo("newcomer", "", 1.0, 2.0), WorkerInfo("gpt-4o", "", 1, 1)])
    assert made["kind"] == "extended" and made["workers"] == ["newcomer"]
    assert made["version"] == "v2" and reg.promoted().version == 2
    grown = LiteConductor.load(reg.get(2).path)
    assert grown.workers == [*policy.workers, "newcomer"]
    assert grown.info["pending_workers"] == ["newcomer"] and grown.strength[-1] == 3.0
    t = with_copy(table, "gpt-4o")
    assert grown.rollout(t).workflows == policy.rollout(table).workflows
    with pytest.raises(ConfigError, match="already knows"):
        loop.grow([WorkerInfo("newcomer", "", 1.0, 2.0)])

    clone_worker(grown, "newcomer", "gpt-4o")
    feats = grown.question_features(table.features[:10])
    obs = np.stack([observe(f, grown.new_episode(), grown.cost_scale)["observations"]
                    for f in feats])
    with torch.no_grad():
        logits = grown.net.pi(torch.as_tensor(obs))
    assert torch.equal(logits[:, -3], logits[:, policy.workers.index("gpt-4o")])


def test_a_refit_prior_is_kept_only_when_it_trains_better(ray_cluster, shipped, tmp_path):
    """The worker the shipped policy calls first most often starts answering like the
    weakest one. The trainer continues PPO from the old weights, and also refits the prior
    (the selector whose estimates the policy reads) on the new world's rows, clones its
    choices and continues PPO from there; the better of the two on the training rows is the
    candidate, and the old prior stays unless the refit one won. Below `refit_min_rows`
    nothing is refit."""
    from ray_conductor.online.config import TrainingConfig
    from ray_conductor.online.trainer import LiteTrainer

    class OnTable(LiteTrainer):  # the counterfactual rows, already a table
        def table(self, conductor, data):
            return data.reorder(conductor.workers)

    policy, table = shipped
    first = policy.rollout(table).summary(policy.workers)["first_worker"]
    hit = max(first, key=first.get)
    j, weak = table.workers.index(hit), table.workers.index("Phi-3-mini-4k-instruct")
    correct, answers = table.correct.copy(), table.answers.copy()
    correct[:, j], answers[:, j] = table.correct[:, weak], table.answers[:, weak]
    fit = replace(table, correct=correct, answers=answers).take(np.arange(300))

    trainer = OnTable(TrainingConfig(iterations=3), cost_penalty=30.0)
    out, figures = trainer.improve(default_policy_dir(), fit, tmp_path / "cand")
    refit, cand = figures["prior_refit"], LiteConductor.load(out)
    assert refit["rows"] == 300 and refit["bc"]["bc_agreement"] > 0.5
    assert figures["best_reward"] >= refit["best_reward"]  # the better run is the candidate
    assert figures["best_reward"] >= figures["start_reward"]
    keys = 300 if refit["kept"] else len(policy.prior.keys)
    assert len(cand.prior.keys) == keys

    few = OnTable(TrainingConfig(iterations=1, refit_min_rows=301), cost_penalty=30.0)
    out, figures = few.improve(default_policy_dir(), fit, tmp_path / "few")
    assert figures["prior_refit"] == {}
    assert len(LiteConductor.load(out).prior.keys) == len(policy.prior.keys)


def test_widened_prior_inputs_change_nothing_until_trained(shipped):
    """A prior that learnt a new worker shows the net one more estimate; the net reads it
    with zero weights, so every logit and value stays what it was, whatever the estimate."""
    from ray_conductor.online.trainer import widen_prior_inputs

    policy, table = shipped
    grown = extend_workers(policy, ["newcomer"], [1.0], "like:gpt-4o")
    net = grown.net
    n_q = net.obs_dim - state_dim(len(grown.workers), grown.max_calls)
    feats = grown.question_features(table.features[:20])
    obs = np.stack([observe(f, grown.new_episode(), grown.cost_scale)["observations"]
                    for f in feats])
    widen_prior_inputs(grown, 1)
    assert grown.net.obs_dim == net.obs_dim + 1 and grown.net is not net
    estimate = np.random.default_rng(0).random((len(obs), 1)).astype(np.float32)
    wide = np.concatenate([obs[:, :n_q], estimate, obs[:, n_q:]], axis=1)
    with torch.no_grad():
        assert torch.equal(grown.net.pi(torch.as_tensor(wide)), net.pi(torch.as_tensor(obs)))
        assert torch.equal(grown.net.vf(torch.as_tensor(wide)), net.vf(torch.as_tensor(obs)))


def test_a_prior_refit_learns_a_newcomer_the_old_prior_never_saw(shipped, tmp_path):
    """The pool gains a worker answering as gpt-4o does at a tenth of its price. The
    served prior has no estimate of it, so updating it (a few partial rows) cannot teach the
    net to call it; with `refit_min_rows` rows observing the newcomer (recorded anchors) the
    prior is fit anew over every worker, the net reads the newcomer's estimate and the
    cloned choices call it; with fewer, the old prior is updated and never names it."""
    from ray_conductor.online.config import TrainingConfig
    from ray_conductor.online.trainer import LiteTrainer, singles

    policy, table = shipped
    t = with_copy(table, "gpt-4o").take(np.arange(300))
    seen = np.ones((300, len(t.workers)), bool)
    seen[250:, -1] = False  # the newcomer observed on 250 rows (served traffic: fewer)
    t = replace(t, observed=seen)
    grown = extend_workers(policy, ["newcomer"], [1.0], "like:gpt-4o")
    old = len(singles(grown.prior.programs))

    trainer = LiteTrainer(TrainingConfig(refit_min_rows=200, bc_steps=300), 30.0)
    sel, how = trainer._new_prior(grown, t)
    assert how == "fit" and len(singles(sel.programs)) == old + 1
    trainer._prior_fit, trainer._judge_table = (sel, how), None
    trainer._judge_table = trainer._imputed(grown, t)
    before = np.mean([len(grown.workers) - 1 in wf for wf in grown.rollout(
        trainer._judge_table).workflows])
    refit = trainer._refit_prior(grown, t)
    assert refit["workers_estimated"] == ["newcomer"] and not refit["updated"]
    assert grown.net.obs_dim == policy.net.obs_dim + 3 + 1  # its state (3) and estimate (1)
    uses = np.mean([len(grown.workers) - 1 in wf for wf in grown.rollout(
        trainer._judge_table).workflows])
    assert before == 0 and uses > 0.2  # clones never chose it (ties go to the old one)

    few = LiteTrainer(TrainingConfig(refit_min_rows=251), 30.0)
    sel, how = few._new_prior(extend_workers(policy, ["newcomer"], [1.0], "like:gpt-4o"), t)
    assert how == "updated" and len(singles(sel.programs)) == old
