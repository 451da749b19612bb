"""Structure-constrained decoding: the plan grammar accepts what `render` writes, refuses the
malformed plans small conductors write (lists of different lengths, unknown workers, a vote
that reads nothing), never leads into a dead end, and accepts nothing `parse` refuses; the
transformers engine and the conductor decode only plans that parse."""

from __future__ import annotations

import random

import pytest

from ray_conductor.errors import ConfigError, WorkflowError
from ray_conductor.policy.conductor import Conductor, ConductorConfig, build_engine
from ray_conductor.policy.plan_grammar import PlanGrammar
from ray_conductor.rl.rollout import random_plan
from ray_conductor.workers.base import WorkerInfo
from ray_conductor.workflow import Step, Workflow, parse, render
from ray_conductor.workflow.programs import with_programs

POOL = [WorkerInfo(f"model-{c}", "a worker") for c in "abcdefghijkl"]  # 12: ids 10, 11
OFFERED = with_programs(POOL)
NAMES = [w.name for w in OFFERED]
ALPHABET = list("[]',\" :=0123456789\nabcdefghijklmnopqrstuvwxyz-_") + [
    "model_id", "subtasks", "access_list", "model-a", "vote", "all", "disagree", "agree"]


def accepts(g: PlanGrammar, text: str) -> bool:
    st = g.feed(g.start(), text)
    return st is not None and g.complete(st)


def prefix_ok(g: PlanGrammar, text: str) -> bool:
    return g.feed(g.start(), text) is not None


@pytest.mark.parametrize("ids", ["index", "name"])
def test_rendered_plans_are_accepted(ids):
    g = PlanGrammar(NAMES, ids=ids, max_steps=5)
    rng = random.Random(0)
    cfg = ConductorConfig(programs=True, max_steps=5)
    for _ in range(300):
        wf = random_plan(rng, OFFERED, cfg)
        text = render(wf, NAMES if ids == "index" else None)
        assert accepts(g, text), text
        assert accepts(g, text + "\n")


@pytest.mark.parametrize("ids", ["index", "name"])
def test_random_walks_never_dead_end_and_every_accepted_text_parses(ids):
    """From any accepted prefix some character continues it, and a complete text always
    parses to a workflow: the engine can never be cornered, and never makes a plan the
    parser refuses."""
    g = PlanGrammar(NAMES, ids=ids, max_steps=4)
    rng = random.Random(1)
    shapes = set()
    for _ in range(150):
        st, text = g.start(), ""
        while not (g.complete(st) and rng.random() < 0.3):
            options = [a for a in ALPHABET if g.feed(st, a) is not None]
            assert options or g.complete(st), f"dead end after {text!r}"
            if not options:
                break
            a = rng.choice(options)
            st, text = g.feed(st, a), text + a
        wf = parse(text, NAMES, max_steps=4)
        shapes.add((len(wf), any(s.when for s in wf), any(s.worker == "vote" for s in wf)))
    assert len(shapes) > 6  # the walks reach many plan shapes, not one


def test_lists_of_different_lengths_are_refused():
    g = PlanGrammar(NAMES, ids="index", max_steps=5)
    head = "model_id = [0, 1]\nsubtasks = ['a', 'b'"
    assert prefix_ok(g, head)
    assert not prefix_ok(g, head + ", ")  # a third subtask for two steps
    assert not prefix_ok(g, "model_id = [0, 1]\nsubtasks = ['a']")  # one too few
    assert not prefix_ok(g, head + "]\naccess_list = [[], [0], ")
    assert not prefix_ok(g, head + "]\naccess_list = [[]]")
    assert accepts(g, head + "]\naccess_list = [[], [0]]")


def test_workers_steps_and_access_are_checked():
    g = PlanGrammar(NAMES, ids="index", max_steps=3)
    vote = str(NAMES.index("vote"))
    assert not prefix_ok(g, "model_id = [13")  # no worker 13
    assert not prefix_ok(g, "model_id = [01")  # not how an index is written
    assert not prefix_ok(g, f"model_id = [{vote}")  # a vote first reads nothing
    assert not prefix_ok(g, "model_id = [0, 1, 2, ")  # a fourth step
    two = f"model_id = [0, {vote}]\nsubtasks = ['a', 'b']\naccess_list = [[], "
    assert not prefix_ok(g, two + "[]")  # the vote reads nothing
    assert not prefix_ok(g, two + "[1")  # a step reads a later one
    assert not prefix_ok(g, two + "'disagree")  # a condition needs two earlier steps
    assert accepts(g, two + "'all']")
    three = "model_id = [0, 1, 2]\nsubtasks = ['a', 'b', 'c']\naccess_list = [[], [], "
    assert accepts(g, three + "'disagree:0,1']")
    assert not prefix_ok(g, three + "'disagree:0,0")
    assert not prefix_ok(g, three + "'disagree:0'] ")
    assert not prefix_ok(g, three + "[0, 0")
    names = PlanGrammar(NAMES, ids="name")
    assert prefix_ok(names, "model_id = ['model-")
    assert not prefix_ok(names, "model_id = ['gpt")
    assert not prefix_ok(names, "model_id = [3")  # ids are names here


def test_end_of_text_only_after_the_last_list():
    g = PlanGrammar(NAMES)
    plan = "model_id = [0]\nsubtasks = ['Answer.']\naccess_list = [[]]"
    for k in range(len(plan)):
        st = g.feed(g.start(), plan[:k])
        assert st is not None and not g.complete(st)
    assert accepts(g, plan)
    assert not prefix_ok(g, plan + " and more")
    assert not prefix_ok(g, "<think>" + plan)  # no reasoning before a constrained plan


def test_empty_plans_only_where_allowed():
    empty = "model_id = []\nsubtasks = []\naccess_list = []"
    assert not prefix_ok(PlanGrammar(NAMES), "model_id = []")
    assert accepts(PlanGrammar(NAMES, allow_empty=True), empty)
    assert parse(empty, NAMES, allow_empty=True) == Workflow(())


def test_a_subtask_is_one_bounded_line_with_escapes():
    g = PlanGrammar(NAMES, max_subtask_chars=20)
    head = "model_id = [0]\nsubtasks = ["
    assert accepts(g, head + "'it\\'s fine']\naccess_list = [[]]")
    assert not prefix_ok(g, head + "'two\nlines")
    assert not prefix_ok(g, head + "'" + "x" * 21)
    text = head + "'it\\'s fine']\naccess_list = [[]]"
    assert parse(text, NAMES).steps[0].subtask == "it's fine"


def test_bad_grammar_settings_are_config_errors():
    with pytest.raises(ConfigError, match="index' or 'name"):
        PlanGrammar(NAMES, ids="letters")
    with pytest.raises(ConfigError, match="at least one"):
        PlanGrammar([])


# -- the engine and the conductor ------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    return build_engine(ConductorConfig(model="tiny-smollm2", batch_size=8))


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_the_engine_writes_only_plans_that_parse(engine, temperature):
    """The tiny model's free text never parses; constrained, every sample does, its text is
    the decoded tokens, and its log-probs keep the unconstrained convention. (Short subtasks:
    a random model would otherwise write one until the token cap.)"""
    from test_hf_engine import fresh_logprobs

    g = PlanGrammar(NAMES, ids="index", max_steps=4, max_subtask_chars=12)
    prompt = "Write a plan."
    free = engine.generate([prompt], n=4, temperature=temperature, max_tokens=60, seed=3)[0]
    assert not any(accepts(g, s.text) for s in free)
    out = engine.generate([prompt, prompt], n=2, temperature=temperature, max_tokens=200,
                          seed=3, constraints=[g, None])
    for s in out[0]:
        assert s.finish_reason == "stop", s.text
        assert accepts(g, s.text)
        assert parse(s.text, NAMES, max_steps=4)
        assert s.text == engine.tokenizer.decode(s.completion_ids, skip_special_tokens=True)
        expected, _ = fresh_logprobs(engine.model, s)
        assert expected.tolist() == pytest.approx(s.logprobs, abs=1e-3)
    assert not any(accepts(g, s.text) for s in out[1])  # None: that prompt is free
    with pytest.raises(ConfigError, match="one per prompt"):
        engine.generate([prompt], n=1, temperature=1.0, max_tokens=4, constraints=[g, g])


@pytest.mark.parametrize("ids", ["index", "name"])
def test_the_engine_allows_exactly_the_tokens_the_grammar_accepts(engine, ids):
    """The prefix-tree walk over the vocabulary finds, at every position of a plan, the
    tokens that checking each token one by one finds, and the same states after them."""
    g = PlanGrammar(NAMES, ids=ids, max_steps=4, max_subtask_chars=8)
    wf = Workflow((Step("model-k", "Solve.", ()), Step("model-b", "Check.", "all"),
                   Step("vote", "Vote.", (0, 1))))
    text = render(wf, NAMES if ids == "index" else None)
    texts = engine._texts()[0]
    st = g.start()
    for k, ch in enumerate(text):
        if k % 5 == 0:
            brute = {t: g.feed(st, x) for t, x in enumerate(texts) if x is not None}
            brute = {t: s for t, s in brute.items() if s is not None and t not in engine.eos_ids}
            brute.update({t: st for t in engine.eos_ids if g.complete(st)})
            assert engine._allowed(g, st) == brute, (text[:k], st)
        st = g.feed(st, ch)
    assert g.complete(st) and set(engine._allowed(g, st)) >= engine.eos_ids


def test_a_constrained_conductor_never_falls_back(engine):
    cfg = ConductorConfig(model="tiny-smollm2", programs=True, constrain=True, few_shot=False,
                          max_new_tokens=200, max_steps=4, batch_size=8, max_subtask_chars=12)
    results = Conductor(engine, cfg).plan_many(["What is 2 + 2?"] * 3, POOL, seed=0)
    assert all(not r.fell_back and r.n_attempts == 1 and not r.errors for r in results)
    assert all(1 <= len(r.workflow) <= 4 for r in results)
    free = Conductor(engine, ConductorConfig(model="tiny-smollm2", programs=True, few_shot=False,
                                             max_new_tokens=40, max_resamples=1))
    assert all(r.fell_back for r in free.plan_many(["What is 2 + 2?"] * 2, POOL, seed=0))


def test_vllm_refuses_constraints_with_a_clear_error():
    with pytest.raises(ConfigError, match="conductor.constrain"):
        build_engine(ConductorConfig(engine="vllm", constrain=True))


def test_parse_rejects_what_the_grammar_rejects_for_length():
    """The grammar's main target, seen from the parser."""
    text = "model_id = [0, 1, 2]\nsubtasks = ['a', 'b']\naccess_list = [[], [], []]"
    with pytest.raises(WorkflowError) as e:
        parse(text, NAMES)
    assert e.value.code == "length_mismatch"
    assert not accepts(PlanGrammar(NAMES), text)
    wf = Workflow((Step(NAMES[0], "a", ()), Step(NAMES[1], "b", ())))
    assert accepts(PlanGrammar(NAMES), render(wf, NAMES))
