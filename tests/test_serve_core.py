"""The serving tier's pure core, without Ray: the OpenAI wire format (checked against the
official client's own types), API keys and per-key limits, the traffic log and its reader,
policy loading and hot-swap bookkeeping, and the gateway end to end over the in-process
replay pool (routing, auth, limits, errors, recursion through the planner port)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from ray_conductor.errors import ConfigError, ServeError
from ray_conductor.serve import protocol as api
from ray_conductor.serve import wire
from ray_conductor.serve.gateway import Gateway, GatewaySettings
from ray_conductor.serve.host import PolicyHost
from ray_conductor.serve.keys import KeyRecord, KeyRing, key_id, load_keys
from ray_conductor.serve.limits import KeyLimiter, KeyLimits
from ray_conductor.serve.policies import (
    LoadContext,
    PlanRequest,
    PolicySet,
    load_policy,
)
from ray_conductor.serve.questions import QuestionIndex
from ray_conductor.serve.traffic import (
    TrafficLog,
    check_feedback,
    read_feedback,
    read_traffic,
    request_row,
)

INNER = "An earlier workflow already ran"
EMPTY_PLAN = "model_id = []\nsubtasks = []\naccess_list = []"


def chat(model="conductor", content="hi", **kw) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}],
                       **kw}).encode()


# -- the wire format ---------------------------------------------------------------------------


def test_chat_requests_are_checked_field_by_field():
    req = api.parse_chat(json.dumps({
        "model": "conductor", "temperature": 0, "max_completion_tokens": 7, "stop": "x",
        "messages": [{"role": "developer", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "Q?"}]}],
        "stream": True, "stream_options": {"include_usage": True},
        "metadata": {"query_id": "q1"}}).encode())
    assert req.question == "Q?" and req.messages[0]["role"] == "system"
    assert req.params == {"temperature": 0.0, "max_tokens": 7, "stop": ["x"]}
    assert req.stream and req.include_usage and req.query_id == "q1"
    bad = {b"{": "not valid JSON", b"[]": "JSON object", chat(model=""): "`model`",
           chat(temperature="hot"): "`temperature` must be a number",
           chat(temperature=3): "between 0 and 2", chat(n=2): "n=1",
           chat(tools=[{"type": "function"}]): "`tools` is not supported",
           chat(stream_options={"include_usage": True}): "only allowed with `stream: true`",
           json.dumps({"model": "m", "messages": []}).encode(): "non-empty list",
           json.dumps({"model": "m", "messages": [{"role": "system", "content": "x"}]}
                      ).encode(): "at least one user message",
           json.dumps({"model": "m", "messages": [{"role": "bot", "content": "x"}]}
                      ).encode(): "needs a role",
           json.dumps({"model": "m", "messages": [{"role": "user", "content": 3}]}
                      ).encode(): "text parts"}
    for raw, why in bad.items():
        with pytest.raises(ServeError, match=why) as e:
            api.parse_chat(raw)
        assert e.value.status == 400


def test_responses_requests_take_a_string_or_message_items():
    req = api.parse_responses(json.dumps({"model": "m", "input": "Q?", "instructions": "sys",
                                          "max_output_tokens": 5}).encode())
    assert req.messages == [{"role": "system", "content": "sys"},
                            {"role": "user", "content": "Q?"}] and req.params == {"max_tokens": 5}
    items = [{"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "A"}]}]
    assert api.parse_responses(json.dumps({"model": "m", "input": items}).encode()).question == "A"
    with pytest.raises(ServeError, match="only messages"):
        api.parse_responses(json.dumps({"model": "m", "input": [
            {"type": "function_call_output", "output": "x"}]}).encode())
    with pytest.raises(ServeError, match="previous_response_id"):
        api.parse_responses(json.dumps({"model": "m", "input": "x",
                                        "previous_response_id": "resp_1"}).encode())


def test_bodies_parse_as_the_official_clients_types():
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    usage = wire.Usage(100, 20, 30, 5, 0.002, 0.0001)
    ext = {"workflow": "model_id = ['a']", "policy_version": "v1"}
    body = ChatCompletion.model_validate(wire.chat_body("chatcmpl-1", "conductor", 1, "answer",
                                                       usage, "conductor-v1", ext))
    dumped = body.model_dump()
    assert dumped["usage"]["total_tokens"] == 155 and dumped["usage"]["prompt_tokens"] == 130
    assert dumped["usage"]["prompt_tokens_details"]["orchestration_input_tokens"] == 30
    assert dumped["usage"]["completion_tokens_details"]["orchestration_output_tokens"] == 5
    assert dumped["usage"]["cost"] == pytest.approx(0.0021) and dumped["conductor"] == ext
    text = "The answer is (B) because of a long and winding explanation " * 3
    chunks = [ChatCompletionChunk.model_validate(c) for c in wire.chat_chunks(
        "chatcmpl-1", "conductor", 1, text, usage, "fp", ext, include_usage=True)]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert len(chunks) > 4 and chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 155
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-2].model_dump()["conductor"] == ext
    resp = Response.model_validate(wire.responses_body("resp_1", "conductor", 1, "ok", usage, ext))
    assert resp.output_text == "ok" and resp.usage.input_tokens == 130
    events = [TypeAdapter(ResponseStreamEvent).validate_python(e)
              for e in wire.responses_events("resp_1", "conductor", 1, text, usage, ext)]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert wire.sse("[DONE]") == b"data: [DONE]\n\n"
    assert wire.sse({"a": 1}, "e").startswith(b"event: e\ndata: ")


def test_pieces_rebuild_the_text_exactly():
    for text in ["", "one", "  lead and trail  ", "a\n\nb  c\td " * 40]:
        assert "".join(wire.pieces(text, 10)) == text


# -- keys and limits ---------------------------------------------------------------------------


def test_keys_come_from_the_config_a_file_and_the_environment(tmp_path):
    f = tmp_path / "keys.yaml"
    f.write_text("- sk-file-key-1\n- {key: sk-file-key-2, name: bob, requests_per_minute: 3}\n")
    recs = load_keys(["sk-config-key"], str(f), "KEYS_ENV",
                     {"KEYS_ENV": "sk-env-key-1, sk-config-key"})
    assert [r.key_id for r in recs] == [key_id(k) for k in
                                        ("sk-config-key", "sk-file-key-1", "sk-file-key-2",
                                         "sk-env-key-1")]
    assert recs[2].requests_per_minute == 3 and recs[2].name == "bob"
    assert "sk-" not in json.dumps([r.to_dict() for r in recs])  # digests only
    (tmp_path / "plain.txt").write_text("# comment\nsk-plain-key-1\n\n")
    assert len(load_keys([], str(tmp_path / "plain.txt"))) == 1
    with pytest.raises(ConfigError, match="at least 8") as e:
        load_keys(["short"])
    assert "short" not in str(e.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_keys([], str(tmp_path / "missing.txt"))
    (tmp_path / "bad.yaml").write_text("- sk-secret-in-bad-yaml: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_keys([], str(tmp_path / "bad.yaml"))
    assert "sk-secret" not in str(e.value)


def test_the_key_ring_refuses_missing_and_unknown_keys():
    ring = KeyRing([KeyRecord.of("sk-good-key-1")])
    assert ring.identify("Bearer sk-good-key-1").key_id == key_id("sk-good-key-1")
    for header, why in [(None, "missing API key"), ("Basic abc", "missing API key"),
                        ("Bearer sk-wrong-key", "invalid API key")]:
        with pytest.raises(ServeError, match=why) as e:
            ring.identify(header)
        assert e.value.status == 401 and "sk-wrong" not in e.value.message
    assert KeyRing([]).identify(None) is None  # no keys: anonymous


def test_key_limits_slide_per_minute_and_reset_the_budget_each_utc_day():
    now = [datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()]
    lim = KeyLimiter({"a": KeyLimits(2, None)}, KeyLimits(None, 1.0), clock=lambda: now[0])
    assert lim.admit("a") is None and lim.admit("a") is None
    assert "2 requests per minute" in lim.admit("a")
    now[0] += 61
    assert lim.admit("a") is None  # the window slid
    lim.charge("b", 0.6)
    assert lim.admit("b") is None
    lim.charge("b", 0.5)
    assert "$1.1000 of its $1 per day" in lim.admit("b")
    assert lim.usage("b")["dollars_today"] == pytest.approx(1.1)
    now[0] += 13 * 3600  # the next UTC day
    assert lim.admit("b") is None and lim.spent_today("b") == 0.0


# -- the traffic log ---------------------------------------------------------------------------


def _row(rid: str, t: float, **kw):
    return request_row(request_id=rid, time=t, key_id="key_x", model="conductor", status=200,
                       trace={"steps": [{"worker": "w"}]}, cost=0.01, **kw)


def test_the_traffic_log_partitions_by_day_and_joins_feedback(tmp_path):
    import pyarrow.dataset as ds

    t1 = datetime(2025, 1, 31, 12, tzinfo=UTC).timestamp()
    t2 = datetime(2025, 2, 1, 9, tzinfo=UTC).timestamp()
    log = TrafficLog(tmp_path, max_rows=3)
    assert not log.append(_row("r1", t1)) and not log.append(_row("r2", t2))
    assert log.add_feedback("r1", "key_x", 1.0, None)  # the third row fills the buffer
    log.flush()
    log.add_feedback("r1", "key_x", None, "good")
    log.add_feedback("r1", "key_x", 0.0, None)  # the latest reward wins
    log.flush()
    parts = sorted(p.parent.name for p in (tmp_path / "requests").rglob("part-*.parquet"))
    assert parts == ["date=2025-01-31", "date=2025-02-01"]
    assert not list(tmp_path.rglob(".*"))  # no temporary file left
    df = read_traffic(tmp_path)
    assert list(df["request_id"]) == ["r1", "r2"]
    assert df.loc[0, "reward"] == 0.0 and df.loc[0, "label"] == "good"
    assert df.loc[1, "reward"] != df.loc[1, "reward"]  # NaN: no feedback
    assert json.loads(df.loc[0, "trace"]) == {"steps": [{"worker": "w"}]}
    assert list(read_traffic(tmp_path, since="2025-02-01")["request_id"]) == ["r2"]
    assert len(read_feedback(tmp_path)) == 3
    assert ds.dataset(tmp_path / "requests", partitioning="hive").count_rows() == 2
    assert log.owner("r2") == (True, "key_x")
    assert TrafficLog(tmp_path).owner("r2") == (True, "key_x")  # read back from disk
    assert TrafficLog(tmp_path).owner("nope") == (False, None)


def test_a_failed_flush_keeps_the_rows(tmp_path):
    target = tmp_path / "blocked"
    target.write_text("a file where the log wants a directory")
    log = TrafficLog(target)
    log.append(_row("r1", 0.0))
    with pytest.raises(OSError):
        log.flush()
    assert log.pending() == 1


def test_feedback_bodies_are_checked():
    assert check_feedback({"request_id": "r", "reward": 1}) == ("r", 1.0, None)
    for body, why in [([], "JSON object"), ({"reward": 1}, "request_id"),
                      ({"request_id": "r"}, "reward"), ({"request_id": "r", "reward": "x"},
                                                        "finite number"),
                      ({"request_id": "r", "label": "x" * 2000}, "at most")]:
        with pytest.raises(ValueError, match=why):
            check_feedback(body)


# -- policies and the gateway over the in-process replay pool -----------------------------------


@pytest.fixture(scope="module")
def demo():
    from ray_conductor.data.pools import load_pool

    return load_pool("demo")


def script(tmp_path, default: str, name="plans.json") -> str:
    p = tmp_path / name
    p.write_text(json.dumps({"rules": [{"match": INNER, "plan": EMPTY_PLAN}],
                             "default": default}))
    return str(p)


def test_policy_set_swaps_atomically_and_keeps_recent_versions(tmp_path, demo):
    from ray_conductor.data.replay import ReplayPool

    workers = list(ReplayPool(demo).workers())
    ctx = LoadContext(workers, pool="demo")
    a = script(tmp_path, "model_id = [4]\nsubtasks = ['x']\naccess_list = [[]]", "a.json")
    b = script(tmp_path, "model_id = [0]\nsubtasks = ['x']\naccess_list = [[]]", "b.json")
    loads = []

    def loader(ref):
        loads.append(ref)
        return load_policy(ref, ctx)

    ps = PolicySet(loader)
    v1 = ps.update({"conductor": f"scripted:{a}", "cheap": "cheapest"})
    held = ps.get("conductor")  # a request that already planned holds this object
    v2 = ps.update({"conductor": f"scripted:{b}", "cheap": "cheapest"})
    assert v1["conductor"] != v2["conductor"] and loads.count("cheapest") == 1
    assert ps.get("conductor") is not held
    assert ps.get("conductor", v1["conductor"]) is held  # nested plans of an old request
    req = PlanRequest("conductor", "Q", workers)
    (old,) = held.plan([req])
    (new,) = ps.plan([req])
    assert old.workflow.workers == ("gpt-4o",) and new.workflow.workers == (workers[0].name,)
    with pytest.raises(ConfigError, match="no such file"):
        ps.update({"conductor": "scripted:/nope.json"})
    assert ps.get("conductor").version == v2["conductor"]  # a failed swap changes nothing
    assert ps.plan([PlanRequest("gone", "Q", workers)])[0].errors == ["unknown_model"]


class _Host(PolicyHost):
    """The policy host the ingress runs, counting the plans asked of it."""

    def __init__(self, loader):
        super().__init__(loader)
        self.calls = 0

    async def plan(self, req):
        self.calls += 1
        return await super().plan(req)


class _Limits:
    """The limits port over a local `KeyLimiter` (what the actor does, minus Ray)."""

    def __init__(self, core):
        self.core = core

    async def reserve(self, key_id, dollars):
        ticket, refused = self.core.reserve(key_id, dollars)
        return (ticket, None, 0.0) if refused is None else (None, refused.message,
                                                             refused.retry_after_s)

    async def check(self, key_id):
        refused = self.core.check(key_id)
        return (None, 0.0) if refused is None else (refused.message, refused.retry_after_s)

    def settle(self, key_id, ticket, dollars):
        self.core.settle(key_id, ticket, dollars)


class _Traffic:
    def __init__(self, log):
        self.log = log

    def append(self, row):
        self.log.append(row)

    async def feedback(self, request_id, key_id, reward, label):
        known, owner = self.log.owner(request_id)
        if not known or owner != key_id:
            return "unknown request"
        self.log.add_feedback(request_id, key_id, reward, label)
        return None


@pytest.fixture
def gateway(tmp_path, demo):
    from ray_conductor.data.replay import ReplayPool

    pool = ReplayPool(demo)
    workers = list(pool.workers())
    ctx = LoadContext(workers, pool="demo")
    plan = "model_id = [4, 12]\nsubtasks = ['Answer.', 'Check.']\naccess_list = [[], 'all']"
    host = _Host(lambda ref: load_policy(ref, ctx))
    host.update({"conductor": f"scripted:{script(tmp_path, plan)}", "cheap": "cheapest"})
    keys = KeyRing([KeyRecord.of("sk-test-key-1"),
                    KeyRecord.of("sk-tight-key-1", requests_per_minute=1)])
    limits = KeyLimiter({r.key_id: KeyLimits(r.requests_per_minute, r.dollars_per_day)
                         for r in keys.records()}, KeyLimits(100, 10.0))
    log = TrafficLog(tmp_path / "traffic")
    replay = frozenset(w.name for w in workers)
    gw = Gateway(GatewaySettings("demo", replay, max_body_bytes=50_000, max_prompt_chars=20_000),
                 planner=host, pool=pool, keys=keys, limits=_Limits(limits),
                 traffic=_Traffic(log), questions=QuestionIndex.from_data("demo", demo))
    return gw, log, demo.queries("test")[0]


AUTH = "Bearer sk-test-key-1"


async def test_a_policy_plans_recursively_through_the_planner_port(gateway):
    gw, log, q = gateway
    reply = await gw.answer("chat", chat(content=q.query), AUTH)
    assert reply.status == 200, reply.body
    ext = reply.body["conductor"]
    assert [s["worker"] for s in ext["steps"]] == ["gpt-4o", "conductor"]
    assert ext["query_id"] == q.query_id and ext["policy_version"].startswith("scripted-")
    # the inner plan (keep the answer) went through the planner port too: 2 plans in all
    assert gw.planner.calls == 2
    usage = reply.body["usage"]
    ut = usage["prompt_tokens_details"]["orchestration_input_tokens"]
    assert ut > 0 and usage["prompt_tokens"] == ut + ext["steps"][0]["input_tokens"]
    assert reply.body["choices"][0]["message"]["content"] == demo_answer(q, "gpt-4o")
    assert reply.headers["x-conductor-policy-version"] == ext["policy_version"]
    row = log._buf["requests"].rows[-1]
    assert row["key_id"] == key_id("sk-test-key-1") and row["status"] == 200
    assert row["query_id"] == q.query_id and "sk-test" not in json.dumps(row, default=str)


async def test_an_lm_conductor_with_a_program_head_serves_its_chosen_program(tmp_path, demo):
    """`policy=MODEL conductor.head=DIR`: the served plan is the head's program, run on the
    pool; the policy version names the head. A hand-made head that prefers a cascade (flash
    and pro, else gpt-4o, vote), then gpt-4o alone: the plumbing, not the fit, which
    test_program_head.py checks. A recorded multiple-choice question gets the cascade; a
    question whose format the app does not know (free text: no question index here) gets
    gpt-4o alone, since a vote over free text would answer nothing."""
    import numpy as np

    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.policy.loading import load_causal_lm
    from ray_conductor.policy.program_head import ProgramHead
    from ray_conductor.workflow.programs import VOTE

    pool = ReplayPool(demo)
    workers = list(pool.workers())
    dim = load_causal_lm("tiny-smollm2")[0].config.hidden_size
    cascade = ("gemini-1.5-flash-002", "gemini-1.5-pro-002", "gpt-4o")
    programs = [("gemini-1.5-pro-002",), ("gpt-4o",), cascade]
    head = ProgramHead([w.name for w in workers], programs, np.zeros(dim), np.ones(dim),
                       np.zeros((dim, 3)), np.array([0.5, 0.9, 0.95]), np.zeros((dim, 3)),
                       np.array([0.001, 0.005, 0.006]), lam=10.0)
    head.save(tmp_path / "head")
    ctx = LoadContext(workers, pool="demo", conductor={
        "head": str(tmp_path / "head"), "programs": True, "recursion_depth": 0})

    class Planner:  # the planner deployment's part, in process (serve/planner.py)
        def __init__(self):
            self.policies = PolicySet(lambda ref: load_policy(ref, ctx))

        async def plan(self, req):
            return (await asyncio.to_thread(self.policies.plan, [req]))[0]

        async def describe(self):
            return self.policies.describe()

    planner = Planner()
    planner.policies.update({"conductor": "tiny-smollm2"})
    host = PolicyHost(lambda ref: load_policy(ref, ctx), planner=planner)
    host.update({"conductor": "tiny-smollm2"})
    keys = KeyRing([KeyRecord.of("sk-test-key-1")])
    limits = KeyLimiter({r.key_id: KeyLimits(r.requests_per_minute, r.dollars_per_day)
                         for r in keys.records()}, KeyLimits(100, 10.0))

    def gateway(questions):
        return Gateway(GatewaySettings("demo", frozenset(w.name for w in workers),
                                       max_body_bytes=50_000, max_prompt_chars=20_000),
                       planner=host, pool=pool, keys=keys, limits=_Limits(limits),
                       traffic=_Traffic(TrafficLog(tmp_path / "traffic")),
                       questions=questions)

    q = demo.queries("test")[0]
    reply = await gateway(QuestionIndex.from_data("demo", demo)).answer(
        "chat", chat(content=q.query), AUTH)
    assert reply.status == 200, reply.body
    ext = reply.body["conductor"]
    assert [s["worker"] for s in ext["steps"]][:2] == list(cascade[:2])
    assert ext["steps"][-1]["worker"] == VOTE and ext["steps"][-1]["error"] is None
    assert ext["policy_version"] == f"tiny-smollm2+head-{head.digest()}"
    assert reply.body["choices"][0]["message"]["content"]
    reply = await gateway(None).answer(
        "chat", chat(content=q.query, metadata={"query_id": q.query_id}), AUTH)
    assert reply.status == 200, reply.body
    assert [s["worker"] for s in reply.body["conductor"]["steps"]] == ["gpt-4o"]
    assert reply.body["choices"][0]["message"]["content"] == demo_answer(q, "gpt-4o")


def demo_answer(q, worker):
    from ray_conductor.data.pools import load_pool

    return load_pool("demo").record(q.query_id, worker).response


async def test_pass_through_and_the_errors_of_the_gateway(gateway):
    gw, log, q = gateway
    ok = await gw.answer("responses", json.dumps({"model": "gpt-4o", "input": q.query}).encode(),
                         AUTH)
    assert ok.status == 200 and ok.body["output_text"] == demo_answer(q, "gpt-4o")
    assert ok.body["conductor"]["workflow"].startswith("model_id = ['gpt-4o']")
    cases = [
        (chat(), None, 401, "invalid_api_key"),
        (chat(), "Bearer sk-not-a-key", 401, "invalid_api_key"),
        (chat(model="nope", content=q.query), AUTH, 404, "model_not_found"),
        (chat(content="What is 2+2?"), AUTH, 400, "unrecorded_question"),
        (chat(content="x" * 30_000), AUTH, 413, "prompt_too_large"),
        (b"x" * 60_000, AUTH, 413, "request_too_large"),
        (b"{oops", AUTH, 400, "invalid_request_error"),
    ]
    for raw, auth, status, code in cases:
        reply = await gw.answer("chat", raw, auth)
        assert (reply.status, reply.body["error"]["code"]) == (status, code), reply.body
        assert set(reply.body["error"]) == {"message", "type", "param", "code"}
    assert "workers=FILE" in (await gw.answer("chat", chat(content="2+2?"), AUTH)
                              ).body["error"]["message"]
    tight = "Bearer sk-tight-key-1"
    assert (await gw.answer("chat", chat(model="cheap", content=q.query), tight)).status == 200
    refused = await gw.answer("chat", chat(model="cheap", content=q.query), tight)
    assert refused.status == 429 and "1 requests per minute" in refused.body["error"]["message"]
    statuses = [r["status"] for r in log._buf["requests"].rows]
    assert statuses.count(401) == 2 and 429 in statuses and 200 in statuses


async def test_a_failed_last_step_is_a_gateway_error_not_an_empty_answer(gateway, demo):
    gw, log, _ = gateway
    hole, worker = next((q, m) for q in demo.queries("all") for m in demo.models
                        if demo.record(q.query_id, m) is None
                        or demo.record(q.query_id, m).response is None)
    reply = await gw.answer("chat", chat(model=worker, content=hole.query), AUTH)
    assert reply.status == 502 and reply.body["error"]["code"] == "worker_failed"
    assert log._buf["requests"].rows[-1]["status"] == 502


async def test_streams_end_with_done_and_feedback_needs_the_same_key(gateway):
    gw, _, q = gateway
    reply = await gw.answer("chat", chat(content=q.query, stream=True,
                                         stream_options={"include_usage": True}), AUTH)
    events = [e.decode() async for e in reply.stream]
    assert events[-1] == "data: [DONE]\n\n"
    last = json.loads(events[-2][len("data: "):])
    assert last["choices"] == [] and last["usage"]["total_tokens"] > 0
    rid = json.loads(events[0][len("data: "):])["id"]
    fb = await gw.feedback(json.dumps({"request_id": rid, "reward": 1.0}).encode(), AUTH)
    assert fb.status == 200 and fb.body["accepted"]
    other = await gw.feedback(json.dumps({"request_id": rid, "reward": 1.0}).encode(),
                              "Bearer sk-tight-key-1")
    assert other.status == 404
    bad = await gw.feedback(b"[]", AUTH)
    assert bad.status == 400 and "JSON object" in bad.body["error"]["message"]


async def test_without_keys_only_loopback_clients_are_answered(gateway):
    gw, _, q = gateway
    gw.keys = KeyRing([])
    assert (await gw.answer("chat", chat(model="gpt-4o", content=q.query), None,
                            "127.0.0.1")).status == 200
    far = await gw.answer("chat", chat(model="gpt-4o", content=q.query), None, "10.1.2.3")
    assert far.status == 403 and far.body["error"]["code"] == "keys_not_configured"


def test_question_index_reads_the_stored_table(demo):
    idx = QuestionIndex.from_pool("demo")
    q = demo.queries("test")[3]
    assert len(idx) == len(demo.queries("all"))
    assert idx.find(None, q.query) == (q.query_id, q.answer_format)
    assert idx.find(q.query_id, q.query + " ") == (q.query_id, q.answer_format)
    assert idx.find(None, q.query + "\n") == (q.query_id, q.answer_format)
    assert idx.find(None, "unknown") is None
    for qid, text, code in [(q.query_id, "anything", "query_id_mismatch"),
                            ("no-such-id", q.query, "unknown_query_id")]:
        with pytest.raises(ServeError) as e:  # an id lends its answers to its own text only
            idx.find(qid, text)
        assert e.value.status == 400 and e.value.code == code


def test_gateway_loop_is_safe_with_a_cancelled_request(gateway):
    """A cancelled request is logged as a disconnect and the cancellation propagates."""
    gw, log, q = gateway

    class Slow:
        def workers(self):
            return gw.workers

        async def complete(self, *a, **k):
            await asyncio.sleep(10)

    gw.pool = Slow()

    async def go():
        task = asyncio.create_task(gw.answer("chat", chat(model="gpt-4o", content=q.query), AUTH))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert log._buf["requests"].rows[-1]["error_code"] == "client_disconnected"


def test_an_interactive_policy_runs_through_the_planner_port(tmp_path, demo):
    """The hook the lite conductor plugs into: a policy that decides and calls over the pool
    itself (`run(question, pool, ...) -> (Workflow, Trace)`), on the version it started on."""
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.serve.policies import InteractivePolicy
    from ray_conductor.workflow import Workflow, execute

    class OneCall:
        async def run(self, question, pool, *, query_id, answer_format, params):
            wf = Workflow.single("gpt-4o")
            return wf, await execute(wf, question, pool, query_id=query_id, params=params)

    pool = ReplayPool(demo)

    class Host(_Host):
        async def run(self, req, pool, *, query_id, answer_format, params):
            self.ran = (req.version, query_id, params.get("timeout_s"))
            return await super().run(req, pool, query_id=query_id,
                                     answer_format=answer_format, params=params)

    planner = Host(lambda ref: InteractivePolicy(OneCall(), ref.replace(":", "-")))
    planner.update({"lite": "lite:v7"})
    gw = Gateway(GatewaySettings("demo", frozenset(demo.models)), planner=planner, pool=pool,
                 keys=KeyRing([]), limits=None, traffic=_Traffic(TrafficLog(tmp_path)),
                 questions=QuestionIndex.from_data("demo", demo))
    q = demo.queries("test")[0]
    reply = asyncio.run(gw.answer("chat", chat(model="lite", content=q.query), deadline="2.5"))
    assert reply.status == 200, reply.body
    assert reply.body["conductor"]["policy_version"] == "lite-v7"
    assert planner.ran == ("lite-v7", q.query_id, 2.5)
    unknown = asyncio.run(gw.answer("chat", chat(model="lite", content="2+2?")))
    assert unknown.body["error"]["code"] == "unrecorded_question"
    bad = asyncio.run(gw.answer("chat", chat(model="lite", content=q.query), deadline="soon"))
    assert bad.status == 400 and "x-conductor-timeout-s" in bad.body["error"]["message"]


def test_the_knn_embedder_encodes_each_question_once(monkeypatch):
    import numpy as np

    from ray_conductor import features
    from ray_conductor.serve.policies import _Embedder

    encoded: list[list[str]] = []

    def encode(texts, precision=None, progress=None):
        encoded.append(list(texts))
        return np.array([[float(len(t)), 1.0] for t in texts])

    monkeypatch.setattr(features, "encode", encode)
    monkeypatch.setattr(features, "embed_texts", lambda texts, *a, **k: encode(texts))
    emb = _Embedder(capacity=3)
    emb(["recorded one", "recorded two"])  # fitting: through the disk cache
    emb.fitting = False
    out = emb(["recorded one", "new", "new"])
    assert encoded[-1] == ["new"] and out[:, 0].tolist() == [12.0, 3.0, 3.0]
    emb(["a", "b"])  # capacity 3: the oldest are dropped
    assert "recorded two" not in emb.memo and len(emb.memo) == 3


def test_an_lm_conductor_loads_from_a_registry_and_counts_its_tokens(tmp_path, demo):
    """The LM path (a real, tiny causal LM): loaded through the registry, pinned to its
    version, planning with the conductor offered itself, its prompt and sampled tokens
    counted as orchestration tokens."""
    from ray_conductor.data.replay import ReplayPool
    from ray_conductor.policy.loading import tiny_smollm2_checkpoint
    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.serve.policies import ServedConductor, pin

    reg = PolicyRegistry(tmp_path / "reg")
    reg.publish(tiny_smollm2_checkpoint(), kind="lm")
    ref = f"registry:{tmp_path / 'reg'}"
    assert pin(ref) == f"{ref}@1"
    workers = list(ReplayPool(demo).workers())
    ctx = LoadContext(workers, conductor={"max_new_tokens": 8, "max_resamples": 0, "seed": 0})
    policy = load_policy(pin(ref), ctx)
    assert isinstance(policy, ServedConductor) and policy.version == "v1"
    assert policy.recursion_depth == 1  # the default: it may call itself
    (reply,) = policy.plan([PlanRequest("conductor", demo.queries("test")[0].query, workers)])
    assert reply.workflow is not None and len(reply.workflow) >= 1  # parsed, or the fallback
    assert reply.input_tokens > 100 and reply.output_tokens >= 1
    assert reply.recursion_depth == 1 and reply.version == "v1"
