"""Comparable answers (`verify.answers`): what votes and conditions compare."""

import pytest

from ray_conductor.errors import ConfigError
from ray_conductor.verify.answers import comparable, extract_answer


@pytest.mark.parametrize("fmt, expected", [
    ("mc", True), ("number", True), ("gsm8k", True), ("math", True),
    ("code", False), ("humaneval", False), ("mbpp", False), ("label", False), (None, False),
])
def test_comparable(fmt, expected):
    assert comparable(fmt) is expected


def test_an_unknown_format_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown answer format 'MC'; known: mc"):
        comparable("MC")
    with pytest.raises(ConfigError):
        extract_answer("The answer is (A)", "letters")


@pytest.mark.parametrize("text, fmt, answer", [
    ("Thinking... the answer is (C).", "mc", "C"),
    ("Answer: B", "mc", "B"),
    ("no letter", "mc", None),
    ("So she pays $1,234.50 in total.\n#### 1,234.50", "number", "1234.5"),
    ("The answer is 42 apples.", "gsm8k", "42"),
    ("nothing numeric", "number", None),
    ("Thus $x = \\boxed{\\frac{1}{2}}$.", "math", "1/2"),
    ("The answer is 0.5", "math", "1/2"),  # numbers in one form: agrees with \frac{1}{2}
    ("so \\boxed{\\dfrac12}", "math", "1/2"),
    ("\\boxed{(1, 2)}", "math", "(1,2)"),
    ("\\boxed{x^2 + 1}", "math", "x^2+1"),
    ("\\boxed{5 \\text{ cm}}", "math", "5"),
    ("a long derivation " * 100, "math", None),  # no marked answer: a solution, not an answer
    ("def f(): return 1", "code", None),
    ("The answer is (A)", "label", None),
    ("The answer is (A)", None, None),
    ("", "mc", None),
    (None, "math", None),
])
def test_extract_answer(text, fmt, answer):
    assert extract_answer(text, fmt) == answer


def test_math_answers_that_agree_extract_equal():
    texts = ["\\boxed{\\frac{3}{4}}", "The answer is 0.75", "\\boxed{3/4}",
             "\\boxed{\\tfrac{3}{4}}"]
    assert {extract_answer(t, "math") for t in texts} == {"3/4"}
