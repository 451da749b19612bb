"""The workflow language: `Step`, `Workflow`, parsing, rendering, the conductor's prompt, and
the DAG executor.

Owns: the plan text format and its validation; running a plan over any `WorkerPool`.
Must not import: Ray, torch, litellm, or any training/serving code.
"""

from ray_conductor.errors import WorkflowError
from ray_conductor.workflow.executor import StepTrace, Trace, execute, execute_sync, step_messages
from ray_conductor.workflow.model import Step, Workflow
from ray_conductor.workflow.parse import DEFAULT_MAX_STEPS, parse, render, strip_reasoning, validate
from ray_conductor.workflow.prompt import build_prompt, describe_pool

__all__ = [
    "DEFAULT_MAX_STEPS", "Step", "StepTrace", "Trace", "Workflow", "WorkflowError", "build_prompt",
    "describe_pool", "execute", "execute_sync", "parse", "render", "step_messages",
    "strip_reasoning", "validate",
]
