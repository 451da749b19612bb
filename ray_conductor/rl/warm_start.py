"""Warm start: the lite tier's programs as supervised targets for the LM conductor.

The lite policy decides turn by turn; over a pool's recorded answers (a `LiteTable`) its
choice on each training question is a fixed program: the workers it called, in order, whether
it voted, and whether a call came only because the earlier answers disagreed (escalation).
`program_workflow` writes that program as a `Workflow` in the plan language (worker names,
short subtasks), so the LM learns to write, for its own prompt, what the lite tier would do.

Pure apart from `lite_programs`, which loads the lite policy and embeds the questions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from ray_conductor.errors import ConfigError
from ray_conductor.workflow.model import Step, Workflow
from ray_conductor.workflow.programs import ANSWER_SUBTASK, ESCALATE_SUBTASK, VOTE, VOTE_SUBTASK


@dataclass
class WarmStartConfig:
    """Supervised warm start on a teacher's programs before GRPO (null source: none)."""

    source: str | None = field(default=None, metadata={
        "help": "teacher: lite:default (the shipped lite policy), lite:DIR, or head:DIR (a "
                "program head's choices, `ray-conductor fit-head`) (null: none)"})
    epochs: int = field(default=2, metadata={"help": "passes over the teacher's programs",
                                             "min": 1})
    batch: int = field(default=16, metadata={"help": "examples per supervised step", "min": 1})
    lr: float | None = field(default=None, metadata={
        "help": "the warm start's learning rate (null: learner.lr)", "gt": 0})
    limit: int | None = field(default=None, metadata={
        "help": "only the first N training questions (null: all)", "min": 1})
    balance: float = field(default=0.0, metadata={
        "help": "draw each example with probability proportional to its program's count to "
                "the power -balance (0: as the teacher wrote them; 1: every program equally "
                "often): the greedy LM otherwise collapses onto the teacher's majority "
                "program", "min": 0, "max": 1})


def program_workflow(calls: Sequence[str], answers: Sequence[Any], voted: bool) -> Workflow:
    """A lite episode as a plan: one step per call; a call made after the earlier answers
    disagreed (third call on) is a `disagree` step over them, so the plan escalates only when
    the lite policy would have; a vote reads every earlier step. `answers[k]` is call k's
    comparable answer (None: none).

    Without a vote, a step with no access list is read by nobody but the answer's own
    position: the lite policy stopped at its last call, so the plan is that call alone (the
    same answer, without paying for calls nothing reads)."""
    steps: list[Step] = []
    for k, worker in enumerate(calls):
        seen = {a for a in answers[:k] if a is not None}
        if k >= 2 and len(seen) > 1:
            steps.append(Step(worker, ESCALATE_SUBTASK, "all", "disagree"))
        else:
            steps.append(Step(worker, ANSWER_SUBTASK, ()))
    if voted and steps:
        steps.append(Step(VOTE, VOTE_SUBTASK, "all"))
        return Workflow(tuple(steps))
    return Workflow((Step(calls[-1], ANSWER_SUBTASK, ()),) if calls else ())


def shape(workflow: Workflow) -> str:
    """A short name of a plan's shape: `single`, `chain<n>`, `cascade` (a conditional step),
    `vote<n>`."""
    n = sum(1 for s in workflow if s.worker != VOTE)
    if any(s.when for s in workflow):
        return "cascade"
    if any(s.worker == VOTE for s in workflow):
        return f"vote{n}"
    return "single" if n == 1 else f"chain{n}"


def program_key(workflow: Workflow) -> str:
    """A plan as the program it runs: its workers in order, `?` after a conditional step
    (subtask wording left out), e.g. `gemini-1.5-flash-002 > gemini-1.5-pro-002 > gpt-4o? >
    vote`."""
    return " > ".join(s.worker + ("?" if s.when else "") for s in workflow)


def balanced(keys: Sequence[str], balance: float, seed: int = 0) -> list[int]:
    """Indices of a resample of `keys` (one program key per example) as long as `keys`:
    each draw picks example i with probability proportional to count(keys[i]) ** -balance,
    so program k's share becomes proportional to count(k) ** (1 - balance). balance 0: every
    index once, in order (no resample)."""
    import numpy as np

    if not balance or not keys:
        return list(range(len(keys)))
    counts = Counter(keys)
    w = np.array([counts[k] ** -float(balance) for k in keys])
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(len(keys), size=len(keys), replace=True, p=w / w.sum()).tolist())


def teacher_programs(source: str, data: Any, split: str = "train") -> dict[str, Workflow]:
    """query_id -> the teacher's program for each question of `split`: `lite_programs` for
    lite:..., `head_programs` for head:DIR."""
    if source.startswith("head:"):
        return head_programs(source.split(":", 1)[1], data, split)
    return lite_programs(source, data, split)


def head_programs(path: str, data: Any, split: str = "train") -> dict[str, Workflow]:
    """query_id -> the program a `ProgramHead` chooses for each question of `split`, read from
    the hidden state of the model it was fit on (whole cascades: the disagree step and the
    vote are part of the plan, whatever the recorded answers). Reads no labels."""
    from ray_conductor.policy.hf_engine import TransformersEngine
    from ray_conductor.policy.program_head import ProgramHead

    head = ProgramHead.load(path)
    model = head.meta.get("model")
    if not model:
        raise ConfigError(f"warm_start.source=head:{path}: the head does not name the model it "
                          "was fit on; refit it with `ray-conductor fit-head`")
    queries = data.queries(split)
    engine = TransformersEngine(model, autocast=head.meta.get("autocast"), batch_size=16)
    picks = head.choose(engine.embed([q.query[:head.question_chars] for q in queries]),
                        [w.name for w in data.worker_infos()] + [VOTE])
    if (picks < 0).any():
        raise ConfigError(f"warm_start.source=head:{path}: its programs call workers this pool "
                          "does not have; fit the head on this pool")
    return {q.query_id: head.workflow(int(k)) for q, k in zip(queries, picks)}


def lite_programs(source: str, data: Any, split: str = "train") -> dict[str, Workflow]:
    """query_id -> the lite policy's program on each question of `split`, as a workflow.
    `source`: lite:default or lite:DIR. Reads the recorded answers (never the test split's
    labels when split=train)."""
    from ray_conductor.lite import default_policy_dir
    from ray_conductor.lite.conductor import LiteConductor
    from ray_conductor.lite.table import NO_ANSWER
    from ray_conductor.lite.train import pool_table

    if not source.startswith("lite:"):
        raise ConfigError(f"warm_start.source={source!r}: use lite:default, lite:DIR or "
                          "head:DIR")
    path = source.split(":", 1)[1]
    lite = LiteConductor.load(default_policy_dir() if path == "default" else path,
                              data.worker_infos())
    table = pool_table(data, split, lite.featurizer).reorder(lite.workers)
    got = lite.rollout(table)
    out = {}
    for i, qid in enumerate(table.query_ids):
        calls = got.workflows[i]
        codes = [int(table.answers[i, a]) for a in calls]
        answers = [None if c == NO_ANSWER else c for c in codes]
        out[qid] = program_workflow([lite.workers[a] for a in calls], answers,
                                    bool(got.voted[i]))
    return out
