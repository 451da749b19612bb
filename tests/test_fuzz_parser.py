"""Property-based fuzzing of the plan parser: whatever the text, `parse` returns a valid
`Workflow` or raises `WorkflowError` with a one-line message, never anything else; and
every valid workflow survives render -> parse.

Inputs: random unicode text, near-plans built from the grammar and then mutated (cut,
duplicated, bracket/quote noise), deep nesting, huge numbers, unicode subtasks.
"""

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ray_conductor.errors import WorkflowError
from ray_conductor.workflow import MAX_SUBTASK_CHARS, MAX_TEXT_CHARS, Step, Workflow, parse, render

WORKERS = ["gpt-4o", "claude", "gemini", "llama", "vote"]
FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
pytestmark = pytest.mark.timeout(300)


def outcome(text, **kw):
    """Parse, and check the only two allowed outcomes."""
    try:
        wf = parse(text, WORKERS, **kw)
    except WorkflowError as e:
        msg = str(e)
        assert isinstance(e.code, str) and e.code, e
        assert msg and len(msg.splitlines()) == 1, repr(msg)
        assert len(msg) < 600, len(msg)
        return e
    check_valid(wf, kw.get("max_steps", 5), kw.get("allow_empty", False))
    return wf


def check_valid(wf, max_steps, allow_empty):
    assert isinstance(wf, Workflow)
    assert (allow_empty or len(wf) >= 1) and len(wf) <= max_steps
    for i, s in enumerate(wf):
        assert s.worker in WORKERS and isinstance(s.subtask, str)
        assert len(s.subtask) <= MAX_SUBTASK_CHARS
        assert s.access == "all" or all(0 <= k < i for k in s.access)
        assert s.when in (None, "agree", "disagree")
        if s.when:
            assert len(s.visible(i)) >= 2
        if s.worker == "vote":
            assert s.visible(i)


# -- random text -------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=3000))
def test_random_unicode_text(text):
    outcome(text)


@FUZZ
@given(st.lists(st.sampled_from(list("[]'\"\\,:=0123456789 \n")
                                + ["model_id", "subtasks", "access_list", "all", "disagree",
                                   "agree", "<think>", "</think>"]), max_size=200).map("".join))
def test_random_text_over_the_grammars_tokens(text):
    outcome(text)


# -- near-plans: from the grammar, then mutated ------------------------------------------

huge_int = st.integers(1, 6000).map(lambda n: "9" * n)
id_item = st.one_of(st.integers(-3, 8).map(str), st.sampled_from(WORKERS).map(repr),
                    huge_int, st.just("True"), st.just("None"), st.just("gemini"),
                    st.just("0x" + "f" * 4000), st.just("1e999"), st.just("'7'"))
sub_item = st.one_of(st.text(max_size=60).map(repr), st.text(max_size=40),
                     st.just(repr("x" * (MAX_SUBTASK_CHARS + 1))), st.just("42"),
                     st.just("['nested']"), st.just("\u201csmart quotes\u201d"))
cond = st.tuples(st.sampled_from(["agree", "disagree", "Agree", "differ", "all", "none", ""]),
                 st.sampled_from(["", ":", ":0", ":0,1", ":1,0", ":0,9", ": [0, 1]", ":x",
                                  ":" + "9" * 5000]))
acc_item = st.one_of(st.just("[]"), st.just("'all'"), st.just("all"), st.just("null"),
                     st.lists(st.integers(-1, 6).map(str), max_size=4).map(
                         lambda xs: "[" + ", ".join(xs) + "]"),
                     cond.map(lambda c: repr(c[0] + c[1])), huge_int.map(lambda n: f"[{n}]"))


def listing(items):
    return st.lists(items, min_size=0, max_size=7).map(lambda xs: "[" + ", ".join(xs) + "]")


@st.composite
def near_plans(draw):
    sep = draw(st.sampled_from([" = ", "=", ": ", " := ", "\n= "]))
    lists = [f"model_id{sep}{draw(listing(id_item))}",
             f"subtasks{sep}{draw(listing(sub_item))}",
             f"access_list{sep}{draw(listing(acc_item))}"]
    if draw(st.booleans()):
        lists = draw(st.permutations(lists))
    prefix = draw(st.sampled_from(["", "<think>plan it</think>\n", "Reasoning: don't know.\n",
                                   "model_id = [0\n", "</think>"]))
    return prefix + "\n".join(lists)


@st.composite
def mutated(draw, base):
    text = draw(base)
    for _ in range(draw(st.integers(0, 4))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        j = draw(st.integers(i, min(len(text), i + 40)))
        op = draw(st.sampled_from(["cut", "dup", "insert", "swap"]))
        if op == "cut":
            text = text[:i] + text[j:]
        elif op == "dup":
            text = text[:j] + text[i:j] * draw(st.integers(1, 50)) + text[j:]
        elif op == "insert":
            text = text[:i] + draw(st.sampled_from(["[", "]", "'", '"', "\\", ",", "[[[", "]]",
                                                     "model_id = [", "\u2028", "\x00"])) + text[i:]
        else:
            text = text[j:] + text[i:j] + text[:i]
    return text


@FUZZ
@given(near_plans(), st.booleans(), st.integers(1, 6))
def test_near_plans(text, allow_empty, max_steps):
    outcome(text, allow_empty=allow_empty, max_steps=max_steps)


@FUZZ
@given(mutated(near_plans()))
def test_mutated_near_plans(text):
    outcome(text)


# -- deep nesting, huge inputs -----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 200_000), st.integers(0, 200_000),
       st.sampled_from(["model_id", "subtasks", "access_list"]),
       st.sampled_from(["", "0,", "'a',"]))
def test_deep_nesting(opens, closes, label, filler):
    closes = min(closes, opens + 2)
    lists = {"model_id": "[0]", "subtasks": "['a']", "access_list": "[[]]"}
    lists[label] = "[" + ("[" + filler) * opens + "]" * closes + "]"
    text = "\n".join(f"{k} = {v}" for k, v in lists.items())
    e = outcome(text)
    if opens > 200:
        assert isinstance(e, WorkflowError)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["model_id = [", "subtasks = ['", "access_list = [[], '", "[", "'",
                        "model_id = [0]\nsubtasks = ['a']\naccess_list = [[]]\n"]),
       st.integers(1, 2 * MAX_TEXT_CHARS))
def test_repeated_units_of_any_size(unit, size):
    text = (unit * (size // len(unit) + 1))[:size]
    e = outcome(text)
    if size > MAX_TEXT_CHARS:
        assert e.code == "too_long"


# -- round trip --------------------------------------------------------------------------

subtasks = st.one_of(st.text(max_size=80),
                     st.lists(st.sampled_from(list("[]'\"\\,:=\n") + ["model_id = [",
                              "access_list = [", "disagree:0,1", "</think>"]), max_size=20)
                     .map("".join),
                     st.text(min_size=MAX_SUBTASK_CHARS - 5, max_size=MAX_SUBTASK_CHARS))


@st.composite
def workflows(draw):
    steps = []
    for i in range(draw(st.integers(1, 5))):
        acc = draw(st.one_of(st.just("all"), st.lists(st.integers(0, max(i - 1, 0)), max_size=i)
                             .map(lambda xs: tuple(sorted(set(xs)))) if i else st.just(())))
        seen = i if acc == "all" else len(acc)
        when = draw(st.sampled_from([None, "agree", "disagree"])) if seen >= 2 else None
        worker = draw(st.sampled_from(WORKERS if seen else WORKERS[:-1]))
        steps.append(Step(worker, draw(subtasks), acc, when))
    return Workflow(tuple(steps))


@FUZZ
@given(workflows(), st.booleans(), st.sampled_from(["", "<think>draft model_id = [9]</think>\n",
                                                    "I will use two workers.\n"]))
def test_render_parse_round_trip(wf, by_id, prefix):
    text = prefix + render(wf, WORKERS if by_id else None)
    assume(len(text) <= MAX_TEXT_CHARS)
    assert parse(text, WORKERS) == wf
