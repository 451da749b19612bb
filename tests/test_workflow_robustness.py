"""Parser robustness (issue 12, defect 8): inputs that used to raise ValueError or
RecursionError, or took quadratic time, now end in a `Workflow` or a one-line `WorkflowError`.

No wall-clock asserts: a `timeout` mark only turns a hang into a failure (the old parser took
~100 s on 96 KB of repeated headers and raised ValueError / RecursionError on the others), and
linearity is checked by counting the characters the scanner reads.
"""

import pytest

from ray_conductor.errors import WorkflowError
from ray_conductor.workflow import MAX_SUBTASK_CHARS, MAX_TEXT_CHARS, Workflow, parse, scan

WORKERS = ["gpt-4o", "claude", "gemini", "llama"]
pytestmark = pytest.mark.timeout(60)


def error(text, **kw):
    with pytest.raises(WorkflowError) as e:
        parse(text, WORKERS, **kw)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and len(msg) < 400, msg
    return e.value


@pytest.mark.parametrize("ids", [
    "[" + "9" * 5000 + "]",  # literal_eval refuses it: used to reach int() in the lenient path
    "['" + "9" * 5000 + "']",  # a digit string: used to reach int() in worker resolution
    "[0, " + "7" * 5000 + "]",
])
def test_a_5000_digit_worker_id_is_out_of_range(ids):
    e = error(f"model_id = {ids}\nsubtasks = ['a']\naccess_list = [[]]")
    assert e.code in ("worker_out_of_range", "length_mismatch")
    assert "digit number" in str(e) or e.code == "length_mismatch"


def test_a_5000_character_id_with_leading_zeros_is_its_value():
    text = "model_id = [" + "0" * 4999 + "1]\nsubtasks = ['a']\naccess_list = [[]]"
    assert parse(text, WORKERS) == Workflow.single("claude", "a")


def test_a_hex_worker_id_too_long_to_print_gives_a_short_message():
    e = error("model_id = [0x" + "f" * 5000 + "]\nsubtasks = ['a']\naccess_list = [[]]")
    assert e.code == "worker_out_of_range" and "too large to show" in str(e)


def test_huge_numbers_in_access_and_conditions():
    assert error("model_id = [0]\nsubtasks = ['a']\naccess_list = [[" + "9" * 5000 + "]]"
                 ).code in ("bad_access", "forward_access")
    assert error("model_id = [0, 1, 2]\nsubtasks = ['a', 'b', 'c']\naccess_list = [[], [], "
                 "'disagree:0," + "9" * 5000 + "']").code == "bad_access"


@pytest.mark.parametrize("depth", [1_000, 20_000, 100_000])
@pytest.mark.parametrize("inner", ["", "a,", "'x',", "0,"])
def test_deeply_nested_brackets_are_refused_before_parsing(depth, inner):
    body = "[" + (("[" + inner) * depth) + "]" * depth + "]"
    e = error(f"model_id = [0]\nsubtasks = ['a']\naccess_list = {body}")
    assert e.code in ("unparsable", "too_long")


def test_nesting_within_the_cap_still_reads():
    assert parse("model_id = [0]\nsubtasks = ['a']\naccess_list = [[]]", WORKERS) \
        == Workflow.single("gpt-4o", "a")
    e = error("model_id = [0]\nsubtasks = ['a']\naccess_list = [[[[[0]]]]]")  # 5 deep
    assert e.code == "unparsable" and "nests brackets more than 4 deep" in str(e)
    e = error("model_id = [0]\nsubtasks = ['a']\naccess_list = [[[0]]]")  # 3 deep: read, bad
    assert e.code == "bad_access"


def test_200_kb_of_repeated_headers_is_refused_by_the_size_cap():
    text = ("model_id = [0]\nsubtasks = ['a']\naccess_list = [[]]\n" * 5000)[:200_000]
    assert len(text) > MAX_TEXT_CHARS
    e = error(text)
    assert e.code == "too_long" and f"at most {MAX_TEXT_CHARS}" in str(e)


@pytest.mark.parametrize("unit", ["model_id = [", "model_id = ['", "subtasks = [\"x",
                                  "access_list = [[], '", "model_id = ['\""])
def test_repeated_headers_under_the_cap_are_read_in_linear_time(unit, monkeypatch):
    scanned = []
    real = scan._scan

    def counting(text, start):
        hi, stop, deep = real(text, start)
        scanned.append(stop - start)
        return hi, stop, deep

    monkeypatch.setattr(scan, "_scan", counting)
    for size in (10_000, 90_000):
        scanned.clear()
        text = (unit * (size // len(unit) + 1))[:size]
        error(text)
        assert sum(scanned) <= scan.WORK_FACTOR * size + scan.WORK_SLACK + size


def test_many_complete_drafts_the_last_one_wins():
    drafts = "".join(f"Draft {k}: model_id = [{k % 4}]\nsubtasks = ['d{k}']\naccess_list = [[]]\n"
                     for k in range(1500))
    assert len(drafts) < MAX_TEXT_CHARS
    assert parse(drafts, WORKERS) == Workflow.single(WORKERS[1499 % 4], "d1499")


def test_subtask_length_is_capped():
    ok = "x" * MAX_SUBTASK_CHARS
    wf = parse(f"model_id = [0]\nsubtasks = ['{ok}']\naccess_list = [[]]", WORKERS)
    assert wf[0].subtask == ok
    e = error(f"model_id = [0]\nsubtasks = ['{ok}y']\naccess_list = [[]]")
    assert e.code == "bad_subtask" and f"at most {MAX_SUBTASK_CHARS}" in str(e)


def test_messages_quote_model_text_on_one_bounded_line():
    e = error("model_id = ['line one\\nline two" + "z" * 500 + "']\nsubtasks = ['a']\n"
              "access_list = [[]]")
    assert e.code == "unknown_worker" and "..." in str(e)
    e = error("model_id = [0]\nsubtasks = [['a\\nb'] * 100]\naccess_list = [[]]")
    assert e.code in ("bad_subtask", "unparsable")


def test_a_draft_list_that_is_not_a_literal_does_not_hide_the_plan():
    # the draft's unclosed quote shifts the quotes, so its `[` "closes" at the `]` inside the
    # last subtask; that span is no real list, so the headers inside it are still read
    draft = 'Draft: model_id = [2, "gemini\n'
    plan = ('model_id = [2, 0]\nsubtasks = ["Solve it.", "Check the list] and answer."]\n'
            'access_list = [[], "all"]')
    hi, _, _ = scan._scan(draft + plan, draft.index("["))
    assert len(draft) < hi < len(draft + plan)  # the case this test is about
    wf = parse(draft + plan, WORKERS)
    assert wf.workers == ("gemini", "gpt-4o") and wf[1].subtask == "Check the list] and answer."
