"""The plan language: every error class, the lenient paths, and parse(render(w)) == w."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_conductor.errors import WorkflowError
from ray_conductor.workflow import Step, Workflow, parse, render

WORKERS = ["gpt-4o", "claude", "gemini", "llama"]


def codes(text, **kw):
    with pytest.raises(WorkflowError) as e:
        parse(text, WORKERS, **kw)
    return e.value.code


def test_parses_the_papers_format_with_reasoning():
    text = (
        "<think>The question is math, so gemini first, then a check.</think>\n"
        "model_id = [2, 0]\n"
        "subtasks = ['Solve it step by step.', 'Verify and answer.']\n"
        "access_list = [[], 'all']"
    )
    wf = parse(text, WORKERS)
    assert wf == Workflow((Step("gemini", "Solve it step by step.", ()),
                           Step("gpt-4o", "Verify and answer.", "all")))
    assert wf[1].visible(1) == (0,)


def test_json_lists_and_names_are_accepted():
    text = 'model_id = ["claude", 3]\nsubtasks = ["a", "b"]\naccess_list = [[], [0]]'
    wf = parse(text, WORKERS)
    assert wf.workers == ("claude", "llama")
    assert wf[1].access == (0,)


def test_json_only_literals_fall_back_to_json():
    # `null` is JSON, not Python: literal_eval fails, json.loads succeeds.
    text = 'model_id = [0]\nsubtasks = ["x"]\naccess_list = [null]'
    assert parse(text, WORKERS)[0].access == ()


def test_lenient_split_reads_unquoted_items():
    text = "model_id = [gemini, 0]\nsubtasks = [Solve it, Check it]\naccess_list = [[], all]"
    wf = parse(text, WORKERS)
    assert wf == Workflow((Step("gemini", "Solve it", ()), Step("gpt-4o", "Check it", "all")))


def test_last_occurrence_wins_over_reasoning_drafts():
    text = ("Draft: model_id = [1]\nsubtasks = ['old']\naccess_list = [[]]\n"
            "Final:\nmodel_id = [3]\nsubtasks = ['new']\naccess_list = [[]]")
    assert parse(text, WORKERS) == Workflow.single("llama", "new")


def test_label_text_inside_a_subtask_does_not_confuse_the_parser():
    wf = Workflow((Step("claude", "Explain 'access_list = [0]' and model_id = [9]", ()),
                   Step("gemini", "subtasks = ['x'] is not a plan", "all")))
    assert parse(render(wf, WORKERS), WORKERS) == wf


@pytest.mark.parametrize(
    "text, code",
    [
        ("model_id = [0]\nsubtasks = ['a']", "missing_list"),
        ("I think gpt-4o should answer.", "missing_list"),
        ("model_id = [0, 1]\nsubtasks = ['a']\naccess_list = [[], []]", "length_mismatch"),
        ("model_id = []\nsubtasks = []\naccess_list = []", "empty_workflow"),
        ("model_id = [7]\nsubtasks = ['a']\naccess_list = [[]]", "worker_out_of_range"),
        ("model_id = [-1]\nsubtasks = ['a']\naccess_list = [[]]", "worker_out_of_range"),
        ("model_id = ['gpt-9']\nsubtasks = ['a']\naccess_list = [[]]", "unknown_worker"),
        ("model_id = [True]\nsubtasks = ['a']\naccess_list = [[]]", "unknown_worker"),
        ("model_id = [0, 1]\nsubtasks = ['a', 'b']\naccess_list = [[], [1]]", "forward_access"),
        ("model_id = [0, 1]\nsubtasks = ['a', 'b']\naccess_list = [[], [2]]", "forward_access"),
        ("model_id = [0]\nsubtasks = ['a']\naccess_list = [['x']]", "bad_access"),
        ("model_id = [0]\nsubtasks = ['a']\naccess_list = ['some']", "bad_access"),
        ("model_id = [0]\nsubtasks = [42]\naccess_list = [[]]", "bad_subtask"),
        ("model_id = [0]\nsubtasks = ['a']\naccess_list = [[]", "unparsable"),
        ("model_id = [0,0,0,0,0,0]\nsubtasks = ['a']*6\naccess_list = [[]]", "length_mismatch"),
    ],
)
def test_each_error_class_has_its_code(text, code):
    assert codes(text) == code


def test_too_many_steps_respects_the_configured_cap():
    text = render(Workflow(tuple(Step("claude", f"s{i}", ()) for i in range(6))), WORKERS)
    assert codes(text) == "too_many_steps"
    assert len(parse(text, WORKERS, max_steps=6)) == 6


def test_error_messages_name_the_problem():
    with pytest.raises(WorkflowError, match=r"step 1: access to step 1"):
        parse("model_id = [0, 1]\nsubtasks = ['a', 'b']\naccess_list = [[], [1]]", WORKERS)
    with pytest.raises(WorkflowError, match="known workers: gpt-4o, claude"):
        parse("model_id = ['x']\nsubtasks = ['a']\naccess_list = [[]]", WORKERS)


def test_empty_lists_allowed_for_recursive_keep():
    assert len(parse("model_id = []\nsubtasks = []\naccess_list = []", WORKERS,
                     allow_empty=True)) == 0


def test_non_string_input_is_a_workflow_error():
    assert codes(None) == "unparsable"


subtask_text = st.lists(
    st.sampled_from(list("abcXYZ 019[](){},.:;=\"'\\\n\té€")
                    + ["model_id = [", "access_list=[", "</think>", "<think>"]),
    max_size=20,
).map("".join)


@st.composite
def workflows(draw):
    """Valid workflows of every form: plain access, conditions, and vote steps."""
    n = draw(st.integers(1, 5))
    steps = []
    for i in range(n):
        acc = draw(st.one_of(st.just("all"),
                             st.lists(st.integers(0, max(i - 1, 0)), max_size=i, unique=True)
                             .map(lambda xs: tuple(sorted(xs))) if i else st.just(())))
        seen = i if acc == "all" else len(acc)
        when = draw(st.sampled_from([None, "agree", "disagree"])) if seen >= 2 else None
        worker = draw(st.sampled_from(WORKERS + (["vote"] if seen else [])))
        steps.append(Step(worker, draw(subtask_text), acc, when))
    return Workflow(tuple(steps))


@settings(max_examples=300, deadline=None)
@given(workflows(), st.booleans())
def test_round_trip(wf, by_id):
    offered = WORKERS + ["vote"]
    names = offered if by_id else None
    assert parse(render(wf, names), offered) == wf


def test_prompt_lists_the_pool_and_keeps_the_conductor_out_of_the_examples():
    from ray_conductor.workers.base import WorkerInfo
    from ray_conductor.workflow import build_prompt

    ws = [WorkerInfo("gpt-4o", "strong", 2.5, 10), WorkerInfo("llama", "cheap"),
          WorkerInfo("conductor", "myself")]
    system, user = build_prompt("What is 2+2?", ws, self_name="conductor")
    text = user["content"]
    assert "0: gpt-4o ($2.5/$10 per 1M in/out tokens) - strong" in text
    assert "2: conductor" in text and text.rstrip().endswith("Question: What is 2+2?")
    assert "model_id = [2" not in text and ", 2]" not in text  # examples use workers 0 and 1
    assert "model_id = [0, 1]" in text


def test_prompt_without_examples_states_the_format_itself():
    from ray_conductor.workers.base import WorkerInfo
    from ray_conductor.workflow import build_prompt

    _, user = build_prompt("What is 2+2?", [WorkerInfo("a"), WorkerInfo("b")], few_shot=False)
    text = user["content"]
    assert "example" not in text.lower()  # no reference to examples that are not there
    assert "model_id = [" in text and "subtasks = [" in text and "access_list = [" in text
    assert "Example question" not in text


# -- conditional steps and program workers ----------------------------------------------

OFFERED = WORKERS + ["vote"]  # as `with_programs` offers them: the LLMs, then vote (id 4)


def plan(ids, access, subs=None):
    subs = subs or [f"s{i}" for i in range(len(ids))]
    return f"model_id = {ids!r}\nsubtasks = {subs!r}\naccess_list = {access!r}"


def test_cascade_condition_over_named_steps():
    wf = parse(plan([2, 0, 1], [[], [], "disagree:0,1"]), OFFERED)
    assert wf[2] == Step("claude", "s2", (0, 1), "disagree")
    assert wf[2].visible(2) == (0, 1)
    assert wf[0].when is None and wf[1].when is None


def test_condition_over_all_earlier_steps_sees_them_all():
    wf = parse(plan([0, 1, 2], [[], [], "agree"]), OFFERED)
    assert wf[2] == Step("gemini", "s2", "all", "agree")
    assert wf[2].visible(2) == (0, 1)


def test_vote_step_by_id_and_by_name():
    a = parse(plan([0, 1, 2, 4], [[], [], [], "all"]), OFFERED)
    b = parse(plan(["gpt-4o", "claude", "gemini", "vote"], [[], [], [], "all"]), OFFERED)
    assert a == b and a[3] == Step("vote", "s3", "all")


@pytest.mark.parametrize("entry, access, when", [
    ("Disagree", "all", "disagree"),  # case and spaces are forgiven
    (" agree ", "all", "agree"),
    ("disagree: 1, 0", (0, 1), "disagree"),
    ("agree:[0,1]", (0, 1), "agree"),
    ("disagree:0 2", (0, 2), "disagree"),
    ("disagree:0,1,1", (0, 1), "disagree"),
])
def test_condition_spellings(entry, access, when):
    wf = parse(plan([0, 1, 2, 3], [[], [], [], entry]), OFFERED)
    assert (wf[3].access, wf[3].when) == (access, when)


def test_conditions_render_as_strings_and_round_trip():
    wf = Workflow((Step("gpt-4o", "a", ()), Step("claude", "b", ()),
                   Step("gemini", "c", (0, 1), "disagree"), Step("llama", "d", "all", "agree"),
                   Step("vote", "e", "all")))
    text = render(wf, OFFERED)
    assert "access_list = [[], [], 'disagree:0,1', 'agree', 'all']" in text
    assert "model_id = [0, 1, 2, 3, 4]" in text
    assert parse(text, OFFERED) == wf


@pytest.mark.parametrize("ids, access, code, message", [
    ([0, 1, 2], [[], [], "differ"], "bad_access", "must be 'all', a list of step indices"),
    ([0, 1, 2], [[], [], "disagree:"], "bad_access", "'disagree:' names no steps"),
    ([0, 1, 2], [[], [], "agree:  "], "bad_access", "'agree:' names no steps"),
    ([0, 1, 2], [[], [], "disagree:0,x"], "bad_access", "must list step indices"),
    ([0, 1, 2], [[], [], "disagree:0,2"], "forward_access", "access to step 2"),
    ([0, 1, 2], [[], [], "agree:0,5"], "forward_access", "access to step 5"),
    ([0, 1], [[], "disagree"], "bad_access", "at least two earlier steps, but this step sees 1"),
    ([0, 1, 2], [[], [], "agree:1,1"], "bad_access", "this step sees 1"),
    ([0], ["disagree"], "bad_access", "this step sees 0"),
    ([4], [[]], "bad_access", "'vote' reads no earlier steps"),
    ([0, 4], [[], []], "bad_access", "'vote' reads no earlier steps"),
    ([0, 1, 2], [[], [], ["disagree", 0, 1]], "bad_access", "'disagree' is not a step index"),
])
def test_condition_and_vote_errors(ids, access, code, message):
    with pytest.raises(WorkflowError, match=message) as e:
        parse(plan(ids, access), OFFERED)
    assert e.value.code == code


def test_vote_is_unknown_unless_offered():
    with pytest.raises(WorkflowError, match="unknown worker 'vote'") as e:
        parse(plan([0, "vote"], [[], "all"]), WORKERS)
    assert e.value.code == "unknown_worker"
    with pytest.raises(WorkflowError) as e:
        parse(plan([0, 4], [[], "all"]), WORKERS)
    assert e.value.code == "worker_out_of_range"


def test_step_refuses_an_unknown_condition_word():
    with pytest.raises(WorkflowError) as e:
        Step("a", "x", "all", "maybe")
    assert e.value.code == "bad_access"
