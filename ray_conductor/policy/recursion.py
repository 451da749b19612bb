"""Recursion, as in the Conductor paper: the conductor may list itself as a worker.

`RecursivePool` wraps any `WorkerPool` and, while depth remains, adds a worker named
`cfg.self_name`. Calling it plans a new workflow with the same conductor, whose prompt shows
what the calling step sees (the earlier outputs the executor passed in and the step's
subtask), and runs that workflow over the wrapped pool one level deeper. An inner plan of
three empty lists keeps the previous answer: the last output the step could see.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Sequence

from ray_conductor.errors import ConfigError, PoolError
from ray_conductor.policy.conductor import Conductor
from ray_conductor.workers.base import Completion, Message, WorkerInfo, WorkerPool, failed
from ray_conductor.workflow import execute, render

SELF_DESCRIPTION = (
    "the Conductor itself: writes and runs a new workflow that sees the outputs this step may "
    "read; it may improve on them or keep the last one as the answer"
)
_BLOCK = re.compile(r"<Agent (\d+) response>\n(.*?)\n</Agent \1 response>", re.S)
_TASK = re.compile(r"Your task:\n(.*)\Z", re.S)


def read_step_view(content: str) -> tuple[list[tuple[int, str]], str | None]:
    """The earlier outputs (index, text) and the subtask in an executor step message."""
    outputs = [(int(k), text) for k, text in _BLOCK.findall(content)]
    task = _TASK.search(content)
    return outputs, task.group(1).strip() if task else None


def describe_previous(content: str) -> str:
    """What the inner conductor is told about the run so far."""
    outputs, task = read_step_view(content)
    if not outputs and task is None:
        return content  # not an executor message: show it whole
    blocks = "".join(f"<Agent {k} response>\n{t}\n</Agent {k} response>\n" for k, t in outputs)
    return (blocks or "(no earlier outputs are visible)\n") + f"The calling step's task: {task}"


class RecursivePool:
    """A `WorkerPool` that adds the conductor as a worker while `depth > 0`."""

    def __init__(self, pool: WorkerPool, conductor: Conductor, depth: int | None = None):
        self.pool = pool
        self.conductor = conductor
        self.depth = conductor.cfg.recursion_depth if depth is None else depth
        self.self_name = conductor.cfg.self_name
        if any(w.name == self.self_name for w in pool.workers()):
            raise ConfigError(f"the pool already has a worker named {self.self_name!r}; set the "
                              "conductor's self_name to another name")

    def workers(self) -> Sequence[WorkerInfo]:
        base = list(self.pool.workers())
        if self.depth > 0:
            base.append(WorkerInfo(self.self_name, SELF_DESCRIPTION))
        return base

    async def complete(self, worker: str, messages: list[Message], **params: Any) -> Completion:
        if worker != self.self_name:
            return await self.pool.complete(worker, messages, **params)
        if self.depth <= 0:
            raise PoolError(f"worker {worker!r} (the conductor) is not offered at recursion "
                            "depth 0", code="unknown_worker")
        return await self._recurse(messages, params)

    async def _recurse(self, messages: list[Message], params: dict[str, Any]) -> Completion:
        t0 = time.perf_counter()
        meta = dict(params.get("metadata") or {})
        content = messages[-1]["content"] if messages else ""
        question = meta.get("question") or content
        inner = RecursivePool(self.pool, self.conductor, self.depth - 1)
        result = await asyncio.to_thread(self.conductor.plan, question, inner.workers(),
                                         previous=describe_previous(content))
        info: dict[str, Any] = {
            "depth": self.depth, "plan": render(result.workflow), "plan_texts": result.texts,
            "plan_attempts": result.n_attempts, "plan_fell_back": result.fell_back,
            "plan_errors": result.errors, "kept_previous": not result.workflow.steps,
        }
        if not result.workflow.steps:
            outputs, _ = read_step_view(content)
            if not outputs:
                return failed(self.self_name, "the conductor kept the previous answer, but this "
                              "step sees no earlier output", "nothing_to_keep", meta=info,
                              latency_s=time.perf_counter() - t0)
            return Completion(self.self_name, text=outputs[-1][1], meta=info,
                              latency_s=time.perf_counter() - t0)
        trace = await execute(result.workflow, question, inner, query_id=meta.get("query_id"),
                              answer_format=meta.get("answer_format"),
                              params=params)
        info["trace"] = trace.to_dict()
        done = Completion(
            self.self_name, text=trace.answer,
            input_tokens=sum(s.input_tokens for s in trace.steps),
            output_tokens=sum(s.output_tokens for s in trace.steps),
            cost=trace.cost, latency_s=time.perf_counter() - t0, meta=info,
        )
        last = trace.final_step
        if last is not None and last.error is not None:
            done.error = f"the inner workflow's last step failed: {last.error}"
            done.error_code = "inner_failed"
        return done
