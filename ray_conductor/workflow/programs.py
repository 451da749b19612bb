"""Program workers: deterministic steps that call no LLM and cost nothing, and the answer
rules shared by every tier (the executor, the lite conductor's environment and policy).

`plurality` is the vote: the most common comparable answer wins. `condition_holds` decides
whether a conditional step ("agree" / "disagree") runs. `with_programs` builds the worker
list the conductor is offered: the pool's LLMs, then the program workers.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from ray_conductor.errors import ConfigError
from ray_conductor.workers.base import WorkerInfo

VOTE = "vote"
# The subtasks fixed programs write (the lite tier's plans, its programs as warm-start
# targets, a program head's plans): answer, escalate after a disagreement, vote.
ANSWER_SUBTASK = "Answer the question."
ESCALATE_SUBTASK = "The answers differ: answer the question."
VOTE_SUBTASK = "Give the most common answer."
PROGRAM_WORKERS: dict[str, WorkerInfo] = {
    VOTE: WorkerInfo(
        VOTE,
        "gives the most common answer among the steps it reads (a tie goes to the strongest "
        "worker); use it after several workers answered the same question",
    ),
}


def program_workers() -> list[WorkerInfo]:
    """The program workers, in the order they are offered after the pool's LLMs."""
    return list(PROGRAM_WORKERS.values())


def is_program(name: str) -> bool:
    return name in PROGRAM_WORKERS


def with_programs(workers: Sequence[WorkerInfo]) -> list[WorkerInfo]:
    """The offered list: the pool's workers, then the program workers. A pool worker named
    like a program worker would make plans ambiguous, so it is an error."""
    clash = sorted({w.name for w in workers if is_program(w.name)})
    if clash:
        raise ConfigError(
            f"the pool has a worker named {', '.join(map(repr, clash))}, which is a program "
            "worker's name; rename that worker in the pool config", code="program_name_clash")
    return list(workers) + program_workers()


def plurality(answers: Sequence[str | None], strength: Sequence[float]) -> int | None:
    """Index of the winning step: the most common non-None answer; among tied answers, the
    step of the highest `strength` (e.g. a worker's price or train accuracy), then the earliest.
    None when no answer is comparable (all None)."""
    if len(answers) != len(strength):
        raise ValueError(f"plurality: {len(answers)} answers but {len(strength)} strengths")
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    tied = [i for i, a in enumerate(answers) if a is not None and counts[a] == top]
    return max(tied, key=lambda i: (strength[i], -i))


def condition_holds(when: str, answers: Sequence[str | None], ran: int | None = None) -> bool:
    """Whether a conditional step runs, given the answers of the steps it sees that succeeded
    (`ran`: how many of the steps it sees ran at all, failed ones included; default: as many
    as there are answers).

    "agree" holds only when agreement is shown: every step that ran succeeded, with the same
    readable answer. "disagree" is its complement, so a cascade escalates whenever agreement
    is not shown: different answers, an unreadable one, or a cheap step that failed.
    """
    if when not in ("agree", "disagree"):
        raise ValueError(f"condition {when!r} is not 'agree' or 'disagree'")
    ran = len(answers) if ran is None else ran
    agree = (len(answers) >= 1 and len(answers) == ran and None not in answers
             and len(set(answers)) == 1)
    return agree if when == "agree" else not agree
