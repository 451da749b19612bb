"""The serving tier's door and books, without Ray: parameters refused by name, echoes capped,
text made valid Unicode, conversations kept whole; budgets that hold under concurrency by
reserve-then-settle, say when to retry, and survive a restart; a traffic log that no row can
stop (surrogates, a row of the wrong type, a full buffer); what is served with live workers
and no policy trained for them; planning batched off the event loop."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from ray_conductor.errors import ConfigError, ServeError
from ray_conductor.serve import protocol as api
from ray_conductor.serve import wire
from ray_conductor.serve.limits import KeyLimiter, KeyLimits, prompt_bound, worst_case
from ray_conductor.serve.traffic import (
    DEAD_LETTER,
    TrafficLog,
    check_feedback,
    read_traffic,
    request_row,
)


def body(**kw) -> bytes:
    kw.setdefault("model", "conductor")
    kw.setdefault("messages", [{"role": "user", "content": "hi"}])
    return json.dumps(kw).encode()


# -- the door ----------------------------------------------------------------------------------


def test_parameters_that_cannot_be_honoured_are_refused_by_name():
    for kw, param, code in [
        ({"tools": []}, "tools", "unsupported_parameter"),
        ({"tool_choice": "auto"}, "tool_choice", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"top_logprobs": 3}, "top_logprobs", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
        ({"response_format": {"type": "xml"}}, "response_format.type",
         "invalid_request_error"),
        ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
    ]:
        with pytest.raises(ServeError) as e:
            api.parse_chat(body(**kw))
        assert (e.value.status, e.value.param, e.value.code) == (400, param, code), kw
    ok = api.parse_chat(body(n=1, logprobs=False, user="u1", store=True, presence_penalty=0.5,
                             response_format={"type": "text"}))
    assert ok.params == {"presence_penalty": 0.5} and ok.response_format is None
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert api.parse_chat(body(response_format=fmt)).response_format == fmt
    for kw, param in [({"tools": []}, "tools"), ({"previous_response_id": "r"},
                                                  "previous_response_id"),
                      ({"include": ["x"]}, "include"), ({"reasoning": {}}, "reasoning")]:
        with pytest.raises(ServeError) as e:
            api.parse_responses(json.dumps({"model": "m", "input": "q", **kw}).encode())
        assert e.value.param == param
    schema = {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}}
    r = api.parse_responses(json.dumps({"model": "m", "input": "q", "text": schema}).encode())
    assert r.response_format == {"type": "json_schema",
                                 "json_schema": {"name": "n", "schema": {"type": "object"}}}


def test_errors_echo_at_most_200_characters_of_what_was_sent():
    huge = "M" * 100_000
    cases = [body(model="x", **{huge: 1}), body(temperature=huge), body(stop=5),
             json.dumps({"model": "m", "input": [{"type": huge}]}).encode()]
    for raw in cases:
        parse = api.parse_responses if b'"input"' in raw else api.parse_chat
        with pytest.raises(ServeError) as e:
            parse(raw)
        assert "M" * (api.ECHO_CHARS + 1) not in e.value.message
        assert "M" * (api.ECHO_CHARS + 1) not in str(e.value.param)
    assert api.clip(huge).endswith("(100000 characters)")


def test_text_is_valid_unicode_at_the_door_and_conversations_stay_whole():
    raw = (b'{"model": "m", "messages": [{"role": "system", "content": "Be brief."}, '
           b'{"role": "user", "content": "bad \\ud800 and good \\ud83d\\ude00"}, '
           b'{"role": "assistant", "content": "ok"}, {"role": "user", "content": '
           b'[{"type": "text", "text": "What did "}, {"type": "text", "text": "I say?"}]}]}')
    req = api.parse_chat(raw)
    assert req.messages[1]["content"] == "bad \ufffd and good \U0001f600"
    req.messages[1]["content"].encode("utf-8")  # nothing downstream can choke on it
    assert req.question == "What did I say?"
    assert [m["content"] for m in req.context] == ["Be brief.", req.messages[1]["content"],
                                                   "ok"]
    assert wire.dumps({"text": "\ud800"}) == b'{"text":"\\ud800"}'  # a worker's bad text


# -- budgets -----------------------------------------------------------------------------------


def test_the_worst_case_counts_every_call_its_reads_and_its_output_cap():
    msgs = [{"role": "user", "content": "héllo"}]
    assert prompt_bound(msgs) == 6 + 8
    one = worst_case([(0, (2.0, 10.0))], 14, 100, step_overhead=0)
    assert one == pytest.approx((14 * 2.0 + 100 * 10.0) / 1e6)
    two = worst_case([(0, (2.0, 10.0)), (1, (1.0, 1.0))], 14, 100, step_overhead=0)
    assert two == pytest.approx(one + ((14 + 100) * 1.0 + 100 * 1.0) / 1e6)


def test_concurrent_requests_overshoot_a_budget_by_at_most_one_real_cost():
    rng = random.Random(0)
    for trial in range(50):
        lim = KeyLimiter(default=KeyLimits(None, 0.01), clock=lambda: 1e9)
        open_: list[tuple[str, float]] = []
        worst, admitted, reals = 0.008, 0, []
        for _ in range(300):  # arrivals and completions interleaved at random
            if open_ and rng.random() < 0.4:
                ticket, real = open_.pop(rng.randrange(len(open_)))
                lim.settle("k", ticket, real)
                continue
            ticket, refused = lim.reserve("k", worst)
            if refused is None:
                admitted += 1
                real = rng.uniform(0.0, worst)
                reals.append(real)
                open_.append((ticket, real))
            else:
                assert refused.retry_after_s >= 1
        for ticket, real in open_:
            lim.settle("k", ticket, real)
        assert lim.spent_today("k") <= 0.01 + max(reals) + 1e-12, trial
    # admitting first and charging after (the old way) overshoots many times over
    naive = sum(rng.uniform(0.0, 0.008) for _ in range(30))
    assert naive > 3 * 0.01


def test_refusals_say_when_to_retry(tmp_path):
    now = [1_700_000_000.0]
    lim = KeyLimiter({"r": KeyLimits(2, None)}, KeyLimits(None, 1.0), clock=lambda: now[0])
    assert lim.reserve("r")[1] is None and lim.reserve("r")[1] is None
    refused = lim.reserve("r")[1]
    assert "2 requests per minute" in refused.message and refused.retry_after_s == 60
    t, _ = lim.reserve("b", 0.6)
    t2, _ = lim.reserve("b", 0.6)  # 0.6 held is under the budget: admitted
    held = lim.reserve("b", 0.1)[1]
    assert "held by its requests in flight" in held.message and held.retry_after_s == 1
    lim.settle("b", t, 0.5)
    lim.settle("b", t2, 0.7)
    spent = lim.reserve("b", 0.1)[1]
    assert "resets at 00:00 UTC" in spent.message and 0 < spent.retry_after_s <= 86_400


def test_budget_state_survives_a_restart(tmp_path):
    path = tmp_path / "limits.json"
    lim = KeyLimiter(default=KeyLimits(None, 1.0), state_path=path)
    t1, _ = lim.reserve("k", 0.4)
    t2, _ = lim.reserve("k", 0.4)
    lim.settle("k", t1, 0.3)
    again = KeyLimiter(default=KeyLimits(None, 1.0), state_path=path)  # the actor restarted
    assert again.spent_today("k") == pytest.approx(0.3)
    assert again.reserved("k") == pytest.approx(0.4)  # t2 is still in flight
    again.settle("k", t2, 0.2)
    assert again.spent_today("k") == pytest.approx(0.5) and again.reserved("k") == 0
    path.write_text("{not json")
    assert KeyLimiter(default=KeyLimits(None, 1.0), state_path=path).spent_today("k") == 0


# -- the traffic log ---------------------------------------------------------------------------


def _row(rid: str, **kw):
    return request_row(request_id=rid, time=1_700_000_000.0 + len(rid), key_id="key_x",
                       status=200, **kw)


def test_no_row_can_stop_the_traffic_log(tmp_path):
    log = TrafficLog(tmp_path, max_rows=100)
    log.append(_row("r1", question="lone \ud800 surrogate", answer="x" * 2_000_000))
    log.append(_row("r2", question="fine"))
    log.append({**_row("r3"), "status": 2 ** 40})  # cannot be an int32: dead-lettered
    log.append({**_row("r4"), "time": "yesterday"})
    log.add_feedback("r1", "key_x", 1.0, "label \udfff")
    assert log.flush() == 3
    df = read_traffic(tmp_path)
    assert sorted(df["request_id"]) == ["r1", "r2"]
    r1 = df[df["request_id"] == "r1"].iloc[0]
    assert r1["question"] == "lone \ufffd surrogate" and r1["label"] == "label \ufffd"
    assert len(r1["answer"]) < 1_100_000 and r1["answer"].endswith("[cut: 2000000 characters]")
    assert log.dead_letter == {"requests": 2, "feedback": 0} and log.pending() == 0
    dead = [json.loads(ln) for p in (tmp_path / DEAD_LETTER).rglob("*.jsonl")
            for ln in p.read_text().splitlines()]
    assert sorted(d["row"]["request_id"] for d in dead) == ["r3", "r4"]
    assert all(d["reason"] for d in dead)
    log.append(_row("r5"))  # and the log goes on
    assert log.flush() == 1 and len(read_traffic(tmp_path)) == 3


def test_feedback_rewards_are_kept_in_their_range():
    assert check_feedback({"request_id": "r", "reward": -1}) == ("r", -1.0, None)
    with pytest.raises(ValueError, match="between -1 and 1"):
        check_feedback({"request_id": "r", "reward": 1e9})
    assert check_feedback({"request_id": "r", "reward": 5}, (0, 10))[1] == 5.0


# -- what is served ----------------------------------------------------------------------------


def _live(tmp_path, workers):
    import yaml

    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump({"workers": workers}))
    return str(path)


def test_live_workers_get_a_pinned_default_and_bad_policies_fail_before_start(tmp_path):
    from ray_conductor.serve.command import check_policies
    from ray_conductor.serve.config import ServeConfig, served_policies

    workers = _live(tmp_path, [
        {"name": "small", "model": "openai/small", "api_base": "http://127.0.0.1:9/v1",
         "input_price_per_mtok": 0.1, "output_price_per_mtok": 0.4},
        {"name": "big", "model": "openai/big", "api_base": "http://127.0.0.1:9/v1",
         "input_price_per_mtok": 2.5, "output_price_per_mtok": 10.0}])
    cfg = ServeConfig(workers=workers, pool=None)
    notice, dropped = check_policies(cfg)
    assert served_policies(cfg) == {"conductor": "pinned:big"}
    assert "pinned default workflow" in notice and "'big'" in notice
    assert "conductor-lite" in dropped
    chosen = ServeConfig(workers=workers, pool=None, policy="pinned:small")
    check_policies(chosen)  # the default conductor-lite beside it is dropped, not an error
    assert served_policies(chosen) == {"conductor": "pinned:small"}
    with pytest.raises(ConfigError, match="conductor=lite:default cannot be served"):
        check_policies(ServeConfig(workers=workers, pool=None, policy="lite:default"))
    for policies, why in [({"c": "lite:default"}, "trained on other workers"),
                          ({"c": "knn"}, "no pool is set"),
                          ({"c": "single:nobody"}, "not in the pool"),
                          ({"c": "pinned:nobody"}, "not in the pool"),
                          ({"c": f"scripted:{tmp_path / 'none.json'}"}, "no such plan"),
                          ({"c": f"lite:{tmp_path}"}, "not a lite policy")]:
        with pytest.raises(ConfigError, match=why) as e:
            check_policies(ServeConfig(workers=workers, pool=None, policies=policies))
        assert e.value.message.startswith(f"policy c={policies['c']} cannot be served")
        assert "\n" not in e.value.message
    assert check_policies(ServeConfig()) == []  # the demo pool: the shipped policy fits


# -- planning in the ingress -------------------------------------------------------------------


async def test_blocking_plans_are_batched_off_the_event_loop(tmp_path):
    import threading

    from ray_conductor.serve.host import PolicyHost
    from ray_conductor.serve.policies import PlanReply, PlanRequest
    from ray_conductor.workflow import Workflow

    threads: list[int] = []

    class Slow:
        interactive, recursion_depth, version, max_calls = False, 0, "v1", 1

        def blocking(self, question):
            return question != "cached"

        def plan(self, reqs):
            threads.append(threading.get_ident())
            return [PlanReply(r.model, "v1", Workflow.single("w")) for r in reqs]

    host = PolicyHost(lambda ref: Slow(), batch_wait_s=0.05)
    host.update({"m": "knn"})
    replies = await asyncio.gather(*(host.plan(PlanRequest("m", f"q{i}", [])) for i in range(5)))
    assert all(r.workflow.workers == ("w",) for r in replies)
    assert host.batches == [5] and threads[-1] != threading.get_ident()
    await host.plan(PlanRequest("m", "cached", []))
    assert threads[-1] == threading.get_ident()  # microseconds: on the loop, no batch
    assert (await host.plan(PlanRequest("gone", "q", []))).errors == ["unknown_model"]
    with pytest.raises(ConfigError, match="planner deployment"):
        host.update({"m": "HuggingFaceTB/SmolLM2-135M-Instruct"})  # an LM, and no planner


def test_a_train_lite_run_directory_is_served_from_its_policy(tmp_path):
    from ray_conductor.serve.policies import _check_lite

    (tmp_path / "run" / "policy").mkdir(parents=True)
    (tmp_path / "run" / "policy" / "lite.json").write_text(json.dumps({"workers": ["a", "b"]}))
    _check_lite(str(tmp_path / "run"), ["a", "b"])  # RUN_DIR, as eval's lite:RUN_DIR
    with pytest.raises(ConfigError, match="trained on other workers"):
        _check_lite(str(tmp_path / "run"), ["a", "c"])


def test_a_worker_is_shown_at_the_prices_it_is_charged():
    from ray_conductor.workers.config import WorkerConfig
    from ray_conductor.workers.proxy import list_price, worker_info

    w = WorkerConfig(name="w", model="openai/gpt-4o", input_price_per_mtok=1.0)
    info = worker_info(w)
    assert (info.input_price_per_mtok, info.output_price_per_mtok) == list_price(w) == (1.0, 0.0)
