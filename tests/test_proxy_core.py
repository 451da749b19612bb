"""`WorkerProxyCore` against the fault server, over real HTTP through litellm's OpenAI
provider: retries, Retry-After, timeouts, the circuit breaker and fallbacks, tokens and costs,
the cache, deadlines, and that an API key never shows up anywhere."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from ray_conductor.workers.base import Completion
from ray_conductor.workers.config import WorkerConfig
from ray_conductor.workers.proxy import WorkerProxyCore, litellm_module

MSG = [{"role": "user", "content": "What is two plus two?"}]
SECRET = "sk-test-SECRET123"


def worker(server: Any, name: str = "w", **kw: Any) -> WorkerConfig:
    base = dict(model=f"openai/{name}-model", api_base=server.url, retries=2,
                backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5.0)
    return WorkerConfig(name=name, **{**base, **kw})


def pool(*cfgs: WorkerConfig, **kw: Any) -> dict[str, WorkerProxyCore]:
    """Cores that fall back to each other in-process, as the actors do through Ray."""
    cores: dict[str, WorkerProxyCore] = {}

    async def fallback(name: str, messages: list, params: dict) -> Completion:
        return await cores[name].complete(messages, **params)

    for c in cfgs:
        cores[c.name] = WorkerProxyCore(c, fallback=fallback, seed=0, **kw)
    return cores


async def test_a_good_call_returns_text_tokens_and_cost(fault_server):
    core = WorkerProxyCore(worker(fault_server, model="openai/gpt-4o-mini"))
    c = await core.complete(MSG, temperature=0, max_tokens=16, metadata={"query_id": "q1"})
    assert c.ok and c.text == "echo: What is two plus two?"
    # the fault server counts one token per word, plus 3 per message
    assert (c.input_tokens, c.output_tokens) == (5 + 3, 6)
    price = litellm_module().model_cost["gpt-4o-mini"]
    assert c.cost == pytest.approx(8 * price["input_cost_per_token"]
                                   + 6 * price["output_cost_per_token"])
    assert [a.outcome for a in c.attempts] == ["ok"]
    req = fault_server.requests()[0]
    assert req["max_tokens"] == 16 and "metadata" not in req["body_keys"]


async def test_price_override_replaces_the_cost_map(fault_server):
    core = WorkerProxyCore(worker(fault_server, input_price_per_mtok=1.0,
                                  output_price_per_mtok=10.0))
    c = await core.complete(MSG)
    assert c.cost == pytest.approx((8 * 1.0 + 6 * 10.0) / 1e6)


async def test_retries_5xx_then_answers(fault_server):
    fault_server.configure(script=["500", "503"])
    core = WorkerProxyCore(worker(fault_server))
    c = await core.complete(MSG)
    assert c.ok
    assert [a.outcome for a in c.attempts] == ["server_error", "server_error", "ok"]
    assert [a.status for a in c.attempts] == [500, 503, 200]
    assert len(fault_server.requests()) == 3  # litellm itself did not retry behind our back
    assert core.stats()["retries"] == 2


async def test_retry_after_is_honoured(fault_server):
    fault_server.configure(script=["429"], retry_after_s=0.4)
    core = WorkerProxyCore(worker(fault_server))
    c = await core.complete(MSG)
    assert c.ok and c.attempts[0].outcome == "rate_limited"
    assert c.attempts[0].retry_after_s == 0.4
    first, second = fault_server.requests()
    assert second["monotonic"] - first["monotonic"] >= 0.4  # backoff alone would be <= 0.01


async def test_timeouts_are_retried(fault_server):
    fault_server.configure(script=["hang"], hang_s=None)
    core = WorkerProxyCore(worker(fault_server, timeout_s=0.3))
    c = await core.complete(MSG)
    assert c.ok and [a.outcome for a in c.attempts] == ["timeout", "ok"]


async def test_connection_errors_are_retried_then_reported():
    dead = WorkerConfig(name="w", model="openai/x", api_base="http://127.0.0.1:9/v1", retries=1,
                        backoff_base_s=0.01, timeout_s=2)
    core = WorkerProxyCore(dead)
    c = await core.complete(MSG)
    assert not c.ok and c.error_code == "worker_failed" and len(c.attempts) == 2
    assert all(a.outcome in ("connection", "server_error") for a in c.attempts)


async def test_client_errors_are_not_retried(fault_server):
    fault_server.configure(script=["400"])
    core = WorkerProxyCore(worker(fault_server))
    c = await core.complete(MSG)
    assert not c.ok and c.error_code == "worker_failed" and "after 1 attempt" in c.error
    assert len(fault_server.requests()) == 1


async def test_breaker_opens_routes_to_fallback_and_recovers(fault_server):
    fault_server.configure(model="a-model", rate_5xx=1.0)
    cores = pool(worker(fault_server, "a", retries=0, fallbacks=["b"], circuit_failures=2,
                        circuit_cooldown_s=0.5),
                 worker(fault_server, "b"))
    a = cores["a"]
    for _ in range(2):  # two failures, each answered by b
        c = await a.complete(MSG)
        assert c.ok and c.worker == "a" and c.served_by == "b"
        assert [x.outcome for x in c.attempts] == ["server_error", "ok"]
    assert a.breaker.state == "open"
    c = await a.complete(MSG)  # open: a is not even tried
    assert c.served_by == "b" and [x.model for x in c.attempts] == ["openai/b-model"]
    assert len(fault_server.requests("a-model")) == 2
    fault_server.configure(model="a-model", rate_5xx=0.0)
    await asyncio.sleep(0.5)  # cooldown over: the next call is a probe, and it succeeds
    c = await a.complete(MSG)
    assert c.ok and c.served_by is None and a.breaker.state == "closed"
    assert a.stats()["fallbacks"] == 3 and a.stats()["circuit_opened"] == 1


async def test_fallback_cycles_end(fault_server):
    fault_server.configure(rate_5xx=1.0)
    cores = pool(worker(fault_server, "a", retries=0, fallbacks=["b"]),
                 worker(fault_server, "b", retries=0, fallbacks=["a"]))
    c = await cores["a"].complete(MSG)
    assert not c.ok and len(c.attempts) == 2  # a once, b once, no loop
    assert len(fault_server.requests()) == 2


async def test_tokens_and_costs_add_up_across_workers_and_fallbacks(fault_server):
    fault_server.configure(model="a-model", script=["500", "ok", "500"])
    cores = pool(worker(fault_server, "a", retries=0, fallbacks=["b"], input_price_per_mtok=3,
                        output_price_per_mtok=7),
                 worker(fault_server, "b", input_price_per_mtok=1, output_price_per_mtok=2))
    results = [await cores["a"].complete([{"role": "user", "content": "word " * n}])
               for n in (1, 2, 3, 4)]
    assert [c.served_by for c in results] == ["b", None, "b", None]
    stats = [c.stats() for c in cores.values()]
    assert sum(s["dollars"] for s in stats) == pytest.approx(sum(c.cost for c in results))
    assert sum(s["input_tokens"] for s in stats) == sum(c.input_tokens for c in results)
    assert sum(s["output_tokens"] for s in stats) == sum(c.output_tokens for c in results)
    # the served requests' usage, as the server counts it: n words + 3 per prompt
    assert sum(c.input_tokens for c in results) == sum(n + 3 for n in (1, 2, 3, 4))
    assert stats[0]["calls"] == 4 and stats[0]["failures"] == 0 and stats[0]["fallbacks"] == 2


async def test_cache_serves_temperature_zero_repeats_only(fault_server):
    core = WorkerProxyCore(worker(fault_server, cache=True, cache_ttl_s=60))
    first = await core.complete(MSG, temperature=0, metadata={"query_id": "q1"})
    again = await core.complete(MSG, temperature=0, metadata={"query_id": "q2"})
    assert again.cached and not first.cached and again.text == first.text
    assert again.cost == 0.0 and again.meta["cached_cost"] == first.cost
    await core.complete(MSG, temperature=0.7)
    await core.complete(MSG, temperature=0.7)
    await core.complete(MSG, temperature=0, max_tokens=5)  # other sampling params: a miss
    assert len(fault_server.requests()) == 4
    s = core.stats()
    assert s["cache_hits"] == 1 and s["calls"] == 5
    assert s["dollars"] == pytest.approx(4 * first.cost)  # the hit was not paid again


async def test_a_deadline_in_the_queue_fails_with_rate_limit_timeout(fault_server):
    core = WorkerProxyCore(worker(fault_server, rpm=6, window_s=10))  # 1 call per 10 s
    assert (await core.complete(MSG)).ok
    c = await core.complete(MSG, timeout_s=0.2)
    assert c.error_code == "rate_limit_timeout" and "waited 0.20s in the serve queue" in c.error
    assert core.stats()["rate_limit_timeouts"] == 1 and len(fault_server.requests()) == 1


async def test_a_missing_key_variable_is_a_clear_error(fault_server, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    c = await WorkerProxyCore(worker(fault_server, api_key_env="NO_SUCH_KEY")).complete(MSG)
    assert c.error_code == "missing_api_key" and "NO_SUCH_KEY" in c.error
    assert fault_server.requests() == []


async def test_repeated_failures_are_logged_once_per_code_per_30s(fault_server, monkeypatch,
                                                                  caplog):
    """A missing key fails every call: one warning, then the muted ones counted in the next
    warning once 30 s have passed; every call is still counted and returned as failed."""
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    now = [100.0]
    core = WorkerProxyCore(worker(fault_server, api_key_env="NO_SUCH_KEY"),
                           clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="ray_conductor.workers.proxy"):
        for _ in range(5):
            assert (await core.complete(MSG)).error_code == "missing_api_key"
        now[0] += 31
        await core.complete(MSG)
    lines = [r.getMessage() for r in caplog.records if "NO_SUCH_KEY" in r.getMessage()]
    assert len(lines) == 2 and "and 4 more missing_api_key failures in the last 31s" in lines[1]
    assert core.stats()["calls"] == 6


async def test_the_api_key_appears_nowhere(fault_server, monkeypatch, caplog, capfd):
    monkeypatch.setenv("FAKE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    fault_server.configure(echo_key_in_errors=True, script=["401"])
    fault_server.configure(model="b-model", echo_key_in_errors=True, script=["500", "500", "429"],
                           retry_after_s=0.01)
    cores = pool(worker(fault_server, "a", api_key_env="FAKE_KEY", retries=0, fallbacks=["b"]),
                 worker(fault_server, "b", api_key_env="FAKE_KEY"))
    c = await cores["a"].complete(MSG)
    assert not c.ok and len(c.attempts) == 4
    assert "Incorrect API key" in c.attempts[0].error  # the provider's text survives ...
    assert "[REDACTED]" in c.attempts[0].error  # ... without the key it quoted
    out, err = capfd.readouterr()
    seen = [repr(c), json.dumps(c.to_dict()), json.dumps([x.stats() for x in cores.values()]),
            caplog.text, out, err, json.dumps(fault_server.requests())]
    assert caplog.text  # there were log lines to leak into
    assert not [s for s in seen if "SECRET123" in s]
    assert fault_server.requests()[0]["headers"]["Authorization"] == "[REDACTED]"
