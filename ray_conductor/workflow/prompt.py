"""The conductor's prompt: the worker pool, the rules of the plan language, few-shot plans and
the user's question, as chat messages ready for a chat template."""

from __future__ import annotations

from typing import Sequence

from ray_conductor.workers.base import Message, WorkerInfo
from ray_conductor.workflow.model import Step, Workflow
from ray_conductor.workflow.parse import DEFAULT_MAX_STEPS, render

SYSTEM = (
    "You are the Conductor. You do not answer questions yourself: you write a short workflow "
    "that other models (workers) carry out. For each step give the worker's id, a subtask in "
    "plain language, and which earlier steps' outputs the worker may read ('all' or a list of "
    "step indices, [] for none). The last step's output is the final answer, so the last step "
    "must produce the answer in the format the question asks for."
)


def describe_pool(workers: Sequence[WorkerInfo]) -> str:
    lines = []
    for i, w in enumerate(workers):
        price = f"${w.input_price_per_mtok:g}/${w.output_price_per_mtok:g} per 1M in/out tokens"
        desc = f" - {w.description}" if w.description else ""
        lines.append(f"{i}: {w.name} ({price}){desc}")
    return "\n".join(lines)


def example_plans(workers: Sequence[WorkerInfo], exclude: str | None = None
                  ) -> list[tuple[str, Workflow]]:
    """Pool-independent few-shot plans over the first and last workers (never `exclude`, the
    conductor itself, so the examples do not teach recursion by accident)."""
    names = [w.name for w in workers if w.name != exclude] or [w.name for w in workers]
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


def build_prompt(
    question: str,
    workers: Sequence[WorkerInfo],
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    few_shot: bool = True,
    previous: str | None = None,
    self_name: str | None = None,
) -> list[Message]:
    """Chat messages asking for a plan for `question` over `workers`.

    `previous` (for a recursive call) holds the earlier workflow and its outputs; the conductor
    may then answer with three empty lists to keep the earlier answer. `self_name` is the
    conductor's own worker name, kept out of the examples.
    """
    names = [w.name for w in workers]
    parts = ["Workers:\n" + describe_pool(workers)]
    if few_shot:
        parts.append(f"Write at most {max_steps} steps as three Python lists, exactly like the "
                     "examples.")
        for q, wf in example_plans(workers, exclude=self_name):
            parts.append(f"Example question: {q}\n{render(wf, names)}")
    else:
        parts.append(f"Write at most {max_steps} steps as three Python lists of equal length: "
                     "model_id = [worker ids], subtasks = [one instruction per step], "
                     "access_list = ['all' or [] per step].")
    if previous:
        parts.append(
            "An earlier workflow already ran:\n" + previous + "\nImprove on it, or reply with "
            "model_id = []\nsubtasks = []\naccess_list = []\nto keep its answer."
        )
    parts.append(f"Question: {question}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]
