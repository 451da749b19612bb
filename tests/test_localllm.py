"""The local SmolLM2 server (`ray_conductor.localllm`) as OpenAI's own client and litellm see
it: whole answers, streamed answers (chunks, finish reason, usage, `data: [DONE]`), bad
requests as 400s in OpenAI's error shape, and a stream the client abandons stops generating
(issue 12, defect 11: `stream=True` used to answer with zero chunks and no error).

The real model is started once for the module (~14 s); the disconnect test runs the tiny
model in-process behind the same aiohttp app."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from ray_conductor.errors import BadRequest
from ray_conductor.localllm import protocol as api

MSG = [{"role": "user", "content": "What is the capital of France?"}]


# -- the request checks, pure ------------------------------------------------------------------
def body(**kw) -> bytes:
    return json.dumps({"model": "m", "messages": MSG, **kw}).encode()


def test_a_good_request_is_read_with_defaults():
    r = api.parse_request(body(stream=True, stream_options={"include_usage": True},
                               max_completion_tokens=5000), "m")
    assert r.stream and r.include_usage and r.max_tokens == api.MAX_TOKENS_CAP
    assert r.temperature == 0.0 and r.top_p == 1.0 and r.messages == MSG
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    r = api.parse_request(body(messages=[{"role": "developer", "content": parts}]), "m")
    assert r.messages == [{"role": "system", "content": "ab"}] and not r.stream


@pytest.mark.parametrize("raw,param", [
    (b"{not json", None), (b"[1, 2]", None),
    (body(messages=[]), "messages"), (body(messages=[{"role": "robot", "content": "x"}]),
                                      "messages[0].role"),
    (body(messages=[{"role": "user", "content": 3}]), "messages[0].content"),
    (body(max_tokens=0), "max_tokens"), (body(max_tokens="10"), "max_tokens"),
    (body(temperature=3), "temperature"), (body(top_p=-0.1), "top_p"),
    (body(stream="yes"), "stream"), (body(stream_options={"include_usage": True}),
                                     "stream_options"),
    (body(n=2), "n"), (body(seed=1.5), "seed"),
])
def test_a_bad_request_names_the_field(raw, param):
    with pytest.raises(BadRequest) as e:
        api.parse_request(raw, "m")
    assert e.value.param == param and e.value.status == 400 and str(e.value)


def test_an_unknown_model_is_a_404():
    with pytest.raises(BadRequest) as e:
        api.parse_request(body(model="gpt-9"), "m")
    assert e.value.status == 404 and e.value.code == "model_not_found"


# -- the real model behind HTTP ----------------------------------------------------------------
@pytest.fixture(scope="module")
def llm():
    from ray_conductor.localllm import LocalLLM

    with LocalLLM() as server:
        yield server


@pytest.fixture(scope="module")
def client(llm):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=llm.url, api_key="EMPTY", max_retries=0, timeout=300)


@pytest.mark.slow
def test_openai_client_streams_the_same_answer_it_gets_whole(client):
    whole = client.chat.completions.create(model="smollm2", messages=MSG, max_tokens=16,
                                           temperature=0)
    chunks = list(client.chat.completions.create(
        model="smollm2", messages=MSG, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(text) >= 3  # tokens arrive one by one, not as one block
    assert "".join(text) == whole.choices[0].message.content and "Paris" in "".join(text)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


@pytest.mark.slow
def test_the_raw_stream_is_server_sent_events_ending_in_done(llm):
    req = urllib.request.Request(f"{llm.url}/chat/completions", method="POST",
                                 headers={"Content-Type": "application/json"},
                                 data=body(model="smollm2", max_tokens=3, stream=True))
    with urllib.request.urlopen(req, timeout=300) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [e for e in resp.read().decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] == "length" and last["usage"] is None


@pytest.mark.slow
def test_openai_client_gets_bad_requests_as_openai_errors(client):
    import openai

    cases = [dict(messages=[]), dict(messages=MSG, max_tokens=-1),
             dict(messages=MSG, temperature=7), dict(messages=MSG, stream=True, n=3)]
    for kw in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="smollm2", **kw)
        assert e.value.status_code == 400
        assert set(e.value.body) == {"message", "type", "param", "code"}
        assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=MSG)
    assert e.value.body["code"] == "model_not_found"


@pytest.mark.slow
async def test_litellm_streams_from_the_local_server(llm):
    from ray_conductor.workers.proxy import litellm_module

    litellm = litellm_module()
    kw = dict(model="openai/smollm2", api_base=llm.url, api_key="EMPTY", messages=MSG,
              max_tokens=16, temperature=0)
    whole = await litellm.acompletion(**kw)
    stream = await litellm.acompletion(stream=True, **kw)
    pieces = [c.choices[0].delta.content async for c in stream
              if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3 and "".join(pieces) == whole.choices[0].message.content


# -- an abandoned stream, in-process with the tiny model ---------------------------------------
@pytest.fixture(scope="module")
def tiny_chat():
    from ray_conductor.localllm.server import ChatModel
    from ray_conductor.policy.loading import load_causal_lm

    model, tok = load_causal_lm("tiny-smollm2")
    chat = ChatModel(model, tok, "tiny")
    generate, chat.generated = model.generate, []

    def counting(**kw):
        out = generate(**kw)
        chat.generated.append(int(out.shape[1] - kw["input_ids"].shape[1]))
        return out

    model.generate = counting
    return chat


@pytest.mark.slow
async def test_a_stream_the_client_abandons_stops_generating(tiny_chat):
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from ray_conductor.localllm.server import app

    async with TestServer(app(tiny_chat)) as server, ClientSession() as session:
        url = str(server.make_url("/v1/chat/completions"))
        payload = {"messages": MSG, "max_tokens": 400, "stream": True}
        async with session.post(url, json=payload) as resp:
            assert resp.status == 200
            events = 0
            while events < 3:
                line = await resp.content.readline()
                assert line in (b"\n", b"") or line.startswith(b"data: "), line
                events += line.startswith(b"data: ")
        # the connection is gone: the server must stop and free the model for the next call
        whole = await asyncio.wait_for(session.post(url, json={"messages": MSG,
                                                               "max_tokens": 2}), 120)
        assert whole.status == 200 and (await whole.json())["usage"]["completion_tokens"] == 2
    assert tiny_chat.generated[0] < 200, tiny_chat.generated  # not all 400 tokens


@pytest.mark.slow
async def test_a_failing_generation_ends_the_stream_with_an_error_event(tiny_chat):
    from ray_conductor.localllm.server import ChatModel, _stream

    class Broken(ChatModel):
        def _generate(self, req, **extra):
            raise RuntimeError("out of memory")

    broken = Broken(tiny_chat.model, tiny_chat.tok, "tiny")
    sent: list[bytes] = []

    class Resp:
        async def prepare(self, request):
            return None

        async def write(self, data):
            sent.append(data)

        async def write_eof(self):
            return None

    from ray_conductor.localllm import server

    real = server.web.StreamResponse
    server.web.StreamResponse = lambda **kw: Resp()  # type: ignore[assignment]
    try:
        req = api.ChatRequest(MSG, max_tokens=4, stream=True)
        await _stream(None, broken.stream(req))  # type: ignore[arg-type]
    finally:
        server.web.StreamResponse = real  # type: ignore[assignment]
    events = [json.loads(s.decode().removeprefix("data: ")) for s in sent]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["error"]["type"] == "server_error" and "out of memory" in \
        events[-1]["error"]["message"]
    assert b"[DONE]" not in b"".join(sent)
