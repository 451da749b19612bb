"""The LM tier's training pieces: the lite teacher's programs as SFT targets, the supervised
step, the cost-aware reward, one GRPO step and the overlapped rollout schedule."""

import asyncio
import threading
import time

import pytest
import torch

from ray_conductor.data.replay import Query
from ray_conductor.policy.conductor import ConductorConfig
from ray_conductor.policy.plan_grammar import PlanGrammar
from ray_conductor.policy.scripted_engine import ScriptedEngine
from ray_conductor.rl import schedule
from ray_conductor.rl.grpo import grpo_step, sft_epochs, staleness
from ray_conductor.rl.learner import Learner, LearnerConfig, batch_advantages
from ray_conductor.rl.rewards import RewardConfig, reward
from ray_conductor.rl.rollout import RolloutWorker
from ray_conductor.rl.types import Trajectory
from ray_conductor.rl.warm_start import balanced, program_key, program_workflow, shape
from ray_conductor.workers.base import Completion, WorkerInfo
from ray_conductor.workflow import parse, render
from ray_conductor.workflow.model import Step, Workflow
from ray_conductor.workflow.programs import VOTE, with_programs

MODEL = "tiny-smollm2"
NAMES = [w.name for w in with_programs([WorkerInfo("flash"), WorkerInfo("pro"),
                                         WorkerInfo("gpt-4o")])]


# -- SFT targets ---------------------------------------------------------------------------

def test_lite_episodes_become_plans_with_their_shape():
    # one call: the call
    assert program_workflow(["pro"], [1], False) == Workflow.single("pro", "Answer the question.")
    # called flash, then pro, stopped: only pro's answer is read, so the plan is pro alone
    chain = program_workflow(["flash", "pro"], [1, 2], False)
    assert chain.workers == ("pro",) and shape(chain) == "single"
    # flash and pro disagreed, gpt-4o was called, then a vote: escalate on disagreement
    cascade = program_workflow(["flash", "pro", "gpt-4o"], [1, 2, 2], True)
    assert cascade.workers == ("flash", "pro", "gpt-4o", VOTE)
    assert cascade[2].when == "disagree" and cascade[2].access == "all"
    assert cascade[3] == Step(VOTE, "Give the most common answer.", "all")
    assert shape(cascade) == "cascade"
    # three calls although the first two agreed: a plain vote of three
    vote = program_workflow(["flash", "pro", "gpt-4o"], [1, 1, 2], True)
    assert all(s.when is None for s in vote) and shape(vote) == "vote3"


@pytest.mark.parametrize("episode", [(["pro"], [1], False),
                                     (["flash", "pro", "gpt-4o"], [1, 2, 2], True),
                                     (["flash", "pro", "gpt-4o"], [1, 1, None], True)])
def test_sft_targets_render_parse_and_stay_in_the_constrained_language(episode):
    wf = program_workflow(*episode)
    text = render(wf)  # worker names, as conductor.worker_ids=name writes them
    assert parse(text, NAMES, max_steps=4) == wf
    grammar = PlanGrammar(NAMES, ids="name", max_steps=4, max_subtask_chars=60)
    state = grammar.start()
    for ch in text:
        state = grammar.feed(state, ch)
        assert state is not None, f"left the plan language at {ch!r} in {text!r}"
    assert grammar.complete(state)


# -- the cost-aware reward ---------------------------------------------------------------------

def test_cost_penalty_changes_the_reward_as_computed_by_hand():
    cfg = RewardConfig(cost_penalty_per_dollar=20.0)
    assert reward(True, True, cost=0.005, calls=1, cfg=cfg) == pytest.approx(1.0 - 0.1)
    assert reward(True, False, cost=0.012, calls=3, cfg=cfg) == pytest.approx(0.5 - 0.24)
    assert reward(False, False, cost=0.0, calls=0, cfg=cfg) == 0.0  # nothing ran, nothing paid
    assert reward(True, True, cost=0.005, calls=1) == 1.0  # the paper's reward: calls are free
    floor = RewardConfig(name="cost_aware", cost_penalty_per_dollar=200.0)
    assert reward(True, True, cost=0.005, calls=1, cfg=floor) == 0.5  # never below a wrong one
    # in a GRPO group of two right answers, the cheaper plan gets the positive advantage
    group = [Trajectory([1], [2], None, reward(True, True, c, 1, cfg), "q") for c in
             (0.0005, 0.005)]
    adv = batch_advantages(group, LearnerConfig())
    assert adv[0] > 0 > adv[1]


def test_program_key_names_workers_in_order_and_marks_conditional_steps():
    wf = Workflow((Step("flash", "Answer."), Step("pro", "Answer the question."),
                   Step("gpt-4o", "The answers differ.", "all", "disagree"),
                   Step("vote", "Most common.", "all")))
    assert program_key(wf) == "flash > pro > gpt-4o? > vote"
    # the subtask's wording is not part of the program
    assert program_key(Workflow.single("pro", "x")) == \
        program_key(Workflow.single("pro", "y")) == "pro"


def test_balanced_resample_flattens_the_teachers_program_mix():
    keys = ["pro"] * 640 + ["cascade"] * 160 + ["vote"] * 40  # a 16:4:1 teacher
    assert balanced(keys, 0.0) == list(range(len(keys)))  # off: as written, in order

    def shares(balance):
        drawn = [keys[i] for i in balanced(keys, balance, seed=1)]
        return {k: drawn.count(k) / len(drawn) for k in ("pro", "cascade", "vote")}

    full, half = shares(1.0), shares(0.5)
    assert all(abs(v - 1 / 3) < 0.05 for v in full.values())  # every program equally often
    # 0.5: shares proportional to sqrt(count), 8:4:2 of 14 (was 16:4:1 of 21)
    for k, want in (("pro", 8 / 14), ("cascade", 4 / 14), ("vote", 2 / 14)):
        assert abs(half[k] - want) < 0.05, (k, half)
    assert balanced(keys, 0.5, seed=1) == balanced(keys, 0.5, seed=1)  # seeded
    assert len(balanced(keys, 0.5)) == len(keys)


# -- the supervised step -----------------------------------------------------------------------

def _examples(learner: Learner, n: int = 4) -> list[Trajectory]:
    tok = learner.tokenizer
    wf = program_workflow(["flash", "pro", "gpt-4o"], [1, 2, 2], True)
    out = []
    for i in range(n):
        prompt = tok(f"Question {i}: which workers?", add_special_tokens=False)["input_ids"]
        target = tok(render(wf), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append(Trajectory(prompt, target, None, 1.0, f"sft:{i}", advantage=1.0))
    return out


@pytest.mark.slow
def test_a_tiny_warm_start_lowers_the_loss():
    learner = Learner(MODEL, LearnerConfig(lr=3e-3, micro_batch_size=2))
    examples = _examples(learner)
    curve = sft_epochs(examples, learner, epochs=4, batch=4, seed=0)
    assert len(curve) == 4 and all(b < a for a, b in zip(curve, curve[1:]))
    assert curve[-1] < curve[0] - 0.5


# -- one GRPO step and the schedule ------------------------------------------------------------

def _batches(learner: Learner, iterations: int) -> list[list[Trajectory]]:
    """Fixed rollout groups, with the versions an overlapped sampler would record."""
    tok = learner.tokenizer
    out = []
    for it in range(iterations):
        batch = []
        for q in range(2):
            for g, r in enumerate((1.0, 0.5)):
                prompt = tok(f"q{it}.{q}", add_special_tokens=False)["input_ids"]
                done = tok(render(Workflow.single(["flash", "pro"][g], "Answer.")),
                           add_special_tokens=False)["input_ids"]
                batch.append(Trajectory(prompt, done, None, r, f"{it}:{q}"))
        out.append(batch)
    return out


def _train(bound: int, iterations: int = 3) -> tuple[dict, list[int]]:
    learner = Learner(MODEL, LearnerConfig(lr=1e-3, micro_batch_size=4))
    batches = _batches(learner, iterations)
    synced, lags = [], []
    version = 0
    for it, batch in schedule.rollouts(lambda j, v: batches[j], lambda b: b, 0, iterations,
                                       bound=bound):
        step = grpo_step(batch, learner, synced.append, version, learner.cfg)
        version = step.version
        lags.append(step.staleness)
    assert synced == list(range(1, iterations + 1))  # one weight sync per update, in order
    return learner.state_dict(), lags


@pytest.mark.slow
def test_sync_and_overlapped_loops_make_the_same_update_on_the_same_samples():
    sync, _ = _train(bound=0)
    overlapped, _ = _train(bound=1)
    assert sync.keys() == overlapped.keys()
    assert all(torch.equal(sync[k], overlapped[k]) for k in sync)
    start = Learner(MODEL, LearnerConfig()).state_dict()
    assert any(not torch.equal(start[k], sync[k]) for k in sync)  # it did learn something


def test_staleness_is_the_oldest_samples_lag():
    ts = [Trajectory([1], [2], None, 0.0, info={"weights_version": v}) for v in (3, 2)]
    assert staleness(ts, 4) == 2 and staleness(ts, 3) == 1
    assert staleness([Trajectory([1], [2], None, 0.0)], 7) == 0  # no version recorded


@pytest.mark.parametrize("bound", [0, 1, 2])
def test_the_overlapped_schedule_never_trains_on_samples_staler_than_the_bound(bound):
    """A threaded sampler that, like `RolloutWorker.rollout`, waits for the minimum version
    it is asked for and records the version it sampled with; the trainer syncs without
    waiting. Every batch trained on is at most `bound` versions old, and with a bound the
    sampler really runs ahead (some batch is exactly `bound` old)."""
    loaded = {"version": 0}
    cond = threading.Condition()

    def sample(j: int, min_version: int) -> dict:
        with cond:
            cond.wait_for(lambda: loaded["version"] >= min_version, timeout=10)
            v = loaded["version"]
        time.sleep(0.01)
        return {"iteration": j, "version": v}

    got: dict[int, dict] = {}

    def submit(j: int, min_version: int) -> tuple[int, threading.Thread]:
        t = threading.Thread(target=lambda: got.__setitem__(j, sample(j, min_version)))
        t.start()
        return j, t

    def collect(handle: tuple[int, threading.Thread]) -> dict:
        j, t = handle
        t.join()
        return got[j]

    version, lags, order = 0, [], []
    for it, batch in schedule.rollouts(submit, collect, 0, 8, bound=bound):
        order.append(batch["iteration"])
        lags.append(version - batch["version"])
        time.sleep(0.02)  # the update
        version += 1
        with cond:  # the sync, not waited on by the trainer
            loaded["version"] = version
            cond.notify_all()
    assert order == list(range(8))
    assert max(lags) <= bound and min(lags) >= 0
    assert max(lags) == bound


def test_min_version_is_the_sync_loop_at_bound_zero():
    assert [schedule.min_version(j, start=2, version0=5, bound=0) for j in (2, 3, 4)] == [5, 6, 7]
    assert [schedule.min_version(j, start=2, version0=5, bound=1) for j in (2, 3, 4)] == [5, 5, 6]
    with pytest.raises(ValueError):
        list(schedule.rollouts(lambda j, v: j, lambda h: [], 0, 1, bound=-1))


class _VersionedEngine(ScriptedEngine):
    """Writes one plan; its weights are a version number, noted at every sampling call."""

    def __init__(self):
        super().__init__([], "model_id = [0]\nsubtasks = ['solve']\naccess_list = [[]]")
        self.weights, self.sampled_with = 0, []

    def generate(self, *args, **kw):
        self.sampled_with.append(self.weights)
        return super().generate(*args, **kw)

    def load_state_dict(self, state_dict):
        self.weights = state_dict["v"]


class _GatedPool:
    """Two workers; once `armed`, the next round stops in `workers()` (after the rollout
    looked up its weights version, before it samples) until `gate` opens."""

    def __init__(self):
        self.armed, self.entered, self.gate = False, threading.Event(), threading.Event()

    def workers(self):
        if self.armed:
            self.armed = False
            self.entered.set()
            self.gate.wait(30)
        return [WorkerInfo("flash"), WorkerInfo("pro")]

    async def complete(self, worker, messages, metadata=None, **kw):
        return Completion(worker, text="The answer is (A)", cost=0.1)


def test_a_swap_waits_for_the_round_under_way_and_a_rollout_records_what_sampled_it():
    """A weight swap asked for while a sampling round runs lands after it (the round's plans
    and the version it records are the old weights'), and the next rollout samples with the
    new ones; each rollout says where its time went."""
    engine, pool = _VersionedEngine(), _GatedPool()
    w = RolloutWorker(ConductorConfig(max_resamples=0, recursion_depth=0), RewardConfig(),
                      pool, judge=lambda qid, text: True, engine=engine)
    q = [Query("q1", "What?")]
    got: dict = {}
    pool.armed = True
    roll = threading.Thread(target=lambda: got.update(
        first=asyncio.run(w.rollout(q, 2, iteration=0))))
    roll.start()
    assert pool.entered.wait(30)
    swap = threading.Thread(target=w.load_weights, args=({"v": 1}, 1))
    swap.start()
    swap.join(0.3)
    assert swap.is_alive() and engine.weights == 0  # held back by the round under way
    pool.gate.set()
    roll.join(30)
    swap.join(30)
    assert engine.sampled_with == [0] and engine.weights == 1
    assert {t.info["weights_version"] for t in got["first"]} == {0}
    second = asyncio.run(w.rollout(q, 2, iteration=1, min_version=1))
    assert engine.sampled_with == [0, 1]
    assert {t.info["weights_version"] for t in second} == {1}
    info = second[0].info
    assert info["swap_s"] >= 0 and info["swap_wait_s"] == w.swaps[1]["wait_s"] > 0
    assert all(info[k] >= 0 for k in ("generate_s", "generate_cpu_s", "version_wait_s",
                                       "lock_wait_s", "workers_s"))
    c = info["clock"]
    assert c["start"] <= c["ready"] <= c["gen0"] <= c["gen1"] <= c["done"] and c["version"] == 1


@pytest.mark.slow
def test_a_tiny_run_warm_starts_from_the_lite_programs_then_overlaps(ray_cluster, tmp_path):
    from ray_conductor.config import load
    from ray_conductor.rl.trainer import TrainConfig, train

    cfg = load(TrainConfig, [
        "config=train_cpu", "model=tiny-smollm2", "backend=local", "iterations=3",
        "questions_per_iter=2", "group_size=2", f"run_dir={tmp_path}", "eval_at_end=false",
        "progress=false", "checkpoint_every=100", "conductor.max_new_tokens=16",
        "conductor.programs=true", "conductor.worker_ids=name",
        "warm_start.source=lite:default", "warm_start.limit=4", "warm_start.batch=2",
        "warm_start.epochs=1", "warm_start.balance=0.5",
        "warm_start.lr=1e-3", "overlap=true", "max_staleness=1",
        "graph.rollout.torch_threads=1", "graph.learner.torch_threads=1",
        "ray.namespace=test_lm_tier_run"])
    result = train(cfg)
    ws = result["warm_start"]
    assert ws["examples"] == 4 and ws["steps"] == 2 and ws["version"] == 1
    assert ws["balance"] == 0.5 and sum(ws["programs"].values()) == 4
    assert sum(ws["drawn"].values()) == 4 and set(ws["drawn"]) <= set(ws["programs"])
    rows = result["metrics"]
    assert [r["iteration"] for r in rows] == [-2, -1, 0, 1, 2]
    assert all(r["warm_start"] == 1 and r["learner/lr"] == 1e-3 for r in rows[:2])
    grpo = rows[2:]
    assert all(r["learner/lr"] == cfg.learner.lr for r in grpo)
    assert [r["staleness"] for r in grpo][0] == 0
    assert max(r["staleness"] for r in grpo) <= 1


def test_the_lm_tier_config_layers_over_the_cpu_one():
    from ray_conductor.config import load
    from ray_conductor.rl.trainer import TrainConfig

    cfg = load(TrainConfig, ["config=train_cpu", "config=train_lm"])
    assert cfg.warm_start.source == "lite:default" and cfg.overlap and cfg.max_staleness == 1
    assert cfg.reward.cost_penalty_per_dollar == 20.0 and cfg.conductor.constrain
    assert cfg.model == "smollm2" and cfg.pool == "demo"  # from train_cpu
    assert load(TrainConfig, ["config=train_cpu"]).warm_start.source is None  # off by default
