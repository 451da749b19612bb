"""The workflow language: `Step`, `Workflow`, parsing, rendering, the conductor's prompt,
program workers (`vote`) and conditional steps, and the DAG executor.

Owns: the plan text format and its validation; running a plan over any `WorkerPool`.
Must not import: Ray, torch, litellm, or any training/serving code.
"""

from ray_conductor.errors import WorkflowError
from ray_conductor.workflow.executor import (
    ConversationPool, StepTrace, Trace, execute, execute_sync, step_messages, with_conversation,
)
from ray_conductor.workflow.model import CONDITIONS, Step, Workflow
from ray_conductor.workflow.parse import (
    DEFAULT_MAX_STEPS, MAX_SUBTASK_CHARS, MAX_TEXT_CHARS, parse, render, strip_reasoning, validate,
)
from ray_conductor.workflow.programs import (
    PROGRAM_WORKERS, VOTE, condition_holds, is_program, plurality, program_workers, with_programs,
)
from ray_conductor.workflow.prompt import build_prompt, describe_pool

__all__ = [
    "CONDITIONS", "ConversationPool", "DEFAULT_MAX_STEPS", "MAX_SUBTASK_CHARS", "MAX_TEXT_CHARS",
    "PROGRAM_WORKERS", "Step", "StepTrace", "Trace", "VOTE", "Workflow", "WorkflowError",
    "build_prompt", "condition_holds", "describe_pool", "execute", "execute_sync", "is_program",
    "parse", "plurality", "program_workers", "render", "step_messages", "strip_reasoning",
    "validate", "with_conversation", "with_programs",
]
