"""The conductor's prompt: the worker pool, the rules of the plan language, few-shot plans and
the user's question, as chat messages ready for a chat template."""

from __future__ import annotations

from typing import Sequence

from ray_conductor.workers.base import Message, WorkerInfo
from ray_conductor.workflow.model import Step, Workflow
from ray_conductor.workflow.parse import DEFAULT_MAX_STEPS, render
from ray_conductor.workflow.programs import VOTE, is_program

SYSTEM = (
    "You are the Conductor. You do not answer questions yourself: you write a short workflow "
    "that other models (workers) carry out. For each step give the worker's id, a subtask in "
    "plain language, and which earlier steps' outputs the worker may read ('all' or a list of "
    "step indices, [] for none). The last step's output is the final answer, so the last step "
    "must produce the answer in the format the question asks for."
)
CONDITIONS_HELP = (
    "An access entry can also be a condition: 'disagree:0,1' runs the step only if steps 0 "
    "and 1 gave different answers (and lets it read them), 'agree:0,1' only if they gave the "
    "same answer; 'disagree' or 'agree' alone compares all earlier steps. A skipped step costs "
    "nothing, and the answer is the output of the last step that ran."
)


def describe_pool(workers: Sequence[WorkerInfo], ids: str = "index") -> str:
    """One line per worker: its id (`ids="index"`: its number; "name": the name is the id),
    price and description."""
    lines = []
    for i, w in enumerate(workers):
        price = f"${w.input_price_per_mtok:g}/${w.output_price_per_mtok:g} per 1M in/out tokens"
        if is_program(w.name):
            price = "free, no model"
        desc = f" - {w.description}" if w.description else ""
        head = f"{i}: {w.name}" if ids == "index" else f"- {w.name}"
        lines.append(f"{head} ({price}){desc}")
    return "\n".join(lines)


def _llm_names(workers: Sequence[WorkerInfo], exclude: str | None) -> list[str]:
    """Names for the examples: LLM workers only, never `exclude` (the conductor itself, so the
    examples do not teach recursion by accident)."""
    llms = [w.name for w in workers if not is_program(w.name)]
    return [n for n in llms if n != exclude] or llms


def example_plans(workers: Sequence[WorkerInfo], exclude: str | None = None
                  ) -> list[tuple[str, Workflow]]:
    """Pool-independent few-shot plans over the first and last LLM workers (none without)."""
    names = _llm_names(workers, exclude)
    if not names:
        return []
    a, b = names[0], names[-1]
    return [
        ("What is 17 * 23?", Workflow.single(a, "Compute the product and state the number.")),
        (
            "Which gas makes up most of Earth's atmosphere? (A) oxygen (B) nitrogen (C) argon",
            Workflow(
                (
                    Step(a, "Answer the multiple-choice question; explain briefly.", ()),
                    Step(b, "Check the earlier answer and give the final letter as "
                         "'The answer is (X)'.", "all"),
                )
            ),
        ),
    ]


def conditional_example(workers: Sequence[WorkerInfo], exclude: str | None = None,
                        max_steps: int = DEFAULT_MAX_STEPS) -> tuple[str, Workflow] | None:
    """A cascade: two cheap answers, a strong worker only if they disagree, then a vote when
    `vote` is offered. None when `max_steps` is too small for it."""
    names = _llm_names(workers, exclude)
    if not names or max_steps < 3:
        return None
    a, b, c = names[0], names[min(1, len(names) - 1)], names[-1]
    answer = "Answer the question; end with 'The answer is (X)'."
    steps = [Step(a, answer, ()), Step(b, answer, ()),
             Step(c, "The earlier answers differ. Solve it carefully; end with 'The answer is "
                  "(X)'.", (0, 1), "disagree")]
    if max_steps >= 4 and any(w.name == VOTE for w in workers):
        steps.append(Step(VOTE, "Give the most common answer.", "all"))
    return ("Which planet is the largest? (A) Mars (B) Jupiter (C) Venus", Workflow(tuple(steps)))


def build_prompt(
    question: str,
    workers: Sequence[WorkerInfo],
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    few_shot: bool = True,
    previous: str | None = None,
    self_name: str | None = None,
    conditions: bool | None = None,
    ids: str = "index",
) -> list[Message]:
    """Chat messages asking for a plan for `question` over `workers`.

    `workers` is the offered list, program workers (`vote`) included when offered; each is
    listed with its description. `conditions` explains conditional access entries ("agree",
    "disagree") with one example plan; by default only when a program worker is offered, so
    the prompt of a pool without programs stays as it was. `previous` (for a recursive call)
    holds the earlier workflow and its outputs; the conductor may then answer with three
    empty lists to keep the earlier answer. `self_name` is the conductor's own worker name,
    kept out of the examples. `ids="name"` has the conductor write worker names instead of
    numbers: a tokenizer that splits digits writes 10, 11, ... as "1" plus a digit, which
    biases token-by-token greedy decoding towards the ids starting with 1.
    """
    if ids not in ("index", "name"):
        raise ValueError(f"ids={ids!r}: use 'index' or 'name'")
    names = [w.name for w in workers]
    as_ids = names if ids == "index" else None
    if conditions is None:
        conditions = any(is_program(n) for n in names)
    parts = ["Workers:\n" + describe_pool(workers, ids)]
    if few_shot:
        parts.append(f"Write at most {max_steps} steps as three Python lists, exactly like the "
                     "examples.")
        examples = example_plans(workers, exclude=self_name)
        extra = conditional_example(workers, self_name, max_steps) if conditions else None
        if conditions:
            parts.append(CONDITIONS_HELP)
        for q, wf in examples + ([extra] if extra else []):
            parts.append(f"Example question: {q}\n{render(wf, as_ids)}")
    else:
        parts.append(f"Write at most {max_steps} steps as three Python lists of equal length: "
                     f"model_id = [worker {'ids' if ids == 'index' else 'names'}], "
                     "subtasks = [one instruction per step], "
                     "access_list = ['all' or [] per step].")
        if conditions:
            parts.append(CONDITIONS_HELP)
    if previous:
        parts.append(
            "An earlier workflow already ran:\n" + previous + "\nImprove on it, or reply with "
            "model_id = []\nsubtasks = []\naccess_list = []\nto keep its answer."
        )
    parts.append(f"Question: {question}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]
