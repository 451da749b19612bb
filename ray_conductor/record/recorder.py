"""`Recorder`: asks workers the questions their answers are missing for, over any
`WorkerPool` (the command gives it the worker proxies at `rollout` priority, so serving keeps
its latency), and stores each answer the moment it arrives.

Calls start in question order, `concurrency` at a time, each as a one-step workflow would
make it (`step_messages`: the question and the router's subtask), so a recorded answer is what
replay later serves for that step. Two things stop it before the end, both cleanly (no new
call starts; the calls in flight finish and are stored): `stop()` (the command wires Ctrl-C
to it), and `max_dollars`, checked before each call against what was spent plus the
upper-bound cost of the calls in flight and of the next one. No Ray here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ray_conductor.record.questions import RecordQuestion
from ray_conductor.record.store import AnswerStore, RecordedAnswer
from ray_conductor.workers.base import Message, WorkerPool
from ray_conductor.workflow.executor import call_worker, step_messages
from ray_conductor.workflow.model import ROUTER_SUBTASK, Step

Call = tuple[RecordQuestion, str]  # a question and the worker to ask


def messages_for(q: RecordQuestion) -> list[Message]:
    """What a worker is sent for `q`: the question as a router's one-step plan sends it."""
    return step_messages(q.query, Step("worker", ROUTER_SUBTASK, ()), [])


@dataclass
class RecordStats:
    calls: int = 0  # calls made this run
    answered: int = 0
    failed: int = 0  # failed calls (settled ones are stored as holes)
    retry: int = 0  # failed for a passing reason: not stored, asked again by the next run
    spent: float = 0.0  # dollars the calls of this run cost
    left: int = 0  # calls not made (stopped early)
    stopped: str | None = None  # None: done; "interrupted" | "budget"


class Recorder:
    """Asks for the calls `run` is given; see the module docstring."""

    def __init__(self, pool: WorkerPool, store: AnswerStore,
                 key: Callable[[RecordQuestion, str], str], *,
                 params: Mapping[str, Any] | None = None,
                 price: Callable[[RecordQuestion, str], float] = lambda q, w: 0.0,
                 max_dollars: float | None = None, concurrency: int = 16,
                 timeout_s: float | None = None,
                 on_answer: Callable[[RecordStats], None] | None = None):
        self.pool, self.store, self.key, self.price = pool, store, key, price
        self.params = dict(params or {})
        self.max_dollars, self.concurrency, self.timeout_s = max_dollars, concurrency, timeout_s
        self.on_answer = on_answer
        self.stats = RecordStats()
        self.failures: dict[str, RecordedAnswer] = {}  # unsettled failures of this run, by key
        self._stopping = False
        self._in_flight = 0.0  # upper-bound dollars of the calls running now

    def stop(self) -> None:
        """Start no new call; the run ends when the calls in flight are stored."""
        self._stopping = True

    async def run(self, todo: Sequence[Call]) -> RecordStats:
        sem = asyncio.Semaphore(self.concurrency)
        tasks: list[asyncio.Task[None]] = []
        for n, (q, worker) in enumerate(todo):
            await sem.acquire()
            bound = self.price(q, worker)
            if self._stopping or self._over_budget(bound):
                sem.release()
                self.stats.stopped = "interrupted" if self._stopping else "budget"
                self.stats.left = len(todo) - n
                break
            self._in_flight += bound
            tasks.append(asyncio.create_task(self._ask(q, worker, bound, sem)))
        await asyncio.gather(*tasks)
        return self.stats

    def _over_budget(self, bound: float) -> bool:
        return (self.max_dollars is not None
                and self.stats.spent + self._in_flight + bound > self.max_dollars)

    async def _ask(self, q: RecordQuestion, worker: str, bound: float,
                   sem: asyncio.Semaphore) -> None:
        params = {**self.params, "metadata": {"query_id": q.query_id, "question": q.query,
                                              "answer_format": q.answer_format}}
        try:
            c = await call_worker(self.pool, worker, messages_for(q), self.timeout_s, params)
        finally:
            self._in_flight -= bound
            sem.release()
        a, key = RecordedAnswer.of(c, worker), self.key(q, worker)
        self.store.put(key, a)
        s = self.stats
        s.calls += 1
        s.spent += a.cost
        s.answered += a.text is not None
        s.failed += a.text is None
        if not a.settled:
            s.retry += 1
            self.failures[key] = a
        if self.on_answer is not None:
            self.on_answer(s)
