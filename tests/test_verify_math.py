"""GSM8K numbers and MATH answer equivalence, including the sympy helper's safety and deadline."""

import csv
import json
import os
import time
from pathlib import Path

import pytest

from ray_conductor.config import default_data_dir
from ray_conductor.verify.math import (
    _SympyWorker, gsm8k_answer, gsm8k_equal, last_boxed, latex_to_python, math_equal,
    normalize_math,
)

BENCH = Path(default_data_dir()) / "benchmarks"


@pytest.mark.parametrize("text, number", [
    ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18", "18"),
    ("So she pays $1,234.50 in total.", "1234.5"),
    ("The answer is 42. Check: 6 * 7 = 42 and 40 + 2", "42"),
    ("Final: \\boxed{18} (that is 3 x 6)", "18"),
    ("answer: 7 apples", "7"),
    ("It drops to -3 degrees.", "-3"),
    ("He has 2.0 left", "2"),
    ("no digits here", None),
    ("", None),
])
def test_gsm8k_final_number(text, number):
    assert gsm8k_answer(text) == number


def test_gsm8k_compares_numbers_not_strings():
    assert gsm8k_equal("So the total is $18.00.", "Some working.\n#### 18")
    assert gsm8k_equal("1,000 people", "1000")
    assert not gsm8k_equal("17", "#### 18")
    assert not gsm8k_equal("I do not know", "18")


@pytest.mark.skipif(not (BENCH / "gsm8k_test.jsonl").exists(), reason="shared data not laid out")
def test_gsm8k_reference_answers_read_back():
    rows = [json.loads(line) for line in open(BENCH / "gsm8k_test.jsonl")]
    for r in rows:
        final = r["answer"].split("####")[-1].strip().replace(",", "")
        assert gsm8k_answer(r["answer"]) == final
        assert gsm8k_equal(f"The answer is {final}.", r["answer"])


def test_last_boxed_balances_braces():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert last_boxed(r"\fbox{x^{2}}") == "x^{2}"
    assert last_boxed(r"\boxed{\frac{1}{2}") is None
    assert last_boxed("no box") is None


@pytest.mark.parametrize("raw, norm", [
    (r"\dfrac{1}{2}", r"\frac{1}{2}"),
    (r"\left( 1, 2 \right)", "(1,2)"),
    (r"90^\circ", "90"),
    (r"5 \text{ cm}^2", "5"),
    (r"18\text{ ways.}", "18"),
    (r"\frac{h^2}{m}", r"\frac{h^2}{m}"),  # "m" here is a variable, not metres
    ("x = 3", "3"),
    (".5", "0.5"),
    (r"\frac12", r"\frac{1}{2}"),
    (r"\sqrt2", r"\sqrt{2}"),
    ("1,000", "1000"),
    ("3/4", r"\frac{3}{4}"),
    (r"50\%", "50"),
    (r"\$5", "5"),
    (r"\text{(A)}", "(A)"),
])
def test_normalize_math(raw, norm):
    assert normalize_math(raw) == norm


@pytest.mark.parametrize("pred, ref", [
    (r"so \boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{\dfrac{3}{4}}", r"\frac34"),
    (r"The answer is $\sqrt{2}/2$.", r"\frac{\sqrt{2}}{2}"),  # sympy
    (r"\boxed{(x+1)^2}", "x^2+2x+1"),  # sympy
    (r"\boxed{\pi \cdot 2}", r"2\pi"),  # sympy
    (r"\boxed{(1, 2)}", "(1,2)"),
    (r"\boxed{\{2, 1\}}", r"\{1,2\}"),  # a set: order does not matter
    (r"\boxed{50\%}", "50"),
    (r"\boxed{90^\circ}", "90"),
    (r"\boxed{10\text{ cm}}", "10"),
    (r"\boxed{x=3}", "3"),
    (r"\boxed{1.5}", r"\frac{3}{2}"),
    (r"\boxed{\left(\frac{3}{5},\frac{8}{3}\right]}", r"\left(\frac35,\frac{8}{3}\right]"),
    (r"\boxed{\text{(C)}}", "(C)"),
])
def test_math_equal_accepts_equivalent_answers(pred, ref):
    assert math_equal(pred, ref)


@pytest.mark.parametrize("pred, ref", [
    (r"\boxed{3}", "4"),
    (r"\boxed{(1,2)}", "(2,1)"),  # a tuple: order matters
    (r"\boxed{x+1}", "x-1"),
    ("", "1"),
    (r"\boxed{\frac{1}{3}}", "0.33"),
    (r"\boxed{1,2}", "(1,2,3)"),
])
def test_math_equal_rejects_different_answers(pred, ref):
    assert not math_equal(pred, ref)


def test_sympy_can_be_turned_off():
    assert not math_equal(r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}", use_sympy=False)


@pytest.mark.skipif(not (BENCH / "simple_evals_math_test.csv").exists(), reason="no shared data")
def test_every_math_reference_matches_itself_boxed():
    rows = list(csv.DictReader(open(BENCH / "simple_evals_math_test.csv")))
    bad = [r["Answer"] for r in rows
           if not math_equal(rf"so \boxed{{{r['Answer']}}}.", r["Answer"])]
    assert not bad


def test_model_text_never_reaches_eval(tmp_path):
    assert latex_to_python("__import__('os').system('x')") is None
    assert latex_to_python("a.b") is None
    assert latex_to_python("x_1") is None
    assert latex_to_python(r"\frac{x^2-1}{x-1}") == "((x**2-1)/(x-1))"
    marker = tmp_path / "pwned"
    assert not math_equal(rf"\boxed{{__import__('os').mkdir('{marker}')}}", "1")
    assert not marker.exists()


def test_sympy_deadline_kills_the_helper_and_recovers():
    w = _SympyWorker()
    try:
        t = time.monotonic()
        # 2^(2^(2^30)) cannot be compared before the deadline (or within the memory limit)
        assert not w.equal("2^{2^{2^{30}}}", "1", timeout_s=1.0)
        assert time.monotonic() - t < 30  # startup (~1 s) + deadline, not forever
        assert w.equal("x^2", "x x", timeout_s=20.0)  # a fresh helper answers again
    finally:
        w.close()
    assert w._proc is None


def test_sympy_helper_has_a_clean_environment():
    os.environ["RAY_CONDUCTOR_TEST_SECRET"] = "x"
    try:
        w = _SympyWorker()
        assert w.equal("1", "1")
        env = open(f"/proc/{w._proc.pid}/environ", "rb").read().decode()
        assert "RAY_CONDUCTOR_TEST_SECRET" not in env
        w.close()
    finally:
        del os.environ["RAY_CONDUCTOR_TEST_SECRET"]
