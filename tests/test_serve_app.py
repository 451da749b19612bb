"""The running Serve app, driven by the official `openai` client: plain, streaming with the
usage chunk, the Responses API, usage and trace, pass-through, auth and per-key limits, each
4xx in OpenAI's error shape, concurrent requests, a client disconnect cancelling its worker
calls, the traffic log with feedback, and a hot-swap (promote, roll back, a bad version
refused) under load with zero failed requests and no replica restart. Live workers (the
loopback fault server): whole conversations, real streaming (the first token before the
final step ends), a worker failing mid-stream, disconnected streams logged, a tiny budget
under 30 concurrent requests, and the limits actor restarting.

One app for the module (replay workers over the demo pool plus fault-server workers, all in
one proxy process); the kNN router, a recursive scripted conductor, a registry of scripted
versions and scripted plans over live workers as policies. Serve is shut down at the end,
never Ray.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]

openai = pytest.importorskip("openai")
K1, K2, K3 = "sk-test-alpha-123", "sk-test-tight-456", "sk-test-budget-789"
WORDS = " ".join(f"w{i}" for i in range(20))
RECURSIVE = ("model_id = [4, 'conductor']\nsubtasks = ['Answer.', 'Check.']\n"
             "access_list = [[], 'all']")
INNER = {"match": "An earlier workflow already ran",
         "plan": "model_id = []\nsubtasks = []\naccess_list = []"}


def _plan(tmp: Path, name: str, workers: list[str], access: str) -> str:
    plan = (f"model_id = {workers!r}\nsubtasks = {['Answer.'] * len(workers)!r}\n"
            f"access_list = {access}")
    (tmp / f"{name}.json").write_text(json.dumps({"rules": [], "default": plan}))
    return f"scripted:{tmp / f'{name}.json'}"


def _script(path: Path, worker: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    plan = f"model_id = [{worker!r}]\nsubtasks = ['Answer the question.']\naccess_list = [[]]"
    (path / "plans.json").write_text(json.dumps({"rules": [], "default": plan}))
    return path


@pytest.fixture(scope="module")
def app(ray_cluster, fault_server_session, tmp_path_factory):
    from ray import serve

    from ray_conductor.data.pools import load_pool
    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.serve.command import free_port, start, stop
    from ray_conductor.serve.config import ServeConfig

    fs = fault_server_session
    fs.reset()
    fs.configure("slow", latency_s=8.0)
    fs.configure("down", rate_5xx=1.0)
    fs.configure("streamer", reply=WORDS, token_delay_s=0.06)
    fs.configure("breaks", reply=WORDS, token_delay_s=0.02, fail_after_tokens=4)
    fs.configure("pricey", reply=" ".join(["word"] * 200), latency_s=0.2)
    tmp = tmp_path_factory.mktemp("serve_app")
    data = load_pool("demo")
    workers = [{"name": w.name, "model": f"replay/{w.name}", "api_base": "demo",
                "input_price_per_mtok": w.input_price_per_mtok,
                "output_price_per_mtok": w.output_price_per_mtok} for w in data.worker_infos()]
    live = {"api_base": fs.url, "retries": 0,  # priced high: `cheapest` keeps to replay
            "input_price_per_mtok": 100.0, "output_price_per_mtok": 100.0}
    workers += [{**live, "name": "slow", "model": "openai/slow", "max_concurrency": 1},
                {**live, "name": "down", "model": "openai/down", "circuit_failures": 1,
                 "circuit_cooldown_s": 300},
                {**live, "name": "tight", "model": "openai/tight", "rpm": 1},
                {**live, "name": "echo", "model": "openai/echo"},
                {**live, "name": "streamer", "model": "openai/streamer"},
                {**live, "name": "breaks", "model": "openai/breaks"},
                {**live, "name": "pricey", "model": "openai/pricey",  # gpt-4o's prices
                 "input_price_per_mtok": 2.5, "output_price_per_mtok": 10.0}]
    (tmp / "workers.yaml").write_text(yaml.safe_dump({"workers": workers}))
    (tmp / "keys.yaml").write_text(yaml.safe_dump([K1, {"key": K2, "requests_per_minute": 2},
                                                   {"key": K3, "dollars_per_day": 0.01}]))
    (tmp / "recursive.json").write_text(json.dumps({"rules": [INNER], "default": RECURSIVE}))
    reg = PolicyRegistry(tmp / "registry")
    for worker in ("gpt-4o", "gemini-1.5-pro-002"):
        reg.publish(_script(tmp / worker, worker), kind="scripted")
    reg.promote(1)
    cfg = ServeConfig(
        app_name="test_app", port=free_port(), pool="demo", workers=str(tmp / "workers.yaml"),
        policies={"conductor": "knn", "recursive": f"scripted:{tmp / 'recursive.json'}",
                  "swap": f"registry:{tmp / 'registry'}", "cheap": "cheapest",
                  "chat2": _plan(tmp, "chat2", ["echo", "echo"], "[[], 'all']"),
                  "stream2": _plan(tmp, "stream2", ["echo", "streamer"], "[[], 'all']"),
                  "breaking": _plan(tmp, "breaking", ["breaks"], "[[]]")},
        api_keys_file=str(tmp / "keys.yaml"), api_keys_env=None, max_prompt_chars=50_000,
        log_dir=str(tmp / "traffic"), log_flush_s=1.0, blocking=False, body_timeout_s=2.0)
    cfg.limits.output_tokens_cap = 256
    cfg.limits.dollars_per_day = 1000.0  # $100/M live workers: worst cases run to dollars
    cfg.ray.namespace = "test_serve_app"
    cfg.graph.workers_per_proxy = 32  # one proxy process for all nineteen workers
    cfg.ingress.max_replicas = 1
    running = start(cfg)
    yield running, Questions(data), tmp
    stop(running, shutdown_ray=False)
    serve.shutdown()


class Questions:
    """The demo pool, with `queries("test")` narrowed to questions every worker answered (a
    recorded hole is a failed worker call, answered 502, whichever worker a policy picks)."""

    def __init__(self, data):
        from ray_conductor.serve.command import demo_questions

        self.data, self.full = data, demo_questions(data, 80)

    def queries(self, split):
        assert split == "test"
        return self.full

    def __getattr__(self, name):
        return getattr(self.data, name)


def client(running, key=K1):
    return openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0, timeout=120)


def recorded(data, q, worker):
    return data.record(q.query_id, worker).response


def ask(c, model, content, **kw):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                     **kw)


def test_plain_answer_with_usage_and_trace(app):
    running, data, _ = app
    q = data.queries("test")[0]
    r = ask(client(running), "conductor", q.query)
    ext = r.model_dump()["conductor"]
    (step,) = ext["steps"]
    assert r.choices[0].message.content == recorded(data, q, step["worker"])
    assert ext["query_id"] == q.query_id and ext["policy_version"].startswith("knn-")
    assert r.system_fingerprint == f"conductor-{ext['policy_version']}"
    assert r.usage.prompt_tokens == step["input_tokens"] > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model_dump()["usage"]["cost"] == pytest.approx(step["cost"]) and step["cost"] > 0
    assert {"latency_s", "retries", "cached", "subtask", "access"} <= set(step)


def test_recursion_plans_inside_the_planner_and_counts_orchestration(app):
    running, data, _ = app
    q = data.queries("test")[1]
    r = ask(client(running), "recursive", q.query).model_dump()
    assert [s["worker"] for s in r["conductor"]["steps"]] == ["gpt-4o", "conductor"]
    assert r["choices"][0]["message"]["content"] == recorded(data, q, "gpt-4o")
    orch = r["usage"]["prompt_tokens_details"]["orchestration_input_tokens"]
    assert orch > 0 and r["usage"]["completion_tokens_details"]["orchestration_output_tokens"] > 0
    assert r["usage"]["prompt_tokens"] == orch + r["conductor"]["steps"][0]["input_tokens"]


def test_streaming_ends_with_a_usage_chunk(app):
    running, data, _ = app
    q = data.queries("test")[2]
    chunks = list(ask(client(running), "cheap", q.query, stream=True,
                      stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    worker = chunks[-2].model_dump()["conductor"]["steps"][0]["worker"]
    assert text == recorded(data, q, worker)
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    with httpx.stream("POST", f"{running.base_url}/chat/completions",
                      headers={"Authorization": f"Bearer {K1}"},
                      json={"model": "cheap", "stream": True,
                            "messages": [{"role": "user", "content": q.query}]}) as resp:
        lines = [ln for ln in resp.iter_lines() if ln]
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"


def test_responses_api_plain_and_streamed(app):
    running, data, _ = app
    q = data.queries("test")[3]
    c = client(running)
    r = c.responses.create(model="gpt-4o", input=q.query)
    assert r.output_text == recorded(data, q, "gpt-4o") and r.usage.input_tokens > 0
    assert r.model_dump()["conductor"]["workflow"].startswith("model_id = ['gpt-4o']")
    events = list(c.responses.create(model="gpt-4o", input=q.query, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        r.output_text
    assert events[-1].response.usage.total_tokens == r.usage.total_tokens


def test_models_list_policies_with_versions_and_workers(app):
    running, _, _ = app
    models = {m.id: m.model_dump() for m in client(running).models.list()}
    assert {"conductor", "recursive", "swap", "cheap", "gpt-4o", "slow"} <= set(models)
    assert models["swap"]["conductor"]["policy_version"] == "v1"
    assert models["gpt-4o"]["conductor"]["replay"] and not models["slow"]["conductor"]["replay"]


def test_auth_is_refused_without_a_valid_key(app):
    running, data, _ = app
    q = data.queries("test")[0]
    for key in ("not-a-key-at-all", ""):
        with pytest.raises(openai.AuthenticationError) as e:
            ask(client(running, key or "x"), "cheap", q.query)
        assert e.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{running.base_url}/chat/completions", json={"model": "cheap"})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_a_key_over_its_limit_gets_429_naming_the_limit(app):
    running, data, _ = app
    q = data.queries("test")[0]
    c = client(running, K2)
    ask(c, "cheap", q.query)
    ask(c, "cheap", q.query)
    with pytest.raises(openai.RateLimitError) as e:
        ask(c, "cheap", q.query)
    assert "2 requests per minute" in e.value.body["message"]
    ask(client(running), "cheap", q.query)  # another key is not affected


def _error(resp) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_each_4xx_in_openai_error_shape(app, fault_server_session):
    running, data, _ = app
    url, auth = f"{running.base_url}/chat/completions", {"Authorization": f"Bearer {K1}"}
    q = data.queries("test")[0]

    def post(body, **kw):
        return httpx.post(url, headers={**auth, **kw.pop("headers", {})}, timeout=60,
                          **({"content": body} if isinstance(body, bytes) else {"json": body}),
                          **kw)

    msgs = [{"role": "user", "content": q.query}]
    cases = [
        (post(b"{not json"), 400, "invalid_request_error"),
        (post({"model": "cheap", "messages": "hi"}), 400, "invalid_request_error"),
        (post({"model": "nope", "messages": msgs}), 404, "model_not_found"),
        (post({"model": "cheap", "messages": [{"role": "user", "content": "x" * 60_000}]}),
         413, "prompt_too_large"),
        (post({"model": "gpt-4o", "messages": [{"role": "user", "content": "2+2?"}]}),
         400, "unrecorded_question"),
        (post({"model": "cheap", "messages": msgs}, headers={"x-conductor-timeout-s": "-1"}),
         400, "invalid_request_error"),
        (httpx.get(f"{running.base_url}/nowhere"), 404, "not_found"),
    ]
    for resp, status, code in cases:
        assert (resp.status_code, _error(resp)["code"]) == (status, code), resp.text
    # a worker that always fails: 502, then its circuit is open: 503 no worker available
    assert _error(post({"model": "down", "messages": msgs}))["code"] == "worker_failed"
    gone = post({"model": "down", "messages": msgs})
    assert (gone.status_code, _error(gone)["code"]) == (503, "no_worker_available")
    # a worker whose queue deadline passes: 429
    assert post({"model": "tight", "messages": msgs}).status_code == 200
    late = post({"model": "tight", "messages": msgs}, headers={"x-conductor-timeout-s": "1"})
    assert (late.status_code, _error(late)["code"]) == (429, "queue_deadline")


def test_bad_input_never_gives_500_nor_takes_a_replica_down(app):
    running, data, _ = app
    before = httpx.get(f"{running.url}/healthz").json()["ingress"]["pid"]
    url, auth = f"{running.base_url}/chat/completions", {"Authorization": f"Bearer {K1}"}
    nasty = [b"", b"null", b"[]", b"\xff\xfe", b"{" * 100_000, json.dumps({"model": 1}).encode(),
             json.dumps({"model": "cheap",
                         "messages": [{"role": "user", "content": None}]}).encode(),
             json.dumps({"model": "cheap", "messages": [{"role": "user", "content": "q"}],
                         "temperature": float("inf")}).encode().replace(b"Infinity", b"1e999"),
             json.dumps({"model": "cheap", "messages": [{"role": "user", "content": "q"}],
                         "max_tokens": True}).encode(),
             json.dumps({"model": "recursive", "input": 3}).encode(),
             b"x" * 3_000_000]
    for body in nasty:
        for path in ("/chat/completions", "/responses", "/feedback"):
            r = httpx.post(f"{running.base_url}{path}", headers=auth, content=body, timeout=60)
            assert 400 <= r.status_code < 500, (path, body[:40], r.status_code, r.text[:200])
            _error(r)
    q = data.queries("test")[0]
    assert httpx.post(url, headers=auth, timeout=60, json={
        "model": "cheap", "messages": [{"role": "user", "content": q.query}]}).status_code == 200
    assert httpx.get(f"{running.url}/healthz").json()["ingress"]["pid"] == before


def test_concurrent_requests_none_lost(app):
    running, data, _ = app
    qs = data.queries("test")[10:34]
    out: dict[int, object] = {}

    gate = threading.Barrier(len(qs))

    def one(i, q):
        c = client(running)
        gate.wait()  # all at once: the planner sees them together
        try:
            out[i] = ask(c, ("conductor", "cheap", "recursive")[i % 3], q.query)
        except Exception as e:  # recorded, asserted below
            out[i] = e

    threads = [threading.Thread(target=one, args=(i, q)) for i, q in enumerate(qs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(out) == len(qs) and not [r for r in out.values() if isinstance(r, Exception)]
    assert len({r.id for r in out.values()}) == len(qs)
    for i, q in enumerate(qs):
        r = out[i].model_dump()
        worker = r["conductor"]["steps"][0]["worker"]
        if data.record(q.query_id, worker).response is not None:
            assert r["choices"][0]["message"]["content"] == recorded(data, q, worker)


def _slow_in_flight(namespace: str) -> int:
    import ray

    from ray_conductor.graph import running_proxies

    proxy = ray.get_actor(running_proxies(namespace)["slow"], namespace=namespace)
    return ray.get(proxy.stats.remote())["slow"]["in_flight"]


def test_a_client_disconnect_cancels_its_worker_call(app, fault_server_session):
    running, _, _ = app
    ns = running.cfg.ray.namespace
    sent = len(fault_server_session.requests("slow"))
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{running.base_url}/chat/completions", timeout=1.5,
                   headers={"Authorization": f"Bearer {K1}"},
                   json={"model": "slow", "messages": [{"role": "user", "content": "wait"}]})
    assert len(fault_server_session.requests("slow")) == sent + 1  # the call had started
    t_gone = time.monotonic()
    while _slow_in_flight(ns) and time.monotonic() - t_gone < 12:
        time.sleep(0.1)
    freed = time.monotonic() - t_gone
    assert _slow_in_flight(ns) == 0
    # the worker answers after 8 s: its slot was freed by the cancellation, long before
    assert freed < 5.0, f"the worker's slot was freed only after {freed:.1f}s"


def test_traffic_rows_are_written_and_feedback_attached(app):
    import ray

    from ray_conductor.serve.actors import app_actor
    from ray_conductor.serve.traffic import read_traffic

    running, data, tmp = app
    q = data.queries("test")[4]
    r = ask(client(running), "cheap", q.query)
    url = f"{running.base_url}/feedback"
    ok = httpx.post(url, headers={"Authorization": f"Bearer {K1}"},
                    json={"request_id": r.id, "reward": 1.0, "label": "correct"})
    assert ok.status_code == 200, ok.text
    other = httpx.post(url, headers={"Authorization": f"Bearer {K2}"},
                       json={"request_id": r.id, "reward": 0.0})
    assert other.status_code in (404, 429) and _error(other)
    writer = app_actor(running.cfg.app_name, "traffic", running.cfg.ray.namespace)
    ray.get(writer.flush.remote())
    df = read_traffic(tmp / "traffic")
    row = df[df["request_id"] == r.id].iloc[0]
    assert row["reward"] == 1.0 and row["label"] == "correct" and row["status"] == 200
    assert row["query_id"] == q.query_id and row["policy_version"] == "cheapest"
    assert row["key_id"].startswith("key_") and json.loads(row["trace"])["steps"]
    assert (df["status"] == 401).any() and (df["error_code"] == "client_disconnected").any()
    text = df.to_json()
    assert K1 not in text and K2 not in text
    assert ray.data.read_parquet(str(tmp / "traffic" / "requests")).count() == len(df)


def test_hot_swap_under_load_with_zero_failures(app):
    from ray_conductor.errors import ConfigError
    from ray_conductor.serve.app import promote_policy, rollback_policy, swap_policy

    running, data, tmp = app
    app_name = running.cfg.app_name
    health = httpx.get(f"{running.url}/healthz").json()["ingress"]
    qs = data.queries("test")[40:60]
    seen: list[tuple[float, str, str]] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def load(k):
        c = client(running)
        i = k
        while not stop.is_set():
            q = qs[i % len(qs)]
            i += 1
            try:
                r = ask(c, "swap", q.query).model_dump()
                seen.append((time.monotonic(), r["conductor"]["policy_version"],
                             r["conductor"]["steps"][0]["worker"]))
            except Exception as e:
                errors.append(e)

    threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    assert promote_policy(app_name, "swap", 2, reason="test") == "v2"
    t_promoted = time.monotonic()
    time.sleep(1.0)
    assert rollback_policy(app_name, "swap", reason="test") == "v1"
    t_rolled = time.monotonic()
    time.sleep(1.0)
    with pytest.raises(ConfigError, match="could not be loaded.*no version 9"):
        swap_policy(app_name, "swap", f"registry:{tmp / 'registry'}@9")
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    versions = [v for _, v, _ in seen]
    assert "v1" in versions and "v2" in versions
    by_version = {v: w for _, v, w in seen}
    assert by_version == {"v1": "gpt-4o", "v2": "gemini-1.5-pro-002"}
    assert all(v == "v1" for t, v, _ in seen if t > t_rolled + 0.5)
    assert any(v == "v2" for t, v, _ in seen if t_promoted < t < t_rolled)
    after = httpx.get(f"{running.url}/healthz").json()["ingress"]
    assert (after["pid"], after["replica"]) == (health["pid"], health["replica"])  # no restart
    assert after["versions"]["swap"] == "v1"


# -- live workers: conversations, streaming, budgets -------------------------------------------


def _fs_since(fs, n: int, model: str) -> list[dict]:
    return [r for r in fs.requests()[n:] if r["model"] == model]


def test_a_multi_turn_chat_reaches_every_step_whole(app, fault_server_session):
    running, _, _ = app
    fs = fault_server_session
    n = len(fs.requests())
    turns = [{"role": "system", "content": "You are a terse assistant."},
             {"role": "user", "content": "My name is Ada Lovelace."},
             {"role": "assistant", "content": "Nice to meet you, Ada."},
             {"role": "user", "content": [{"type": "text", "text": "What is "},
                                          {"type": "text", "text": "my name?"}]}]
    r = client(running).chat.completions.create(model="chat2", messages=turns)
    assert r.choices[0].message.content.startswith("echo:")
    calls = _fs_since(fs, n, "echo")
    assert len(calls) == 2  # both steps of the workflow
    for call in calls:
        msgs = call["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
        assert [m["content"] for m in msgs[:3]] == [t["content"] for t in turns[:3]]
        assert msgs[3]["content"].startswith("Original question:\nWhat is my name?")
    assert "<Agent 0 response>" in calls[1]["messages"][3]["content"]
    # a worker passed through gets the conversation exactly as sent
    n = len(fs.requests())
    client(running).chat.completions.create(model="echo", messages=turns)
    (call,) = _fs_since(fs, n, "echo")
    assert [m["content"] for m in call["messages"][:3]] == [t["content"] for t in turns[:3]]
    assert call["messages"][3]["content"] == "What is my name?"


def test_the_first_token_arrives_before_the_final_step_finishes(app):
    running, _, _ = app
    t0 = time.perf_counter()
    got: list[tuple[float, dict]] = []
    for chunk in client(running).chat.completions.create(
            model="stream2", messages=[{"role": "user", "content": "Stream please."}],
            stream=True, stream_options={"include_usage": True}):
        got.append((time.perf_counter() - t0, chunk.model_dump()))
    text = [(t, c["choices"][0]["delta"]["content"]) for t, c in got
            if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert "".join(p for _, p in text) == WORDS
    progress = [c["conductor"]["event"] for _, c in got
                if c.get("conductor") and "event" in c["conductor"]]
    assert progress[:3] == ["step.started", "step.finished", "step.started"]
    ext = next(c["conductor"] for _, c in got if c["choices"] and
               c["choices"][0]["finish_reason"] == "stop")
    final = ext["steps"][1]
    assert final["worker"] == "streamer" and final["latency_s"] > 1.0  # 20 words, 60 ms apart
    first, last = text[0][0], text[-1][0]
    assert first < last - 0.8, (first, last)  # relayed as produced, not at the end
    assert got[-1][1]["usage"]["total_tokens"] > 0
    events = list(client(running).responses.create(model="stream2", input="Stream please.",
                                                   stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert "response.conductor.step.started" in types and types[-1] == "response.completed"
    assert types.index("response.conductor.step.finished") < \
        types.index("response.output_text.delta")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == WORDS


def test_a_worker_failing_mid_stream_ends_it_with_an_error(app):
    running, _, _ = app
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in client(running).chat.completions.create(
                model="breaking", messages=[{"role": "user", "content": "Go."}], stream=True):
            got += [c.delta.content or "" for c in chunk.choices]
    assert "".join(got) == "w0 w1 w2 w3 "  # what the worker sent before it broke
    assert e.value.body["code"] == "stream_interrupted" and "broke" in e.value.message
    events = list(client(running).responses.create(model="breaking", input="Go.", stream=True))
    assert [ev.type for ev in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "stream_interrupted"


def test_disconnected_streams_are_logged(app):
    import ray

    from ray_conductor.serve.actors import app_actor
    from ray_conductor.serve.traffic import read_traffic

    running, _, tmp = app
    for _ in range(6):
        with httpx.stream("POST", f"{running.base_url}/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {K1}"},
                          json={"model": "streamer", "stream": True,
                                "messages": [{"role": "user", "content": "long"}]}) as resp:
            for line in resp.iter_lines():
                if '"content":"w' in line:
                    break  # the client goes away mid-answer
        time.sleep(0.2)
    time.sleep(1.0)
    writer = app_actor(running.cfg.app_name, "traffic", running.cfg.ray.namespace)
    ray.get(writer.flush.remote())
    df = read_traffic(tmp / "traffic")
    gone = df[(df["model"] == "streamer") & (df["status"] == 499)]
    assert len(gone) == 6 and gone["stream"].all()
    assert (gone["error_code"] == "client_disconnected").all()


def test_a_tiny_budget_holds_under_30_concurrent_requests(app):
    import ray

    from ray_conductor.serve.actors import app_actor

    running, _, _ = app
    costs: list[float] = []
    waits: list[str] = []
    gate = threading.Barrier(30)

    def one():
        c = client(running, K3)
        gate.wait()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                r = c.chat.completions.create(model="pricey", messages=[
                    {"role": "user", "content": "Tell me everything."}])
                costs.append(r.model_dump()["usage"]["cost"])
                return
            except openai.RateLimitError as e:
                waits.append(e.response.headers.get("retry-after"))
                if "has spent" in e.message and "held" not in e.message:
                    return  # the budget is spent
                time.sleep(float(e.response.headers["retry-after"]))

    threads = [threading.Thread(target=one) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    limits = app_actor(running.cfg.app_name, "key_limits", running.cfg.ray.namespace)
    key = __import__("ray_conductor.serve.keys", fromlist=["key_id"]).key_id(K3)
    time.sleep(0.5)  # the last settlements are fire-and-forget
    spent = ray.get(limits.usage.remote(key))["dollars_today"]
    assert costs and all(w is not None and int(w) >= 1 for w in waits)
    assert spent == pytest.approx(sum(costs))
    assert 0.01 <= spent <= 0.01 + max(costs), (spent, len(costs))  # spent, by at most one
    assert len(costs) < 30  # admitting first and charging after would have run them all
    # the limits actor restarts (its process killed): the budget is still spent
    pid = ray.get(limits.__ray_call__.remote(lambda self: __import__("os").getpid()))
    ray.kill(limits, no_restart=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if ray.get(limits.__ray_call__.remote(lambda self: __import__("os").getpid()),
                       timeout=10) != pid:
                break
        except Exception:
            time.sleep(0.5)
    assert ray.get(limits.usage.remote(key))["dollars_today"] == pytest.approx(spent)
    with pytest.raises(openai.RateLimitError) as e:
        client(running, K3).chat.completions.create(model="pricey", messages=[
            {"role": "user", "content": "More?"}])
    assert "has spent" in e.value.message and int(e.value.response.headers["retry-after"]) > 0


def test_the_door_refuses_what_it_cannot_honour(app, fault_server_session):
    running, data, _ = app
    url, auth = f"{running.base_url}/chat/completions", {"Authorization": f"Bearer {K1}"}
    q = data.queries("test")[5]
    msgs = [{"role": "user", "content": "hi"}]

    def post(**kw):
        return httpx.post(url, headers=auth, timeout=60, json=kw)

    for kw, param in [({"tools": []}, "tools"), ({"tool_choice": "auto"}, "tool_choice"),
                      ({"logprobs": True}, "logprobs"), ({"n": 2}, "n"),
                      ({"response_format": {"type": "json_object"}}, "response_format")]:
        r = post(model="chat2", messages=msgs, **kw)
        assert (r.status_code, _error(r)["param"]) == (400, param), r.text
    n = len(fault_server_session.requests())
    ok = post(model="echo", messages=msgs, response_format={"type": "json_object"})
    assert ok.status_code == 200  # one worker answers: its structured output passes through
    assert "response_format" in fault_server_session.requests()[n]["body_keys"]
    big = post(model="m" * 100_000, messages=msgs)
    assert big.status_code == 404 and len(_error(big)["message"]) < 2_000
    assert "m" * 201 not in big.text
    wrong = post(model="cheap", messages=[{"role": "user", "content": "another question"}],
                 metadata={"query_id": q.query_id})
    assert (wrong.status_code, _error(wrong)["code"]) == (400, "query_id_mismatch")
    right = post(model="cheap", messages=[{"role": "user", "content": q.query}],
                 metadata={"query_id": q.query_id})
    assert right.status_code == 200 and right.json()["conductor"]["query_id"] == q.query_id
    for resp in (right, wrong, httpx.post(url, json={})):
        assert len(resp.headers.get_list("x-request-id")) == 1
    limited = [httpx.post(url, timeout=60, headers={"Authorization": f"Bearer {K2}"},
                          json={"model": "cheap", "messages": [
                              {"role": "user", "content": q.query}]}) for _ in range(3)]
    (r429,) = [r for r in limited if r.status_code == 429] or limited[-1:]
    assert r429.status_code == 429 and int(r429.headers["retry-after"]) >= 1


def test_a_stalled_body_gets_a_408(app):
    import socket

    running, _, _ = app
    host, port = running.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + K1.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"mo")
        t0 = time.monotonic()
        got = b""
        while b"request_timeout" not in got:  # the status line and the body may come apart
            part = sock.recv(4096)
            if not part:
                break
            got += part
        waited = time.monotonic() - t0
        head = got.decode(errors="replace")
    assert head.startswith("HTTP/1.1 408"), head[:200]
    assert waited < 10 and '"code":"request_timeout"' in head.replace(" ", "")


def test_feedback_refusals_take_the_same_time_and_rewards_have_a_range(app):
    running, data, _ = app
    r = ask(client(running), "cheap", data.queries("test")[6].query)
    url = f"{running.base_url}/feedback"

    def timed(key, rid, reward=0.5):
        t0 = time.perf_counter()
        resp = httpx.post(url, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                          json={"request_id": rid, "reward": reward})
        return resp, time.perf_counter() - t0

    other = [timed(K2 if i % 2 else K3, r.id) for i in range(4)]
    unknown = [timed(K1, f"chatcmpl-nope{i}") for i in range(4)]
    assert {x.status_code for x, _ in other + unknown} == {404}
    assert len({_error(x)["message"].split("'")[0] for x, _ in other + unknown}) == 1
    a = sorted(t for _, t in other)[2]
    b = sorted(t for _, t in unknown)[2]
    assert abs(a - b) < 0.25 * max(a, b), (a, b)  # was ~40x apart
    bad, _ = timed(K1, r.id, reward=7.0)
    assert bad.status_code == 400 and _error(bad)["param"] == "reward"
    good, _ = timed(K1, r.id, reward=1.0)
    assert good.status_code == 200
