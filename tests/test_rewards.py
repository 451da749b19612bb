"""Reward functions and the verifier registry."""

import gzip
import json
from pathlib import Path

import pytest

from ray_conductor.config import default_data_dir
from ray_conductor.errors import ConfigError
from ray_conductor.rl.rewards import (
    REWARDS, RewardConfig, register_reward, reward, score, verifier_for,
)

HUMANEVAL = Path(default_data_dir()) / "benchmarks" / "HumanEval.jsonl.gz"


def test_the_papers_reward_table():
    assert reward(parsed=False, correct=False) == 0.0
    assert reward(parsed=True, correct=False) == 0.5
    assert reward(parsed=True, correct=True) == 1.0
    assert reward(True, True, cost=3.0, calls=5) == 1.0  # the paper has no penalties


def test_linear_penalties_per_dollar_and_per_call():
    cfg = RewardConfig(cost_penalty_per_dollar=10.0, call_penalty=0.05)
    assert reward(True, True, cost=0.01, calls=2, cfg=cfg) == pytest.approx(1 - 0.1 - 0.1)
    assert reward(True, False, cost=0.01, calls=2, cfg=cfg) == pytest.approx(0.5 - 0.2)
    assert reward(False, False, cost=0.01, calls=2, cfg=cfg) == 0.0  # nothing ran


def test_cost_aware_never_reorders_outcomes():
    cheap = RewardConfig(name="cost_aware", cost_penalty_per_dollar=1.0, call_penalty=0.01)
    assert reward(True, True, cost=0.1, calls=2, cfg=cheap) == pytest.approx(1 - 0.1 - 0.02)
    dear = RewardConfig(name="cost_aware", cost_penalty_per_dollar=100.0)
    assert reward(True, True, cost=1.0, cfg=dear) == 0.5  # still no worse than wrong
    assert reward(True, False, cost=1.0, cfg=dear) == 0.0  # still no worse than unparsable
    assert reward(False, False, cost=1.0, cfg=dear) == 0.0


def test_custom_numbers_and_plugged_in_rewards():
    assert reward(True, False, cfg=RewardConfig(wrong=0.0, parse_fail=-1.0)) == 0.0
    assert reward(False, False, cfg=RewardConfig(parse_fail=-1.0)) == -1.0

    @register_reward("test_latency_free")
    def only_correct(parsed, correct, cost, calls, cfg):
        return 2.0 if correct else 0.0

    try:
        assert reward(True, True, cfg=RewardConfig(name="test_latency_free")) == 2.0
    finally:
        del REWARDS["test_latency_free"]
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        reward(True, True, cfg=RewardConfig(name="nope"))


def test_multiple_choice_verifier():
    v = verifier_for("mc")
    assert v("Let me think... The answer is (C).", "C")
    assert v("the answer is (C)", " c ")  # the reference letter is normalised
    assert not v("The answer is (B).", "C")
    assert not v("I cannot decide.", "C")


def test_math_verifiers():
    assert verifier_for("gsm8k")("So 1,234 in total.", "Working...\n#### 1234")
    assert not verifier_for("gsm8k")("So 1,235 in total.", "#### 1234")
    assert verifier_for("math")(r"Thus \boxed{\frac12}.", "0.5")
    assert not verifier_for("math")(r"Thus \boxed{\frac13}.", "0.5")


def test_mbpp_verifier_runs_the_asserts():
    v = verifier_for("mbpp")
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    assert v(good, tests) and v(good, "\n".join(tests)) and v(good, {"test_list": tests})
    assert not v(bad, tests)
    assert not v(good, [])  # RouterBench rows carry no tests: never "correct" by default


@pytest.mark.skipif(not HUMANEVAL.exists(), reason="shared data not laid out")
def test_humaneval_verifier_on_a_real_problem():
    problem = json.loads(gzip.open(HUMANEVAL, "rt").readline())
    v = verifier_for("humaneval")
    whole = ("Here is my solution:\n```python\nfrom typing import List\n\n"
             "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
             "    return any(abs(a - b) < threshold\n"
             "               for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```\n")
    assert v(whole, problem)
    assert v(problem["canonical_solution"], problem)  # a body continuing the prompt
    assert not v("```python\ndef has_close_elements(numbers, threshold):\n    return True\n```",
                 problem)


def test_unknown_format_and_score():
    with pytest.raises(ConfigError, match="no verifier"):
        verifier_for("essay")
    assert score(None, "#### 3", "gsm8k") == (0.0, False)
    assert score("it is 3", "#### 3", "gsm8k") == (1.0, True)
    assert score("it is 4", "#### 3", "gsm8k") == (0.5, False)


def test_extract_code_from_markdown():
    from ray_conductor.verify.code import extract_code

    text = ("Example:\n```python\nprint(f(1))\n```\n"
            "Solution:\n```python\ndef helper():\n    pass\n```\n"
            "```py\ndef f(x):\n    return x\n```\n```bash\nrm -rf /\n```")
    assert extract_code(text, "f") == "def f(x):\n    return x\n"
    assert extract_code(text) == "def helper():\n    pass\n"
    assert extract_code("def g():\n    return 1\n") == "def g():\n    return 1"
    assert extract_code("```\nx = 1\n") == "x = 1\n"  # an unclosed fence still counts


def test_a_code_verifier_refuses_at_build_time_where_the_sandbox_is_incomplete(monkeypatch):
    """Without a kernel layer (and without the opt-in) training stops when the verifier is
    built, with the sandbox's one line, not mid-rollout."""
    import ray_conductor.verify.sandbox as sandbox
    from ray_conductor.errors import SandboxError
    from ray_conductor.rl.rewards import verifier_for

    real = sandbox.run_untrusted
    monkeypatch.delenv("RAY_CONDUCTOR_UNSAFE_SANDBOX", raising=False)
    monkeypatch.setattr(sandbox, "run_untrusted",
                        lambda *a, **kw: real(*a, simulate_missing=("seccomp",), **kw))
    with pytest.raises(SandboxError, match="RAY_CONDUCTOR_UNSAFE_SANDBOX"):
        verifier_for("mbpp")
