"""The LM conductor's program head: the ridge read-out and its settings, the files, plans in
the plan language that run as programs, the conductor planning with it, and `fit-head` end to
end on a records pool with the tiny model (the head learns which worker each kind of question
needs from the LM's hidden state, under the budget)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from ray_conductor.errors import ConfigError
from ray_conductor.policy.program_head import (
    HEAD_ARRAYS, HEAD_JSON, ProgramHead, fit_head, ridge, ridge_oof, select,
)
from ray_conductor.workflow import parse, render
from ray_conductor.workflow.programs import VOTE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy(n=400, informative=True, seed=0):
    """Program 0 (cheap) is right where feature 0 > 0, program 1 (dear) everywhere else."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    side = x[:, 0] > 0 if informative else rng.random(n) > 0.5
    if not informative:
        x[:, 0] = rng.normal(size=n)
    correct = np.stack([side, ~side], axis=1).astype(float)
    cost = np.tile([0.001, 0.01], (n, 1))
    return x, correct, cost, np.arange(n) % 5


def test_ridge_recovers_a_linear_map_and_oof_never_sees_its_own_row():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    y = x @ np.array([[1.0], [-2.0], [0.5], [0.0]]) + 3.0
    assert np.allclose(ridge(x, y, x, 1e-6), y, atol=1e-3)
    spike = y.copy()
    spike[7] += 1000.0  # a row's own target must not reach its out-of-fold prediction
    oof = ridge_oof(x, spike, np.arange(300) % 5, 1e-6)
    assert abs(oof[7, 0] - y[7, 0]) < 50


def test_select_reads_the_deciding_feature_under_the_budget():
    x, correct, cost, folds = toy()
    best = select(x, correct, cost, folds, budget=0.0065)
    assert best["cv_accuracy"] > 0.9 and best["cv_cost"] <= 0.0065
    blind = select(*toy(informative=False)[:3], folds, budget=0.0065)
    assert blind["cv_accuracy"] < 0.65  # nothing to read: no better than a coin


def test_select_with_no_setting_under_the_budget_takes_the_cheapest():
    x, correct, cost, folds = toy()
    got = select(x, correct, cost, folds, budget=0.0001)
    assert got["over_budget"] == 1.0 and got["cv_cost"] == pytest.approx(0.001)


def head_for(x, correct, cost, folds, budget=0.0065):
    return fit_head(x, correct, cost, folds, ["cheap", "dear", "third"],
                    [("cheap",), ("dear",)], budget)


def test_fit_head_chooses_by_the_feature_and_round_trips_its_files(tmp_path):
    x, correct, cost, folds = toy()
    head = head_for(x, correct, cost, folds)
    picks = head.choose(x)
    assert (correct[np.arange(len(x)), picks]).mean() > 0.95
    assert head.meta["rows"] == 400 and head.meta["budget"] == 0.0065
    head.save(tmp_path / "h")
    again = ProgramHead.load(tmp_path / "h")
    assert np.array_equal(again.choose(x), picks) and again.lam == head.lam
    # a program calling a worker the pool does not offer is never chosen
    assert set(head.choose(x, offered=["dear"])) == {1}
    assert set(head.choose(x, offered=["third"])) == {-1}


def test_a_cascade_is_written_in_the_plan_language_and_parses():
    x, correct, cost, folds = toy(n=50)
    head = fit_head(x, np.hstack([correct, correct[:, :1]]), np.hstack([cost, cost[:, :1]]),
                    folds, ["a", "b", "c"], [("a",), ("b",), ("a", "b", "c")], 1.0)
    wf = head.workflow(2)
    assert [s.worker for s in wf] == ["a", "b", "c", VOTE]
    assert wf[2].when == "disagree" and wf[3].access == "all"
    assert parse(render(wf), ["a", "b", "c", VOTE]) == wf
    assert head.describe(2) == "a and b agree, else vote with c"
    assert [s.worker for s in head.workflow(0)] == ["a"]


def test_where_answers_cannot_be_compared_the_head_chooses_a_single_worker():
    """A vote over free text or code picks nothing (`no_comparable_answer`): on such a row the
    head's best single worker is chosen instead of a better-predicted cascade, and nothing
    where no single worker is offered."""
    x, correct, cost, folds = toy(n=50)
    cascade_right = np.ones((50, 1))  # the cascade is right everywhere: it wins where allowed
    head = fit_head(x, np.hstack([correct, cascade_right]), np.hstack([cost, cost[:, :1]]),
                    folds, ["a", "b", "c"], [("a",), ("b",), ("a", "b", "c")], 1.0)
    rows = x[:4]
    assert set(head.choose(rows, ["a", "b", "c", VOTE], [True] * 4)) == {2}
    only = head.choose(rows, ["a", "b", "c", VOTE], [True, False, True, False])
    assert only[0] == only[2] == 2 and set(only[[1, 3]]) <= {0, 1}
    assert np.array_equal(only[[1, 3]], head.choose(rows[[1, 3]], ["a", "b"]))
    assert list(head.choose(rows[:1], ["c", VOTE], [False])) == [-1]


@pytest.mark.parametrize("damage, match", [
    ("missing", "no program_head.json"),
    ("json", "unreadable"),
    ("shape", "inconsistent shapes"),
    ("program", "neither one worker nor a cascade"),
    ("pickle", "unreadable"),
])
def test_a_damaged_head_is_refused_in_one_line(tmp_path, damage, match):
    x, correct, cost, folds = toy(n=50)
    d = head_for(x, correct, cost, folds).save(tmp_path / "h")
    spec = json.loads((d / HEAD_JSON).read_text())
    if damage == "missing":
        (d / HEAD_ARRAYS).unlink()
    elif damage == "json":
        (d / HEAD_JSON).write_text("{not json")
    elif damage == "shape":
        spec["programs"] = spec["programs"][:1]
        (d / HEAD_JSON).write_text(json.dumps(spec))
    elif damage == "program":
        spec["programs"][1] = ["cheap", "dear"]
        (d / HEAD_JSON).write_text(json.dumps(spec))
    else:  # an object array would need pickle to load: never unpickled
        with np.load(d / HEAD_ARRAYS) as z:
            arrays = dict(z)
        arrays["mean"] = np.array([{"x": 1}], dtype=object)
        np.savez(d / HEAD_ARRAYS, **arrays)
    with pytest.raises(ConfigError, match=match) as e:
        ProgramHead.load(d)
    assert "\n" not in str(e.value)


def test_a_head_fit_on_another_model_is_refused():
    x, correct, cost, folds = toy(n=50)
    head = head_for(x, correct, cost, folds)
    with pytest.raises(ConfigError, match="reads 6 features per question, got"):
        head.choose(np.zeros((2, 9)))


# -- the conductor with a head, and fit-head end to end ------------------------------------

N = 80
PRICES = {"cheap": 0.001, "mid": 0.002, "pricey": 0.02}


def right(worker: str, i: int) -> bool:
    """Sums questions (even i): cheap is right. Products (odd i): only pricey is."""
    return (worker == "cheap") if i % 2 == 0 else (worker == "pricey")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "kinds.jsonl"
    with open(path, "w") as f:
        for i in range(N):
            q = (f"Add these numbers: {i} plus {i}." if i % 2 == 0
                 else f"Multiply these numbers: {i} times {i}.")
            ref = 2 * i if i % 2 == 0 else i * i
            for w, cost in PRICES.items():
                got = ref if right(w, i) else ref + 1 + list(PRICES).index(w)
                f.write(json.dumps({"query_id": f"k/{i}", "query": q, "model": w,
                                    "response": f"#### {got}", "answer_format": "number",
                                    "reference": str(ref), "cost": cost}) + "\n")
    return path


@pytest.fixture(scope="module")
def fitted(records, tmp_path_factory):
    from ray_conductor.rl.program_head import FitHeadConfig, run_fit_head

    out = tmp_path_factory.mktemp("head") / "head"
    cfg = FitHeadConfig(conductor="tiny-smollm2", pool=f"records:{records}", split="all",
                        out=str(out), reference="pricey", budget_share=0.6, top_workers=3,
                        torch_threads=1, autocast=None)
    return out, run_fit_head(cfg)


def test_fit_head_learns_which_worker_each_kind_of_question_needs(fitted):
    out, report = fitted
    assert report["rows"] == N and report["programs"] == 3 + 3  # 3 singles, 3 cascades
    assert report["cv_accuracy"] >= 0.9 and not report["over_budget"]
    assert report["cv_cost_per_query"] <= report["budget_per_query"] == pytest.approx(0.012)
    assert set(report["train_programs"]) >= {"cheap", "pricey"}
    assert json.loads((out / "fit_report.json").read_text()) == report


def test_fit_head_refuses_the_test_split_and_an_existing_head(fitted, records):
    from ray_conductor.rl.program_head import FitHeadConfig, run_fit_head

    out, _ = fitted
    with pytest.raises(ConfigError, match="never on test"):
        run_fit_head(FitHeadConfig(conductor="tiny-smollm2", split="test", out=str(out)))
    with pytest.raises(ConfigError, match="already holds a program head"):
        run_fit_head(FitHeadConfig(conductor="tiny-smollm2", pool=f"records:{records}",
                                   split="all", out=str(out)))
    with pytest.raises(ConfigError, match="reference='gpt-5' is not a worker"):
        run_fit_head(FitHeadConfig(conductor="tiny-smollm2", pool=f"records:{records}",
                                   split="all", out=str(out.parent / "other"),
                                   reference="gpt-5"))


def conductor_with(head_dir, **kw):
    from ray_conductor.policy.conductor import Conductor, ConductorConfig
    from ray_conductor.policy.hf_engine import TransformersEngine

    cfg = ConductorConfig(model="tiny-smollm2", programs=True, recursion_depth=0,
                          worker_ids="name", head=str(head_dir), **kw)
    return Conductor(TransformersEngine("tiny-smollm2"), cfg)


def test_the_conductor_plans_with_its_head_and_the_plans_run(fitted, records, tmp_path):
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.policy.runner import run_conductor

    out, _ = fitted
    data = load_pool(f"records:{records}", cache_dir=tmp_path / "cache")
    conductor = conductor_with(out)
    queries = data.queries("all")
    got = asyncio.run(run_conductor(conductor, queries, ReplayPool(data)))
    right_share = np.mean([bool(data.judge(q.query_id, t.answer)) for q, (_, t) in
                           zip(queries, got)])
    cost = np.mean([t.cost for _, t in got])
    assert right_share >= 0.9 and cost <= 0.012
    for p, _ in got:  # chosen, not sampled: no attempts, no fallback
        assert p.n_attempts == 0 and not p.fell_back and not p.samples


def test_the_conductor_passes_each_questions_answer_format_to_its_head(fitted):
    """`plan_many(formats=)`: a free-text question (None) or a code one gets no vote; a
    multiple-choice one may; a list of the wrong length is a one-line error."""
    out, _ = fitted
    conductor = conductor_with(out)
    seen = []
    choose = conductor.head.choose

    def spy(x, offered=None, cascades=None):
        seen.append(cascades)
        return choose(x, offered, cascades)

    conductor.head.choose = spy
    qs = ["Add 1 and 2.", "Multiply 3 and 4.", "Add 5 and 6."]
    plans = conductor.plan_many(qs, _workers(), formats=[None, "mc", "code"])
    assert seen == [[False, True, False]]
    assert all(p.n_attempts == 0 for p in plans)
    assert all(len(p.workflow) == 1 for p in plans[::2])  # no vote where it cannot compare
    conductor.plan_many(qs, _workers())
    assert seen[-1] is None  # no formats: every question may get a cascade (as before)
    with pytest.raises(ConfigError, match="3 questions but 1 answer formats"):
        conductor.plan_many(qs, _workers(), formats=["mc"])


def test_the_head_never_trains_and_needs_its_settings(fitted):
    out, _ = fitted
    conductor = conductor_with(out)
    with pytest.raises(ConfigError, match="set conductor.head=null"):
        conductor.plan_many(["Add 1 and 1."], _workers(), strict=True)
    from ray_conductor.policy.conductor import Conductor, ConductorConfig
    from ray_conductor.policy.scripted_engine import ScriptedEngine

    with pytest.raises(ConfigError, match="needs an engine that reads hidden states"):
        Conductor(ScriptedEngine([], "model_id = [0]\nsubtasks = ['x']\naccess_list = [[]]"),
                  ConductorConfig(programs=True, head=str(out)))
    with pytest.raises(ConfigError, match="conductor.programs=true"):
        Conductor(conductor.engine, ConductorConfig(programs=False, head=str(out)))


def test_without_a_usable_program_the_lm_writes_the_plan(fitted):
    out, _ = fitted
    conductor = conductor_with(out, constrain=True, max_new_tokens=48, temperature=0.0)
    from ray_conductor.workers.base import WorkerInfo

    unknown = [WorkerInfo(name="other", description="a worker")]
    (plan,) = conductor.plan_many(["Add 1 and 1."], unknown)
    assert plan.n_attempts >= 1  # no program of the head is offered: the LM sampled
    broken = conductor_with(out)
    broken.engine.embed = lambda texts: (_ for _ in ()).throw(RuntimeError("boom"))
    (plan,) = broken.plan_many(["Add 1 and 1."], _workers(), temperature=0.0)
    assert plan.n_attempts >= 1  # the head failed: serving still plans


def _workers():
    from ray_conductor.workers.base import WorkerInfo

    return [WorkerInfo(name=w, description="a worker") for w in PRICES]


def test_the_heads_choices_are_warm_start_targets(fitted, records, tmp_path):
    """`warm_start.source=head:DIR`: the head's program for every question, as whole plans in
    the plan language (the LM learns to write what the head chooses)."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.rl.warm_start import program_key, teacher_programs

    out, _ = fitted
    data = load_pool(f"records:{records}", cache_dir=tmp_path / "cache")
    progs = teacher_programs(f"head:{out}", data, "all")
    assert len(progs) == N
    names = list(PRICES) + [VOTE]
    for qid, wf in progs.items():
        assert parse(render(wf), names, max_steps=4) == wf
    hits = [program_key(progs[f"k/{i}"]).split(" > ")[-1] == ("cheap" if i % 2 == 0 else
                                                               "pricey") for i in range(N)]
    singles = [len(progs[f"k/{i}"]) == 1 for i in range(N)]
    assert sum(singles) >= N // 2  # the head mostly needs one call here
    assert np.mean([h for h, s in zip(hits, singles) if s]) >= 0.9
    with pytest.raises(ConfigError, match="lite:default, lite:DIR or head:DIR"):
        teacher_programs("knn", data, "all")


def test_select_breaks_a_tie_of_accuracy_towards_the_cheaper_setting():
    """Program 1 is right exactly where program 0 is and costs less: every lam > 0 ties on
    accuracy with lam = 0, and the cheaper setting wins whatever the order tried."""
    x, correct, cost, folds = toy()
    correct = np.hstack([correct[:, :1], correct[:, :1]])
    cost = np.tile([0.01, 0.001], (len(x), 1))
    got = select(x, correct, cost, folds, budget=1.0, lambdas=(0.0, 5.0))
    assert got["lam"] == 5.0 and got["cv_cost"] == pytest.approx(0.001)


def test_eval_judges_a_conductor_planning_with_its_head(fitted, records, tmp_path):
    """`ray-conductor eval policies=[conductor:MODEL] conductor.head=DIR`: the head's plans
    judged beside the baselines; a setting that is not the conductor's, or a head that
    cannot be read, is refused before anything loads."""
    from ray_conductor.eval.command import EvalConfig, run_eval

    out, _ = fitted
    settings = {"head": str(out), "programs": True, "recursion_depth": 0}
    cfg = EvalConfig(pool=f"records:{records}", split="all", progress=False,
                     policies=["single:cheap", "conductor:tiny-smollm2"], conductor=settings,
                     out=str(tmp_path / "eval.json"))
    rep = run_eval(cfg)["policies"]
    (name,) = [k for k in rep if k.startswith("conductor:")]
    assert name.startswith("conductor:tiny-smollm2+head-")
    assert rep[name]["accuracy"] >= 0.9 > rep["single:cheap"]["accuracy"]
    for bad, match in (({"hed": str(out)}, "conductor.hed: not a conductor setting"),
                       ({"head": str(tmp_path)}, "no program_head.json")):
        cfg.conductor = bad
        with pytest.raises(ConfigError, match=match):
            run_eval(cfg)


def test_a_head_cascade_runs_on_live_workers_through_litellm(fault_server, tmp_path):
    """The head's cascade over live providers (litellm, one WorkerProxyCore per worker, the
    loopback fault server): a and b agree, so c is never asked; they differ, so c is asked
    and the vote takes the answer two of three gave. Each request carries the whole question."""
    from types import SimpleNamespace

    from ray_conductor.policy.loading import load_causal_lm
    from ray_conductor.policy.runner import run_conductor
    from ray_conductor.workers.base import WorkerInfo
    from ray_conductor.workers.config import WorkerConfig
    from ray_conductor.workers.proxy import WorkerProxyCore

    names = ["a", "b", "c"]
    cfgs = [WorkerConfig(name=w, model=f"openai/{w}", api_base=fault_server.url, retries=0,
                         timeout_s=10.0, input_price_per_mtok=1.0, output_price_per_mtok=2.0)
            for w in names]
    cores = {c.name: WorkerProxyCore(c, seed=0) for c in cfgs}

    class LivePool:
        def workers(self):
            return [WorkerInfo(w, "") for w in names]

        async def complete(self, name, messages, **params):
            return await cores[name].complete(messages, **params)

    dim = load_causal_lm("tiny-smollm2")[0].config.hidden_size
    head = ProgramHead(names, [("a",), ("a", "b", "c")], np.zeros(dim), np.ones(dim),
                       np.zeros((dim, 2)), np.array([0.5, 0.9]), np.zeros((dim, 2)),
                       np.array([0.001, 0.003]), lam=1.0)  # the cascade, always
    head.save(tmp_path / "head")
    conductor = conductor_with(tmp_path / "head")
    question = "Which letter comes first in the alphabet? (A) a (B) b " + "x" * 600
    q = SimpleNamespace(query_id="q1", query=question, answer_format="mc")

    def run():
        ((plan, trace),) = asyncio.run(run_conductor(conductor, [q], LivePool()))
        assert [s.worker for s in plan.workflow] == ["a", "b", "c", VOTE]
        return trace

    fault_server.configure(reply="The answer is (A)")
    trace = run()
    assert trace.steps[-1].answer == "A" and trace.steps[2].skipped
    assert sorted(r["model"] for r in fault_server.requests()) == ["a", "b"]
    fault_server.reset()
    fault_server.configure("b", reply="The answer is (B)")
    fault_server.configure("a", reply="The answer is (A)")
    fault_server.configure("c", reply="The answer is (A)")
    trace = run()
    assert trace.steps[-1].answer == "A" and trace.steps[-1].winner in (0, 2)
    assert trace.answer == "The answer is (A)"
    sent = fault_server.requests()
    assert sorted(r["model"] for r in sent) == ["a", "b", "c"]
    assert all(question in json.dumps(r) for r in sent)
