"""Carry a `Workflow` out over a `WorkerPool`, as a DAG: a step starts as soon as the steps it
may see have finished, so independent steps run concurrently.

A conditional step ("agree" / "disagree") waits for the steps it sees, then runs only if
their answers agree / disagree; a skipped step makes no call, costs nothing and is invisible
to the steps that read it. A program step (`vote`) calls no model: it picks the plurality
answer among the steps it sees and repeats that step's text.

The run never raises on a worker's failure: the failure is recorded in the step's trace, the
steps that depend on it run with the outputs that exist, and the answer is the output of the
last step that ran (empty when that step failed).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ray_conductor.errors import ConfigError
from ray_conductor.verify.answers import comparable, extract_answer
from ray_conductor.workers.base import Completion, Message, WorkerPool
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


async def call_worker(pool: WorkerPool, worker: str, messages: list[Message],
                      timeout_s: float | None, params: dict[str, Any]) -> Completion:
    """One worker call; a timeout or a pool that breaks its contract becomes a failed
    `Completion`, never an exception (shared by the executor and turn-by-turn policies)."""
    try:
        coro = pool.complete(worker, messages, **params)
        return await (asyncio.wait_for(coro, timeout_s) if timeout_s else coro)
    except asyncio.TimeoutError:
        return Completion(worker=worker, error=f"step timed out after {timeout_s}s",
                          error_code="timeout")
    except Exception as e:  # a pool that breaks its contract must not break the run
        code = getattr(e, "code", type(e).__name__)
        return Completion(worker=worker, error=str(e) or type(e).__name__, error_code=code)


def record_call(st: StepTrace, c: Completion, answer_format: str | None) -> None:
    """What a call returned, into its step's trace (text, tokens, cost, errors, answer)."""
    st.text, st.input_tokens, st.output_tokens, st.cost = (
        c.text or "", c.input_tokens, c.output_tokens, c.cost)
    st.error, st.error_code, st.served_by = c.error, c.error_code, c.served_by
    st.queue_wait_s, st.attempts, st.cached = c.queue_wait_s, len(c.attempts) or 1, c.cached
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
) -> Trace:
    """Run `workflow` for `question` and return its `Trace`.

    `query_id` travels to the pool as `metadata` (replay pools answer by it); `params` are
    sampling parameters passed to every call. `answer_format` ("mc", "number", "math", ...)
    says how to extract each step's comparable answer, which votes and conditions compare;
    `strength` (worker name -> number) breaks vote ties, defaulting to the worker's price.
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
            return
        if st.program:
            _vote(st, seen, answer_format, step_strength)
            if st.winner is not None:
                picked[i] = step_strength(traces[st.winner])
            st.end_s = time.perf_counter() - t0
            return
        c = await call_worker(pool, step.worker,
                              step_messages(question, step, [(t.index, t.text) for t in seen]),
                              step_timeout_s, call_params)
        st.end_s = time.perf_counter() - t0
        record_call(st, c, answer_format)

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
