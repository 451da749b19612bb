"""Carry a `Workflow` out over a `WorkerPool`, as a DAG: a step starts as soon as the steps it
may see have finished, so independent steps run concurrently.

A conditional step ("agree" / "disagree") waits for the steps it sees, then runs only if
their answers agree / disagree; a skipped step makes no call, costs nothing and is invisible
to the steps that read it. A program step (`vote`) calls no model: it picks the plurality
answer among the steps it sees and repeats that step's text.

The run never raises on a worker's failure: the failure is recorded in the step's trace, the
steps that depend on it run with the outputs that exist, and the answer is the output of the
last step that ran (empty when that step failed).

A conversation reaches every step through `with_conversation`: the system prompt and the
earlier turns first, as the client sent them, then the step's own message (the outputs it
may read and its subtask). With `events`, the run reports as it goes: each step started,
finished or skipped, and the answer's text (`answer.delta`) as the provider produces it, once
it is certain which step gives the answer (the last step that runs: certain once every later
step was skipped). A step that may still become the answer streams into a buffer that is
relayed the moment it becomes certain.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

from ray_conductor.errors import ConfigError
from ray_conductor.verify.answers import comparable, extract_answer
from ray_conductor.workers.base import Completion, Message, WorkerInfo, WorkerPool
from ray_conductor.workflow.model import Step, Workflow
from ray_conductor.workflow.programs import condition_holds, is_program, plurality


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
    when: str | None = None  # "agree" | "disagree" for a conditional step
    program: bool = False  # a program worker (vote): no LLM call, no cost
    skipped: bool = False  # its condition did not hold: no call, no cost, seen by nobody
    answer: str | None = None  # the extracted comparable answer, if any
    winner: int | None = None  # vote: the step whose answer (and text) it chose
    cached: bool = False  # answered from the proxy's cache (no provider call, no cost)
    first_token_s: float | None = None  # streamed: the call's first text, from its start

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def ok(self) -> bool:
        """It ran and succeeded, so later steps see its output."""
        return not self.skipped and self.error is None


@dataclass
class Trace:
    question: str
    steps: list[StepTrace] = field(default_factory=list)
    answer: str = ""
    wall_s: float = 0.0

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.steps if not s.skipped)

    @property
    def calls(self) -> int:
        """LLM calls made (failed ones included; skipped and program steps excluded)."""
        return sum(1 for s in self.steps if not s.skipped and not s.program)

    @property
    def errors(self) -> list[str]:
        return [f"step {s.index} ({s.worker}): {s.error}" for s in self.steps if s.error]

    @property
    def final_step(self) -> StepTrace | None:
        """The last step that ran: its output is the answer."""
        return next((s for s in reversed(self.steps) if not s.skipped), None)

    @property
    def final_worker(self) -> str | None:
        """The worker whose text is the answer (through a vote, the winner's)."""
        last = self.final_step
        while last is not None and last.program and last.winner is not None:
            last = self.steps[last.winner]
        return None if last is None else last.served_by or last.worker

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(cost=self.cost, calls=self.calls)
        return d


def step_messages(question: str, step: Step, seen: list[tuple[int, str]]) -> list[Message]:
    """The worker's view: the original question, the outputs it may see, its subtask."""
    blocks = "".join(f"<Agent {k} response>\n{text}\n</Agent {k} response>\n\n" for k, text in seen)
    content = f"Original question:\n{question}\n\n{blocks}Your task:\n{step.subtask}"
    return [{"role": "user", "content": content}]


Event = dict[str, Any]  # {"event": "step.started" | "step.finished" | ..., ...}
Emit = Callable[[Event], None]


class ConversationPool:
    """`pool`, with the conversation before the question (`context`: the system prompt and
    earlier turns, as the client sent them) in front of every call's own messages."""

    def __init__(self, pool: WorkerPool, context: Sequence[Message]):
        self.pool, self.context = pool, list(context)

    def workers(self) -> Sequence[WorkerInfo]:
        return self.pool.workers()

    async def complete(self, worker: str, messages: list[Message], **params: Any) -> Completion:
        return await self.pool.complete(worker, [*self.context, *messages], **params)

    async def stream(self, worker: str, messages: list[Message], **params: Any
                     ) -> AsyncIterator[str | Completion]:
        inner = getattr(self.pool, "stream", None)
        if inner is None:
            c = await self.complete(worker, messages, **params)
            if c.ok and c.text:
                yield c.text
            yield c
            return
        async with aclosing(inner(worker, [*self.context, *messages], **params)) as it:
            async for item in it:
                yield item


def with_conversation(pool: WorkerPool, context: Sequence[Message]) -> WorkerPool:
    """`pool` whose every call carries `context` first (unchanged without one)."""
    return ConversationPool(pool, context) if context else pool


def _failed_call(worker: str, e: BaseException, timeout_s: float | None) -> Completion:
    if isinstance(e, asyncio.TimeoutError):
        return Completion(worker=worker, error=f"step timed out after {timeout_s}s",
                          error_code="timeout")
    code = getattr(e, "code", type(e).__name__)
    return Completion(worker=worker, error=str(e) or type(e).__name__, error_code=code)


async def call_worker(pool: WorkerPool, worker: str, messages: list[Message],
                      timeout_s: float | None, params: dict[str, Any]) -> Completion:
    """One worker call; a timeout or a pool that breaks its contract becomes a failed
    `Completion`, never an exception (shared by the executor and turn-by-turn policies)."""
    try:
        coro = pool.complete(worker, messages, **params)
        return await (asyncio.wait_for(coro, timeout_s) if timeout_s else coro)
    except Exception as e:  # a pool that breaks its contract must not break the run
        return _failed_call(worker, e, timeout_s)


async def stream_worker(pool: WorkerPool, worker: str, messages: list[Message],
                        timeout_s: float | None, params: dict[str, Any],
                        on_text: Callable[[str], None]) -> Completion:
    """`call_worker`, with the answer's text to `on_text` as the provider produces it (a pool
    without `stream`: in one piece, once answered)."""
    stream = getattr(pool, "stream", None)
    if stream is None:
        c = await call_worker(pool, worker, messages, timeout_s, params)
        if c.ok and c.text:
            on_text(c.text)
        return c

    async def relay() -> Completion:
        async with aclosing(stream(worker, messages, **params)) as it:
            async for item in it:
                if isinstance(item, Completion):
                    return item
                on_text(item)
        return Completion(worker=worker, error="the stream ended without an answer",
                          error_code="stream_interrupted")

    try:
        return await (asyncio.wait_for(relay(), timeout_s) if timeout_s else relay())
    except Exception as e:  # a pool that breaks its contract must not break the run
        return _failed_call(worker, e, timeout_s)


class AnswerRelay:
    """Relays the answer's text as soon as it is certain which step gives it: the last step
    that runs, certain once it started and every later step was skipped. Only a step whose
    later steps are all conditional can become the answer; its text is held until then."""

    def __init__(self, workflow: Workflow, emit: Emit):
        steps = list(workflow)
        self.n, self.emit = len(steps), emit
        self.held: dict[int, list[str]] = {i: [] for i in range(self.n)
                                           if all(s.when for s in steps[i + 1:])}
        self.skipped: set[int] = set()
        self.started: set[int] = set()
        self.live: int | None = None
        self.sent = False

    def may_answer(self, i: int) -> bool:
        return i in self.held

    def text(self, i: int, piece: str) -> None:
        if not piece or i not in self.held:
            return
        if self.live == i:
            self._send(piece)
        else:
            self.held[i].append(piece)

    def step(self, i: int, skipped: bool) -> None:
        (self.skipped if skipped else self.started).add(i)
        if self.live is not None:
            return
        k = max((j for j in range(self.n) if j not in self.skipped), default=None)
        if k is not None and k in self.started:
            self.live = k
            for piece in self.held.get(k, []):
                self._send(piece)

    def _send(self, piece: str) -> None:
        self.sent = True
        self.emit({"event": "answer.delta", "text": piece})


def step_event(kind: str, st: StepTrace) -> Event:
    """A step's progress as the client sees it (no text: that is the answer's stream)."""
    if kind == "step.started":
        return {"event": kind, "step": st.index, "worker": st.worker, "subtask": st.subtask}
    if kind == "step.skipped":
        return {"event": kind, "step": st.index, "worker": st.worker}
    return {"event": kind, "step": st.index, "worker": st.worker, "served_by": st.served_by,
            "ok": st.error is None, "error_code": st.error_code,
            "latency_s": round(st.latency_s, 4), "cached": st.cached,
            "input_tokens": st.input_tokens, "output_tokens": st.output_tokens,
            "cost": st.cost}


def record_call(st: StepTrace, c: Completion, answer_format: str | None) -> None:
    """What a call returned, into its step's trace (text, tokens, cost, errors, answer)."""
    st.text, st.input_tokens, st.output_tokens, st.cost = (
        c.text or "", c.input_tokens, c.output_tokens, c.cost)
    st.error, st.error_code, st.served_by = c.error, c.error_code, c.served_by
    st.queue_wait_s, st.attempts, st.cached = c.queue_wait_s, len(c.attempts) or 1, c.cached
    st.first_token_s = c.meta.get("first_token_s")
    st.answer = _answer(c, answer_format)


def _answer(c: Completion, answer_format: str | None) -> str | None:
    """The pool's own extracted answer (replay pools record one), else the text's."""
    if c.error is not None:
        return None
    got = c.meta.get("answer")
    if got is not None and got != "" and comparable(answer_format):
        return str(got)
    return extract_answer(c.text, answer_format)


def _strength_of(pool: WorkerPool, workflow: Workflow,
                 strength: Mapping[str, float] | None) -> Callable[[str], float]:
    """A worker's vote strength: `strength[name]`, else its price (input + output $/1M).
    Also refuses a pool whose LLM has a program worker's name (the plan would be ambiguous)."""
    infos = {w.name: w for w in pool.workers()}
    clash = sorted({s.worker for s in workflow if s.worker in infos and is_program(s.worker)})
    if clash:
        raise ConfigError(f"the pool has an LLM worker named {clash[0]!r}, which is a program "
                          "worker's name; rename it in the pool config", code="program_name_clash")
    given = dict(strength or {})

    def of(name: str) -> float:
        if name in given:
            return float(given[name])
        info = infos.get(name)
        return info.input_price_per_mtok + info.output_price_per_mtok if info else 0.0

    return of


def _vote(st: StepTrace, seen: Sequence[StepTrace], answer_format: str | None,
          strength: Callable[[StepTrace], float]) -> None:
    """Fill a vote step's trace: the plurality answer of `seen`, or a `no_comparable_answer`
    failure saying why there is none."""
    if not comparable(answer_format):
        st.error_code = "no_comparable_answer"
        st.error = (f"vote needs answers it can compare (multiple choice, number, MATH); this "
                    f"task's answers ({answer_format or 'free text'}) are not comparable")
        return
    win = plurality([t.answer for t in seen], [strength(t) for t in seen])
    if win is None:
        st.error_code = "no_comparable_answer"
        st.error = ("vote found no readable answer: every step it reads failed, was skipped or "
                    f"gave no {answer_format} answer")
        return
    chosen = seen[win]
    st.text, st.answer, st.winner = chosen.text, chosen.answer, chosen.index


async def execute(
    workflow: Workflow,
    question: str,
    pool: WorkerPool,
    *,
    query_id: str | None = None,
    step_timeout_s: float | None = None,
    params: dict[str, Any] | None = None,
    answer_format: str | None = None,
    strength: Mapping[str, float] | None = None,
    events: Emit | None = None,
) -> Trace:
    """Run `workflow` for `question` and return its `Trace`.

    `query_id` travels to the pool as `metadata` (replay pools answer by it); `params` are
    sampling parameters passed to every call. `answer_format` ("mc", "number", "math", ...)
    says how to extract each step's comparable answer, which votes and conditions compare;
    `strength` (worker name -> number) breaks vote ties, defaulting to the worker's price.
    `events` receives the run's progress and the answer's text as it is produced (see the
    module docstring); the steps that may give the answer are then streamed.
    """
    comparable(answer_format)  # an unknown format is a caller's error: say so before any call
    t0 = time.perf_counter()
    call_params = dict(params or {})
    call_params["metadata"] = {**call_params.get("metadata", {}), "query_id": query_id,
                               "question": question, "answer_format": answer_format}
    traces = [StepTrace(i, s.worker, s.subtask, list(s.visible(i)), when=s.when,
                        program=is_program(s.worker)) for i, s in enumerate(workflow)]
    worker_strength = (_strength_of(pool, workflow, strength)
                       if any(t.program for t in traces) else (lambda name: 0.0))
    picked: dict[int, float] = {}  # a step's vote strength: its worker's, or its winner's

    def step_strength(t: StepTrace) -> float:
        return picked.get(t.index, worker_strength(t.served_by or t.worker))

    loop = asyncio.get_running_loop()
    done: list[asyncio.Future[None]] = [loop.create_future() for _ in workflow]
    relay = AnswerRelay(workflow, events) if events is not None else None

    def report(kind: str, st: StepTrace) -> None:
        if events is not None:
            events(step_event(kind, st))

    async def run_step(i: int, step: Step) -> None:
        st = traces[i]
        for k in st.access:
            await done[k]
        seen = [traces[k] for k in st.access if traces[k].ok]
        st.start_s = st.end_s = time.perf_counter() - t0
        ran = sum(not traces[k].skipped for k in st.access)
        if step.when is not None and not condition_holds(step.when, [t.answer for t in seen],
                                                         ran):
            st.skipped = True
            report("step.skipped", st)
            if relay is not None:
                relay.step(i, skipped=True)
            return
        report("step.started", st)
        if relay is not None:
            relay.step(i, skipped=False)
        if st.program:
            _vote(st, seen, answer_format, step_strength)
            if st.winner is not None:
                picked[i] = step_strength(traces[st.winner])
            st.end_s = time.perf_counter() - t0
            if relay is not None and st.error is None:
                relay.text(i, st.text)
            report("step.finished", st)
            return
        messages = step_messages(question, step, [(t.index, t.text) for t in seen])
        if relay is not None and relay.may_answer(i):
            c = await stream_worker(pool, step.worker, messages, step_timeout_s, call_params,
                                    lambda piece: relay.text(i, piece))
        else:
            c = await call_worker(pool, step.worker, messages, step_timeout_s, call_params)
        st.end_s = time.perf_counter() - t0
        record_call(st, c, answer_format)
        report("step.finished", st)

    async def guarded(i: int, step: Step) -> None:
        try:
            await run_step(i, step)
        finally:
            done[i].set_result(None)

    await asyncio.gather(*(guarded(i, s) for i, s in enumerate(workflow)))
    trace = Trace(question=question, steps=traces, wall_s=time.perf_counter() - t0)
    final = trace.final_step
    if final is not None and final.error is None:
        trace.answer = final.text
    return trace


def execute_sync(workflow: Workflow, question: str, pool: WorkerPool, **kw: Any) -> Trace:
    """`execute` for callers without an event loop (scripts, tests)."""
    return asyncio.run(execute(workflow, question, pool, **kw))
