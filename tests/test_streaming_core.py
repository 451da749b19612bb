"""Streaming and conversations in the pure cores: the proxy core relaying a provider's stream
(the loopback fault server through litellm `stream=True`: pieces as they come, usage,
retries before the first token only, a stream that breaks midway), the executor relaying the
answer's step once it is certain (a chain, a cascade that skips or runs its last step, a
vote), every step seeing the conversation, and the chunks and typed events a streamed answer
is sent as, checked against the official client's types."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ray_conductor.errors import ServeError
from ray_conductor.serve import wire
from ray_conductor.workers.base import Completion, WorkerInfo
from ray_conductor.workers.config import WorkerConfig
from ray_conductor.workers.proxy import WorkerProxyCore
from ray_conductor.workflow import Step, Workflow, execute, parse, with_conversation

MSG = [{"role": "user", "content": "Say something."}]
WORDS = "one two three four five six seven eight"


def worker(server: Any, name: str = "w", **kw: Any) -> WorkerConfig:
    base = dict(model=f"openai/{name}-model", api_base=server.url, retries=2,
                backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=60.0,
                input_price_per_mtok=1.0, output_price_per_mtok=10.0)
    return WorkerConfig(name=name, **{**base, **kw})


async def _drain(it: Any) -> tuple[list[tuple[float, str]], Completion]:
    t0, pieces = time.perf_counter(), []
    async for item in it:
        if isinstance(item, Completion):
            return pieces, item
        pieces.append((time.perf_counter() - t0, item))
    raise AssertionError("the stream ended without a Completion")


async def test_the_proxy_relays_the_providers_stream_as_it_comes(fault_server):
    fault_server.configure(reply=WORDS, token_delay_s=0.08)
    core = WorkerProxyCore(worker(fault_server))
    await core.warm_up()  # litellm's first-call setup, as the proxy actor does at start
    pieces, c = await _drain(core.stream(MSG, temperature=0.5))
    assert c.ok and c.text == WORDS == "".join(p for _, p in pieces)
    assert len(pieces) >= 4  # word by word, not one lump at the end
    assert pieces[0][0] < pieces[-1][0] - 0.3  # the first came ~0.56 s before the last
    assert (c.input_tokens, c.output_tokens) == (3 + 2, 8)  # the provider's usage chunk
    assert c.cost == pytest.approx((5 * 1.0 + 8 * 10.0) / 1e6)
    (req,) = fault_server.requests()
    assert req["stream"] and "stream_options" in req["body_keys"]
    assert core.stats()["calls"] == 1 and core.limiter.state()["in_flight"] == 0


async def test_a_stream_is_retried_only_before_its_first_token(fault_server):
    fault_server.configure(script=["503"], reply=WORDS)
    core = WorkerProxyCore(worker(fault_server))
    pieces, c = await _drain(core.stream(MSG))
    assert c.ok and "".join(p for _, p in pieces) == WORDS
    assert [a.outcome for a in c.attempts] == ["server_error", "ok"]
    fault_server.reset()
    fault_server.configure(reply=WORDS, fail_after_tokens=3)
    core = WorkerProxyCore(worker(fault_server, fallbacks=[]))
    pieces, c = await _drain(core.stream(MSG))
    assert c.error_code == "stream_interrupted" and c.text == ""
    assert "".join(p for _, p in pieces) == "one two three "  # what went out before the break
    assert c.meta["partial_text"] == "one two three "
    assert len(fault_server.requests()) == 1  # not retried: tokens cannot be taken back
    assert core.breaker._failures == 1 and core.stats()["failures"] == 1


async def test_a_fallback_or_cache_hit_is_relayed_in_one_piece(fault_server):
    fault_server.configure("down-model", rate_5xx=1.0)
    fault_server.configure("up-model", reply=WORDS)
    cores: dict[str, WorkerProxyCore] = {}

    async def fallback(name: str, messages: list, params: dict) -> Completion:
        return await cores[name].complete(messages, **params)

    for cfg in (worker(fault_server, "down", retries=0, fallbacks=["up"]),
                worker(fault_server, "up", cache=True)):
        cores[cfg.name] = WorkerProxyCore(cfg, fallback=fallback)
    pieces, c = await _drain(cores["down"].stream(MSG))
    assert c.ok and c.served_by == "up" and [p for _, p in pieces] == [WORDS]
    await _drain(cores["up"].stream(MSG, temperature=0))
    pieces, c = await _drain(cores["up"].stream(MSG, temperature=0))
    assert c.cached and [p for _, p in pieces] == [WORDS]


async def test_closing_a_stream_early_cancels_the_call(fault_server):
    fault_server.configure(reply=WORDS, token_delay_s=0.2)
    core = WorkerProxyCore(worker(fault_server))
    it = core.stream(MSG)
    assert await it.__anext__() == "one "
    await it.aclose()
    await asyncio.sleep(0.1)
    assert core.limiter.state()["in_flight"] == 0


# -- the executor ------------------------------------------------------------------------------


class WordPool:
    """An in-process pool whose workers answer `replies[worker]` word by word, `delay_s`
    apart, through `stream` (and whole through `complete`); it records what each call saw."""

    def __init__(self, replies: dict[str, str], delay_s: float = 0.05):
        self.replies, self.delay_s = replies, delay_s
        self.seen: list[tuple[str, list[dict[str, str]]]] = []

    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(n) for n in self.replies]

    async def complete(self, worker: str, messages: list, **params: Any) -> Completion:
        text = ""
        async for item in self.stream(worker, messages, **params):
            if isinstance(item, Completion):
                return item
            text += item
        raise AssertionError("unreachable")

    async def stream(self, worker: str, messages: list, **params: Any) -> Any:
        self.seen.append((worker, list(messages)))
        words = wire.pieces(self.replies[worker], 1)
        for w in words:
            await asyncio.sleep(self.delay_s)
            yield w
        yield Completion(worker, text=self.replies[worker], output_tokens=len(words))


async def _run(workflow: Workflow, pool: WordPool, fmt: str | None = None
               ) -> tuple[list[tuple[float, dict]], Any]:
    events: list[tuple[float, dict]] = []
    t0 = time.perf_counter()
    trace = await execute(workflow, "Q?", pool, answer_format=fmt,
                          events=lambda e: events.append((time.perf_counter() - t0, e)))
    return events, trace


def _text(events: list[tuple[float, dict]]) -> str:
    return "".join(e["text"] for _, e in events if e["event"] == "answer.delta")


async def test_a_chain_streams_its_last_step_before_it_finishes():
    pool = WordPool({"a": "first answer", "b": "The answer is (B) after some thought"})
    wf = Workflow((Step("a", "Answer.", ()), Step("b", "Check.", "all")))
    events, trace = await _run(wf, pool)
    kinds = [(e["event"], e.get("step")) for _, e in events if e["event"] != "answer.delta"]
    assert kinds == [("step.started", 0), ("step.finished", 0), ("step.started", 1),
                     ("step.finished", 1)]
    assert _text(events) == trace.answer == pool.replies["b"]
    first = next(t for t, e in events if e["event"] == "answer.delta")
    done = next(t for t, e in events if e["event"] == "step.finished" and e["step"] == 1)
    assert first < done - 0.2  # the first token went out while the final step still ran
    # step 0 is never the answer: its text is not relayed, and it was not streamed
    assert "first answer" not in _text(events)


async def test_a_cascade_relays_the_step_that_turns_out_to_be_the_answer():
    wf = parse("model_id = ['a', 'b', 'c']\nsubtasks = ['A.', 'A.', 'Decide.']\n"
               "access_list = [[], [], 'disagree:0,1']", ["a", "b", "c"])
    agree = WordPool({"a": "The answer is (A)", "b": "The answer is (A) too", "c": "x"})
    events, trace = await _run(wf, agree, "mc")
    assert trace.steps[2].skipped and _text(events) == trace.answer == agree.replies["b"]
    assert ("step.skipped", 2) in [(e["event"], e.get("step")) for _, e in events]
    differ = WordPool({"a": "The answer is (A)", "b": "The answer is (B)",
                       "c": "Careful now: the answer is (C)"})
    events, trace = await _run(wf, differ, "mc")
    assert _text(events) == trace.answer == differ.replies["c"]


async def test_a_vote_sends_its_answer_whole_once_it_is_known():
    wf = parse("model_id = ['a', 'b', 'vote']\nsubtasks = ['A.', 'A.', 'Vote.']\n"
               "access_list = [[], [], 'all']", ["a", "b", "vote"])
    pool = WordPool({"a": "The answer is (A)", "b": "The answer is (A)!"})
    events, trace = await _run(wf, pool, "mc")
    deltas = [e["text"] for _, e in events if e["event"] == "answer.delta"]
    assert deltas == [trace.answer] and trace.answer in pool.replies.values()


async def test_every_step_sees_the_conversation_then_its_own_message():
    context = [{"role": "system", "content": "You are terse."},
               {"role": "user", "content": "My name is Ada."},
               {"role": "assistant", "content": "Hello Ada."}]
    pool = WordPool({"a": "one", "b": "two"}, delay_s=0)
    wf = Workflow((Step("a", "Answer.", ()), Step("b", "Check.", "all")))
    await execute(wf, "What is my name?", with_conversation(pool, context),
                  events=lambda e: None)
    await execute(wf, "What is my name?", with_conversation(pool, context))
    assert len(pool.seen) == 4
    for _, messages in pool.seen:
        assert messages[:3] == context and len(messages) == 4
        assert messages[3]["role"] == "user"
        assert messages[3]["content"].startswith("Original question:\nWhat is my name?")


# -- what the client receives ------------------------------------------------------------------


def test_chat_stream_chunks_parse_as_the_clients_types():
    from openai.types.chat import ChatCompletionChunk

    usage = wire.Usage(10, 5)
    w = wire.ChatStream("chatcmpl-1", "conductor", 1, "conductor-v1", include_usage=True)
    items = (w.start() + w.progress({"event": "step.started", "step": 0, "worker": "a"})
             + w.text("Hel") + w.text("lo") + w.finish(usage, {"workflow": "x"}))
    assert items[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(c) for c in items[:-1]]
    assert chunks[1].model_dump()["conductor"]["event"] == "step.started"
    assert chunks[1].choices[0].delta.content is None  # a progress chunk adds no text
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-1].usage.total_tokens == 15
    (err,) = w.fail(ServeError("the answer broke off", 502, code="stream_interrupted"))
    assert set(err) == {"error"} and err["error"]["code"] == "stream_interrupted"


def test_responses_stream_events_parse_as_the_clients_types():
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    w = wire.ResponsesStream("resp_1", "conductor", 1)
    events = (w.start() + w.progress({"event": "step.finished", "step": 0})
              + w.text("Hi ") + w.text("there") + w.finish(wire.Usage(3, 2), {}))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[2]["type"] == "response.conductor.step.finished"
    known = [e for e in events if not e["type"].startswith("response.conductor.")]
    parsed = [TypeAdapter(ResponseStreamEvent).validate_python(e) for e in known]
    assert parsed[-1].type == "response.completed"
    assert parsed[-1].response.output_text == "Hi there"
    failed = ResponsesStream_fail()
    assert [e.type for e in failed] == ["error", "response.failed"]
    assert failed[1].response.status == "failed"


def ResponsesStream_fail() -> list[Any]:
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    w = wire.ResponsesStream("resp_2", "conductor", 1)
    w.start()
    w.text("partial")
    return [TypeAdapter(ResponseStreamEvent).validate_python(e)
            for e in w.fail(ServeError("broke", 502, code="stream_interrupted"))]
