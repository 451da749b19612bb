"""Rewards for the conductor's workflows, and the verifiers that decide "correct".

The default is the paper's: 0 when the plan cannot be parsed, 0.5 when it runs but the final
answer is wrong, 1 when it is right. Both tables are registries, so a user plugs in a reward
or a verifier by name (`register_reward`, `register_verifier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ray_conductor.errors import ConfigError


@dataclass
class RewardConfig:
    """Which reward (`name` in `REWARDS`) and its numbers. Penalties are off in the paper."""

    name: str = field(default="paper", metadata={"help": "reward function (see REWARDS)"})
    parse_fail: float = field(default=0.0, metadata={"help": "reward of an unparsable plan"})
    wrong: float = field(default=0.5, metadata={"help": "reward of a plan that ran, wrong"})
    correct: float = field(default=1.0, metadata={"help": "reward of a correct answer"})
    cost_penalty_per_dollar: float = field(default=0.0, metadata={
        "help": "subtracted per dollar the workflow spent", "min": 0})
    call_penalty: float = field(default=0.0, metadata={
        "help": "subtracted per worker call", "min": 0})


RewardFn = Callable[[bool, bool, float, int, RewardConfig], float]
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn(parsed, correct, cost, calls, cfg) -> float` available by name."""

    def add(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return add


def _outcome(parsed: bool, correct: bool, cfg: RewardConfig) -> float:
    if not parsed:
        return cfg.parse_fail
    return cfg.correct if correct else cfg.wrong


def _penalty(cost: float, calls: int, cfg: RewardConfig) -> float:
    return cfg.cost_penalty_per_dollar * cost + cfg.call_penalty * calls


@register_reward("paper")
def paper_reward(parsed: bool, correct: bool, cost: float, calls: int, cfg: RewardConfig) -> float:
    """The paper's outcome reward, minus the (default zero) linear penalties of a parsed plan."""
    base = _outcome(parsed, correct, cfg)
    return base - _penalty(cost, calls, cfg) if parsed else base


@register_reward("cost_aware")
def cost_aware_reward(parsed: bool, correct: bool, cost: float, calls: int,
                      cfg: RewardConfig) -> float:
    """Penalties that never reorder outcomes: a costly right answer still beats a wrong one,
    and a costly wrong one still beats an unparsable plan (so spending less is never learned
    by emitting garbage)."""
    if not parsed:
        return cfg.parse_fail
    floor = cfg.wrong if correct else cfg.parse_fail
    return max(_outcome(parsed, correct, cfg) - _penalty(cost, calls, cfg), floor)


def reward(parsed: bool, correct: bool, cost: float = 0.0, calls: int = 0,
           cfg: RewardConfig | None = None) -> float:
    """The configured reward of one rollout."""
    cfg = cfg or RewardConfig()
    fn = REWARDS.get(cfg.name)
    if fn is None:
        raise ConfigError(f"unknown reward {cfg.name!r}; registered: {', '.join(sorted(REWARDS))}")
    return float(fn(parsed, correct, cost, calls, cfg))


# -- verifiers -------------------------------------------------------------------------------

Verifier = Callable[[str, Any], bool]
VERIFIERS: dict[str, Callable[[], Verifier]] = {}  # answer format -> factory


VerifierFactory = Callable[[], Verifier]


def register_verifier(answer_format: str) -> Callable[[VerifierFactory], VerifierFactory]:
    """Decorator over a factory returning `verify(text, reference) -> bool` (imports stay lazy)."""

    def add(factory: VerifierFactory) -> VerifierFactory:
        VERIFIERS[answer_format] = factory
        return factory

    return add


@register_verifier("mc")
def _mc() -> Verifier:
    from ray_conductor.verify.checkers import extract_choice

    def verify(text: str, reference: Any) -> bool:
        got = extract_choice(text)
        return got is not None and str(got).strip().upper() == str(reference).strip().upper()

    return verify


@register_verifier("gsm8k")
def _gsm8k() -> Verifier:
    from ray_conductor.verify.math import gsm8k_equal

    return gsm8k_equal


@register_verifier("math")
def _math() -> Verifier:
    from ray_conductor.verify.math import math_equal

    return math_equal


def _sandbox_ready() -> None:
    """Run a trivial program once when a code verifier is built, so a machine whose kernel
    lacks a sandbox layer fails at the start of training with the sandbox's one-line
    `SandboxError`, not in the middle of a rollout. Both ways code is judged start: across
    the value boundary (two sandboxes) and in one process."""
    from ray_conductor.verify.boundary import run_across
    from ray_conductor.verify.sandbox import run_untrusted

    run_across("def f():\n    return 1\n", "assert f() == 1", ["f"])
    run_untrusted("pass", tests="pass")


@register_verifier("humaneval")
def _humaneval() -> Verifier:
    """Reference: the HumanEval record (`prompt`, `test`, `entry_point`)."""
    from ray_conductor.verify.code import humaneval_correct

    _sandbox_ready()
    return humaneval_correct


@register_verifier("mbpp")
def _mbpp() -> Verifier:
    """Reference: assert lines, or a record with `test_list` (RouterBench rows have none)."""
    from ray_conductor.verify.code import mbpp_correct

    _sandbox_ready()
    return mbpp_correct


def verifier_for(answer_format: str) -> Verifier:
    """`verify(text, reference) -> bool` for an answer format (mc, gsm8k, math, humaneval, mbpp)."""
    factory = VERIFIERS.get(answer_format)
    if factory is None:
        raise ConfigError(
            f"no verifier for answer format {answer_format!r}; "
            f"known: {', '.join(sorted(VERIFIERS))}"
        )
    return factory()


def score(answer: str | None, reference: Any, answer_format: str, *, cost: float = 0.0,
          calls: int = 0, cfg: RewardConfig | None = None) -> tuple[float, bool]:
    """(reward, correct) of a rollout; `answer=None` means the plan could not be parsed."""
    parsed = answer is not None
    correct = parsed and verifier_for(answer_format)(answer or "", reference)
    return reward(parsed, correct, cost, calls, cfg), correct


# -- scoring one plan --------------------------------------------------------------------------


@dataclass
class PlanScore:
    """How one sampled plan fared: its reward and what it took to get it."""

    reward: float
    parsed: bool
    correct: bool = False
    cost: float = 0.0
    calls: int = 0
    final_worker: str | None = None
    trace: Any = None


async def score_plan(workflow: Any, question: str, query_id: str, pool: Any,
                     judge: Callable[[str, str], bool], cfg: RewardConfig | None = None,
                     **execute_kw: Any) -> PlanScore:
    """Execute a parsed plan (`workflow`; None when the text did not parse) over `pool`, judge
    its answer and compute the configured reward. The one place rollouts and benchmarks score
    a plan; no Ray, no model."""
    from ray_conductor.workflow import execute

    if workflow is None:
        return PlanScore(reward(False, False, cfg=cfg), parsed=False)
    if not len(workflow):
        return PlanScore(reward(True, False, cfg=cfg), parsed=True)
    trace = await execute(workflow, question, pool, query_id=query_id, **execute_kw)
    correct = bool(judge(query_id, trace.answer))
    return PlanScore(reward(True, correct, trace.cost, trace.calls, cfg), True, correct,
                     trace.cost, trace.calls, trace.final_worker, trace)
