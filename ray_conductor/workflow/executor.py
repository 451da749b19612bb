"""Carry a `Workflow` out over a `WorkerPool`, as a DAG: a step starts as soon as the steps it
may see have finished, so independent steps run concurrently.

The run never raises on a worker's failure: the failure is recorded in the step's trace, the
steps that depend on it run with the outputs that exist, and the answer is the last step's
output (empty when the last step failed).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ray_conductor.workers.base import Completion, Message, WorkerPool
from ray_conductor.workflow.model import Step, Workflow


@dataclass
class StepTrace:
    index: int
    worker: str
    subtask: str
    access: list[int]
    start_s: float = 0.0  # seconds from the run's start
    end_s: float = 0.0
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    error: str | None = None
    error_code: str | None = None
    served_by: str | None = None
    queue_wait_s: float = 0.0
    attempts: int = 0

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class Trace:
    question: str
    steps: list[StepTrace] = field(default_factory=list)
    answer: str = ""
    wall_s: float = 0.0

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.steps)

    @property
    def calls(self) -> int:
        return len(self.steps)

    @property
    def errors(self) -> list[str]:
        return [f"step {s.index} ({s.worker}): {s.error}" for s in self.steps if s.error]

    @property
    def final_worker(self) -> str | None:
        if not self.steps:
            return None
        last = self.steps[-1]
        return last.served_by or last.worker

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(cost=self.cost, calls=self.calls)
        return d


def step_messages(question: str, step: Step, seen: list[tuple[int, str]]) -> list[Message]:
    """The worker's view: the original question, the outputs it may see, its subtask."""
    blocks = "".join(f"<Agent {k} response>\n{text}\n</Agent {k} response>\n\n" for k, text in seen)
    content = f"Original question:\n{question}\n\n{blocks}Your task:\n{step.subtask}"
    return [{"role": "user", "content": content}]


async def _call(pool: WorkerPool, worker: str, messages: list[Message], timeout_s: float | None,
                params: dict[str, Any]) -> Completion:
    try:
        coro = pool.complete(worker, messages, **params)
        return await (asyncio.wait_for(coro, timeout_s) if timeout_s else coro)
    except asyncio.TimeoutError:
        return Completion(worker=worker, error=f"step timed out after {timeout_s}s",
                          error_code="timeout")
    except Exception as e:  # a pool that breaks its contract must not break the run
        code = getattr(e, "code", type(e).__name__)
        return Completion(worker=worker, error=str(e) or type(e).__name__, error_code=code)


async def execute(
    workflow: Workflow,
    question: str,
    pool: WorkerPool,
    *,
    query_id: str | None = None,
    step_timeout_s: float | None = None,
    params: dict[str, Any] | None = None,
) -> Trace:
    """Run `workflow` for `question` and return its `Trace`.

    `query_id` travels to the pool as `metadata` (replay pools answer by it); `params` are
    sampling parameters passed to every call.
    """
    t0 = time.perf_counter()
    call_params = dict(params or {})
    call_params["metadata"] = {**call_params.get("metadata", {}), "query_id": query_id,
                               "question": question}
    traces = [StepTrace(i, s.worker, s.subtask, list(s.visible(i))) for i, s in enumerate(workflow)]
    loop = asyncio.get_running_loop()
    done: list[asyncio.Future[None]] = [loop.create_future() for _ in workflow]

    async def run_step(i: int, step: Step) -> None:
        st = traces[i]
        for k in st.access:
            await done[k]
        seen = [(k, traces[k].text) for k in st.access if traces[k].error is None]
        st.start_s = time.perf_counter() - t0
        c = await _call(pool, step.worker, step_messages(question, step, seen), step_timeout_s,
                        call_params)
        st.end_s = time.perf_counter() - t0
        st.text, st.input_tokens, st.output_tokens, st.cost = (
            c.text or "", c.input_tokens, c.output_tokens, c.cost)
        st.error, st.error_code, st.served_by = c.error, c.error_code, c.served_by
        st.queue_wait_s, st.attempts = c.queue_wait_s, len(c.attempts) or 1

    async def guarded(i: int, step: Step) -> None:
        try:
            await run_step(i, step)
        finally:
            done[i].set_result(None)

    await asyncio.gather(*(guarded(i, s) for i, s in enumerate(workflow)))
    trace = Trace(question=question, steps=traces, wall_s=time.perf_counter() - t0)
    if traces and traces[-1].error is None:
        trace.answer = traces[-1].text
    return trace


def execute_sync(workflow: Workflow, question: str, pool: WorkerPool, **kw: Any) -> Trace:
    """`execute` for callers without an event loop (scripts, tests)."""
    return asyncio.run(execute(workflow, question, pool, **kw))
