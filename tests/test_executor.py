"""The DAG executor: concurrency, what each step sees, traces, and failures as data."""

import asyncio
import time

from ray_conductor.errors import PoolError
from ray_conductor.workers.base import Completion, WorkerInfo
from ray_conductor.workflow import Step, Workflow, execute


class SleepyPool:
    """Each worker sleeps, then echoes which agent blocks it saw; 'broken' always fails."""

    def __init__(self, delay=0.0):
        self.delay = delay
        self.calls = []

    def workers(self):
        return [WorkerInfo(n) for n in ("a", "b", "c", "broken")]

    async def complete(self, worker, messages, **params):
        self.calls.append((worker, messages, params))
        await asyncio.sleep(self.delay)
        if worker == "broken":
            return Completion(worker, error="HTTP 500 from provider", error_code="server_error")
        if worker == "raises":
            raise PoolError("no such worker 'raises'")
        seen = [k for k in range(5) if f"<Agent {k} response>" in messages[0]["content"]]
        return Completion(worker, text=f"{worker} saw {seen}", input_tokens=10,
                          output_tokens=5, cost=0.01)


async def test_independent_steps_run_concurrently():
    pool = SleepyPool(delay=1.0)
    wf = Workflow((Step("a", "x", ()), Step("b", "y", ())))
    t0 = time.perf_counter()
    trace = await execute(wf, "Q", pool)
    wall = time.perf_counter() - t0
    assert 0.9 < wall < 1.5, wall
    assert abs(trace.steps[0].start_s - trace.steps[1].start_s) < 0.2


async def test_dependent_step_waits_and_sees_only_its_access():
    pool = SleepyPool(delay=0.2)
    wf = Workflow((Step("a", "x", ()), Step("b", "y", ()), Step("c", "z", (1,))))
    trace = await execute(wf, "Q", pool, query_id="q1")
    assert trace.answer == "c saw [1]"
    assert trace.steps[2].start_s >= trace.steps[1].end_s - 1e-3
    assert 0.35 < trace.wall_s < 0.7  # two levels of 0.2 s, not three


async def test_messages_hold_question_subtask_and_agent_blocks():
    pool = SleepyPool()
    wf = Workflow((Step("a", "solve", ()), Step("b", "check", "all")))
    await execute(wf, "What is 2+2?", pool, query_id="q7", params={"temperature": 0})
    _, msgs, params = pool.calls[1]
    text = msgs[0]["content"]
    assert "What is 2+2?" in text and "check" in text
    assert "<Agent 0 response>\na saw []\n</Agent 0 response>" in text
    assert params["temperature"] == 0
    assert params["metadata"] == {"query_id": "q7", "question": "What is 2+2?"}


async def test_trace_contents_and_totals():
    trace = await execute(Workflow((Step("a", "x", ()), Step("b", "y", "all"))), "Q", SleepyPool())
    s0, s1 = trace.steps
    assert (s0.index, s0.worker, s0.subtask, s0.access) == (0, "a", "x", [])
    assert s1.access == [0]
    assert (s1.input_tokens, s1.output_tokens, s1.cost) == (10, 5, 0.01)
    assert trace.calls == 2 and abs(trace.cost - 0.02) < 1e-12
    assert trace.final_worker == "b"
    d = trace.to_dict()
    assert d["calls"] == 2 and d["steps"][1]["worker"] == "b"


async def test_failed_step_is_recorded_and_dependents_still_run():
    wf = Workflow((Step("broken", "x", ()), Step("a", "y", ()), Step("c", "z", "all")))
    trace = await execute(wf, "Q", SleepyPool())
    assert trace.steps[0].error == "HTTP 500 from provider"
    assert trace.steps[0].error_code == "server_error"
    assert trace.answer == "c saw [1]"  # the failed output is simply absent
    assert trace.errors == ["step 0 (broken): HTTP 500 from provider"]


async def test_failed_last_step_gives_empty_answer_and_raising_pool_is_contained():
    trace = await execute(Workflow.single("raises"), "Q", SleepyPool())
    assert trace.answer == ""
    assert trace.steps[0].error_code == "pool_error"
    assert "no such worker" in trace.steps[0].error


async def test_step_timeout_is_recorded():
    trace = await execute(Workflow.single("a"), "Q", SleepyPool(delay=1.0), step_timeout_s=0.1)
    assert trace.steps[0].error_code == "timeout"
    assert trace.wall_s < 0.5
