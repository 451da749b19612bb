"""The value boundary between the code under test and its tests (issue 21): forged answers that
read the tests' frames or lie about equality fail in both checkers, honest ones pass, only
plain values cross, and the sandbox's filesystem holds only what it may read (numpy
included, read-only; `stat` of any other host path finds nothing).
"""

import gzip
import json
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_conductor.config import default_data_dir
from ray_conductor.errors import SandboxError
from ray_conductor.testing.forgeries import KINDS, forged_answer
from ray_conductor.verify import sandbox_values as sv
from ray_conductor.verify.boundary import crossing_names, run_across
from ray_conductor.verify.code import CROSSING, humaneval_correct, mbpp_correct
from ray_conductor.verify.sandbox import run_untrusted

try:
    run_untrusted("pass")
except SandboxError as e:
    pytest.skip(f"the full sandbox is unavailable here: {e}", allow_module_level=True)

HUMANEVAL = Path(default_data_dir()) / "benchmarks" / "HumanEval.jsonl.gz"
TESTS = ["assert square(3) == 9", "assert square(-2) == 4", "assert str(square(5)) == '25'"]
PROBLEM = {"prompt": "def inc(x):\n    \"\"\"x + 1\"\"\"\n", "entry_point": "inc",
           "test": "def check(candidate):\n    assert candidate(1) == 2\n"
                   "    assert candidate(41) == 42\n    assert abs(candidate(0.5) - 1.5) < 1e-9\n"}


# -- the forgeries of the issue, in both checkers -----------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_a_forged_answer_fails_the_mbpp_checker(kind):
    before = CROSSING["boundary"]
    assert not mbpp_correct(forged_answer(kind, "square"), TESTS)
    assert CROSSING["boundary"] == before + 1  # judged across the boundary


@pytest.mark.parametrize("kind", KINDS)
def test_a_forged_answer_fails_the_humaneval_checker(kind):
    assert not humaneval_correct(forged_answer(kind, "inc"), PROBLEM)


def test_honest_answers_still_pass_both_checkers():
    assert mbpp_correct("```python\ndef square(x):\n    return x * x\n```", TESTS)
    assert humaneval_correct("    return x + 1\n", PROBLEM)
    assert not humaneval_correct("    return x + 2\n", PROBLEM)


@pytest.mark.skipif(not HUMANEVAL.exists(), reason="shared data not laid out")
def test_the_forgeries_fail_on_real_humaneval_problems():
    """Problems whose asserts compare with constants (what frame reading returns) and with
    computed values."""
    with gzip.open(HUMANEVAL, "rt") as f:
        problems = {p["task_id"]: p for p in map(json.loads, f)}
    for tid in ("HumanEval/0", "HumanEval/2", "HumanEval/32"):
        p = problems[tid]
        assert humaneval_correct(p["canonical_solution"], p), tid
        for kind in ("frame_bytecode", "eq_always", "int_subclass"):
            assert not humaneval_correct(forged_answer(kind, p["entry_point"]), p), (tid, kind)


# -- what crossing means -------------------------------------------------------------------------

def test_the_program_sees_no_test_frame_and_no_expected_value():
    program = ("import sys, gc\n"
               "def f(x):\n"
               "    frames, fr = [], sys._getframe()\n"
               "    while fr is not None:\n"
               "        frames.append(fr.f_code.co_filename)\n"
               "        fr = fr.f_back\n"
               "    return repr(frames)\n")
    r = run_across(program, "seen = f(1)\nassert '<tests>' not in seen, seen\n"
                            "assert 'SECRET-EXPECTED' != f(2)", ["f"])
    assert r.passed and r.boundary


def test_exceptions_cross_as_builtin_types_and_a_dead_program_fails():
    program = ("class MyError(ValueError):\n    pass\n"
               "def f(x):\n    if x < 0:\n        raise MyError('negative')\n    return x\n"
               "def g():\n    import os\n    os._exit(0)\n")
    tests = ("try:\n    f(-1)\nexcept ValueError as e:\n    assert str(e) == 'negative'\n"
             "else:\n    raise AssertionError('no exception')\nassert f(3) == 3\n")
    assert run_across(program, tests, ["f", "g"]).passed
    # a program that dies mid-call: `except Exception` in the tests cannot swallow it
    dead = run_across(program, "try:\n    g()\nexcept Exception:\n    pass\n", ["f", "g"])
    assert not dead.passed and "CandidateGone" in dead.stderr


def test_a_result_that_is_no_plain_value_fails_the_call():
    program = "class Node:\n    pass\ndef f():\n    return Node()\n"
    r = run_across(program, "f()", ["f"])
    assert not r.passed and "cannot cross" in r.stderr


def test_a_program_that_writes_its_own_replies_gets_only_plain_values():
    """The program rewrites the serving loop to answer with a hand-made, malformed reply.
    (Every fd up to 4096: the pipes are inherited from the judging process, whose own open
    files, many under a full test run, set their numbers.)"""
    program = ("import os\n"
               "for fd in range(3, 4096):\n"
               "    try:\n        os.write(fd, b'{\"value\": {\"__eq__\": true}}\\n')\n"
               "    except OSError:\n        pass\n"
               "def f():\n    return 1\n")
    r = run_across(program, "assert f() == 1", ["f"])
    assert not r.passed


@pytest.mark.parametrize("tests, names, why", [
    ("assert f(1) == 2\nassert g(2) == 3", ["f", "g"], None),
    ("assert math.isclose(f(1), 2.0)", ["f"], None),
    ("assert f.__name__ == 'f'", [], "used as a value"),
    ("assert isinstance(f(1), Node)", [], "used as a value"),
    ("def helper(y):\n    return y * 2\nassert f(helper(1)) == 2", ["f"], None),
    ("assert f(1 ==", [], "do not parse"),
])
def test_which_test_shapes_cross(tests, names, why):
    got, modules, reason = crossing_names(tests)
    assert got == names
    assert (reason is None) if why is None else why in reason
    if "math" in tests and why is None:
        assert modules == ["math"]


def test_a_shape_that_cannot_cross_is_judged_shared_and_counted():
    key = "shared: `square` is used as a value on line 1, not only called"
    before = CROSSING[key]
    assert mbpp_correct("def square(x):\n    return x * x\n",
                        ["assert callable(square)", "assert square(2) == 4"])
    assert CROSSING[key] == before + 1


# -- the values that cross -----------------------------------------------------------------------

plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text() | st.binary() | st.complex_numbers(allow_nan=False)
    | st.fractions() | st.decimals(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text() | st.integers(), inner, max_size=3)
    | st.frozensets(st.integers() | st.text(), max_size=3), max_leaves=12)


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=300, deadline=None)
@given(plain)
def test_plain_values_round_trip_exactly(value):
    line = sv.dumps({"value": sv.encode(value)})
    assert _same(sv.decode(sv.loads(line)["value"]), value)


def test_decoding_builds_exact_types_whatever_the_encoder_was_given():
    class Liar(int):
        def __eq__(self, other):
            return True
    got = sv.decode(sv.encode_result(Liar(3)))
    assert type(got) is int and got == 3 and got != 4
    assert sv.decode(sv.encode_result(iter([1, 2]))).__next__() == 1
    assert type(sv.decode(sv.encode(Fraction(1, 3)))) is Fraction
    assert sv.decode(sv.encode(Decimal("1.5"))) == Decimal("1.5")
    assert sv.decode(sv.encode(range(1, 9, 2))) == range(1, 9, 2)


@pytest.mark.parametrize("line", [
    b"[1, 2]", b'{"value": NaN}', b"not json", b'{"value": {"list": 1}}',
    b'{"value": {"set": [{"list": []}]}}', b'{"value": {"dict": [[1]]}}',
    b'{"value": {"mock": "ANY"}}', b'{"value": {"int": "12"}}',
    b'{"value": {"range": [1, 2, 0]}}', b'{"value": 99999999999999999999}',
    b'{"value": ' + b'{"list": [' * 200 + b']}' * 200 + b"}",
])
def test_hostile_replies_are_refused(line):
    with pytest.raises(sv.ValueRefused):
        sv.decode(sv.loads(line)["value"])


# -- what the sandbox can see ----------------------------------------------------------------------

def test_numpy_is_readable_but_not_writable():
    r = run_untrusted("import numpy as np, os\nprint(int(np.arange(4).sum()))\n"
                      "try:\n    open(os.path.join(os.path.dirname(np.__file__), 'x'), 'w')\n"
                      "except OSError as e:\n    print('refused', type(e).__name__)\n")
    assert r.ok, r.stderr
    assert r.stdout.splitlines()[0] == "6" and "refused" in r.stdout
    assert mbpp_correct("```python\nimport numpy as np\ndef total(xs):\n"
                        "    return np.sum(xs)\n```", ["assert total([1, 2, 3]) == 6"])


def test_stat_finds_no_host_path_outside_the_allowed_trees(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("x" * 1234)
    r = run_untrusted("import os, sys\nfor p in [%r, '/etc/passwd', '/etc', %r]:\n"
                      "    print(p, os.path.exists(p))\nprint(os.path.exists(sys.executable))"
                      % (str(secret), default_data_dir()))
    assert r.ok, r.stderr
    lines = r.stdout.splitlines()
    assert all(line.endswith("False") for line in lines[:2]) and lines[3].endswith("False")
    assert lines[-1] == "True"
