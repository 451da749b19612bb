"""Program workers: the vote (`plurality`), the condition rule, and the offered worker list."""

import pytest

from ray_conductor.errors import ConfigError
from ray_conductor.workers.base import WorkerInfo
from ray_conductor.workflow import (
    PROGRAM_WORKERS, VOTE, condition_holds, is_program, plurality, program_workers, with_programs,
)


@pytest.mark.parametrize("answers, strength, winner", [
    (["A", "B", "A"], [1, 9, 1], 0),  # plurality beats strength; earliest of the A's
    (["A", "B", "B"], [1, 1, 3], 2),  # among the winning answer's steps, the strongest
    (["A", "B"], [1, 2], 1),  # a tie of answers: the strongest step
    (["A", "B"], [2, 2], 0),  # equal strength: the earliest
    ([None, "C", None], [9, 0, 9], 1),  # None never wins
    (["B", None, "A", "A", "B"], [0, 9, 0, 0, 5], 4),  # tie A/B: the strongest B step
    ([None, None], [1, 1], None),
    ([], [], None),
])
def test_plurality(answers, strength, winner):
    assert plurality(answers, strength) == winner


def test_plurality_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 answers but 1 strengths"):
        plurality(["A", "B"], [1])


@pytest.mark.parametrize("answers, ran, disagree, agree", [
    (["A", "A"], 2, False, True),
    (["A", "B"], 2, True, False),
    (["A", "A", "B"], 3, True, False),
    (["A"], 1, False, True),  # the one step that ran agrees with itself
    (["A"], 2, True, False),  # the other step failed: agreement is not shown, escalate
    ([], 2, True, False),  # nothing succeeded: escalate
    ([], 0, True, False),  # nothing ran at all
    ([None, "A"], 2, True, False),  # an unreadable answer shows no agreement
    ([None, None], 2, True, False),
    ([None], 1, True, False),
])
def test_condition_holds(answers, ran, disagree, agree):
    assert condition_holds("disagree", answers, ran) is disagree
    assert condition_holds("agree", answers, ran) is agree


def test_condition_holds_refuses_other_words():
    with pytest.raises(ValueError):
        condition_holds("differ", ["A", "B"])


def test_program_registry():
    (vote,) = program_workers()
    assert vote.name == VOTE == "vote" and PROGRAM_WORKERS[VOTE] is vote
    assert (vote.input_price_per_mtok, vote.output_price_per_mtok) == (0.0, 0.0)
    assert "most common answer" in vote.description
    assert is_program("vote") and not is_program("gpt-4o") and not is_program("Vote")


def test_with_programs_appends_them_after_the_pool():
    pool = [WorkerInfo("a", "", 1, 2), WorkerInfo("b")]
    offered = with_programs(pool)
    assert [w.name for w in offered] == ["a", "b", "vote"] and offered[:2] == pool


def test_a_pool_worker_named_vote_is_a_clear_error():
    with pytest.raises(ConfigError, match="worker named 'vote'.*rename") as e:
        with_programs([WorkerInfo("a"), WorkerInfo("vote")])
    assert e.value.code == "program_name_clash"
