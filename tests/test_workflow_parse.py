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
    n = draw(st.integers(1, 5))
    steps = []
    for i in range(n):
        acc = draw(st.one_of(st.just("all"),
                             st.lists(st.integers(0, max(i - 1, 0)), max_size=i, unique=True)
                             .map(lambda xs: tuple(sorted(xs))) if i else st.just(())))
        steps.append(Step(draw(st.sampled_from(WORKERS)), draw(subtask_text), acc))
    return Workflow(tuple(steps))


@settings(max_examples=300, deadline=None)
@given(workflows(), st.booleans())
def test_round_trip(wf, by_id):
    names = WORKERS if by_id else None
    assert parse(render(wf, names), WORKERS) == wf


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
