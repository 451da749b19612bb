"""MMLU-Pro's answer-extraction cascade, by hand and against the publisher's own regexes."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_conductor.verify import extract_choice


@pytest.mark.parametrize("text, letter", [
    ("Let's think. The answer is (C).", "C"),
    ("the answer is D", "D"),
    ("I think A. Actually the answer is (B). Final: C", "B"),  # first rule wins
    ("The answer is (B). Later: the answer is (C).", "B"),  # its first match
    ("Reasoning...\nAnswer: E\n", "E"),
    ("answer: F and answer: G\nAnswer: H", "G"),  # first line with a hit, its last hit
    ("Answer:\nJ", "J"),  # the spaces after the colon may span lines
    ("Options B and then J are close; I pick J.", "J"),  # last standalone capital
    ("A is wrong, so B", "B"),
    ("the answer is (K), not I", "I"),  # K is no option: fall through
    ("no letter here at all", None),
    ("answer is (c)", None),  # lower case is not a choice
    ("", None),
    (None, None),
])
def test_cascade(text, letter):
    assert extract_choice(text) == letter


def mmlu_pro_reference(text):
    """TIGER-AI-Lab/MMLU-Pro evaluate_from_api.py: extract_answer/extract_again/extract_final."""
    match = re.search(r"answer is \(?([A-J])\)?", text)
    if match:
        return match.group(1)
    match = re.search(r".*[aA]nswer:\s*([A-J])", text)
    if match:
        return match.group(1)
    match = re.search(r"\b[A-J]\b(?!.*\b[A-J]\b)", text, re.DOTALL)
    return match.group(0) if match else None


PIECES = ["answer is ", "Answer:", "answer: ", "(", ")", "A", "B", "J", "K", "c", " ", "\n",
          "x", "AB", "."]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join))
def test_matches_the_publishers_regexes(text):
    assert extract_choice(text) == mmlu_pro_reference(text)


def test_linear_on_a_long_line_without_answers():
    assert extract_choice("x" * 200_000 + " answer:") is None  # the original regex is quadratic
