"""The circuit breaker and the fallback, on `WorkerProxyCore` with fake backends (no Ray, no
HTTP): an open circuit sends a call to a healthy fallback wherever it is noticed (before the
call, while it queues, between retries), and fails with a clear `circuit_open` only where no
fallback exists (issue 12, defect 9)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from ray_conductor.workers.base import Completion
from ray_conductor.workers.config import WorkerConfig
from ray_conductor.workers.proxy import WorkerProxyCore

MSG = [{"role": "user", "content": "What is two plus two?"}]


class ProviderError(Exception):
    """Shaped like litellm's errors: `classify` reads `status_code` and the headers."""

    def __init__(self, status: int, retry_after: float | None = None):
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.headers = {"retry-after": f"{retry_after:g}"} if retry_after else {}


class Backend:
    """A fake `acompletion`: answers after `delay_s`, or raises what `fail` makes."""

    def __init__(self, text: str = "4", delay_s: float = 0.0, fail=None):
        self.text, self.delay_s, self.fail, self.calls = text, delay_s, fail, 0

    async def __call__(self, **kw: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail()
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(
            content=self.text))], usage=SimpleNamespace(prompt_tokens=7, completion_tokens=1))


def cfg(name: str, **kw: Any) -> WorkerConfig:
    base = dict(model=f"openai/{name}", api_base="http://127.0.0.1:9/v1", retries=0,
                backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=60.0, circuit_failures=1,
                circuit_cooldown_s=60.0, input_price_per_mtok=0.0, output_price_per_mtok=0.0)
    return WorkerConfig(name=name, **{**base, **kw})


def pair(primary: Backend, fallback: Backend | None, a_kw: dict | None = None,
         b_kw: dict | None = None, queue_timeout_s: float = 30.0) -> dict[str, WorkerProxyCore]:
    """Worker a (falls back to b when b exists) and worker b, calling each other in-process."""
    cores: dict[str, WorkerProxyCore] = {}

    async def call(name: str, messages: list, params: dict) -> Completion:
        return await cores[name].complete(messages, **params)

    fallbacks = ["b"] if fallback is not None else []
    cores["a"] = WorkerProxyCore(cfg("a", fallbacks=fallbacks, **(a_kw or {})),
                                 acompletion=primary, fallback=call, seed=0,
                                 queue_timeout_s=queue_timeout_s)
    if fallback is not None:
        cores["b"] = WorkerProxyCore(cfg("b", **(b_kw or {})), acompletion=fallback,
                                     fallback=call, seed=0, queue_timeout_s=queue_timeout_s)
    return cores


async def test_an_open_circuit_sends_calls_to_a_healthy_fallback():
    bad, good = Backend(fail=lambda: ProviderError(500)), Backend("from b")
    cores = pair(bad, good)
    first = await cores["a"].complete(MSG)  # fails on a, opens its circuit, b answers
    assert first.ok and first.served_by == "b" and cores["a"].breaker.state == "open"
    for _ in range(5):
        c = await cores["a"].complete(MSG)
        assert c.ok and c.error_code is None and c.served_by == "b" and c.text == "from b"
    assert bad.calls == 1 and good.calls == 6  # while open, a's backend is not called


async def test_an_open_circuit_between_retries_goes_to_the_fallback_at_once():
    """A 429 asking for 3 s opens the circuit: the call must not sit out the Retry-After
    before passing to b (that wait is what left fallbacks no time under load)."""
    bad, good = Backend(fail=lambda: ProviderError(429, retry_after=3.0)), Backend("from b")
    cores = pair(bad, good, a_kw={"retries": 3})
    t = time.monotonic()
    c = await asyncio.wait_for(cores["a"].complete(MSG), 10)
    assert c.ok and c.served_by == "b" and bad.calls == 1
    assert time.monotonic() - t < 1.0
    assert [a.outcome for a in c.attempts] == ["rate_limited", "ok"]


async def test_a_circuit_that_opens_while_a_call_queues_sends_it_to_the_fallback():
    """One slot at a: the second call queues behind the first, whose failure opens the
    circuit; once admitted, the second call must go to b, not to the failing backend."""
    bad, good = Backend(delay_s=0.3, fail=lambda: ProviderError(503)), Backend("from b")
    cores = pair(bad, good, a_kw={"max_concurrency": 1})
    c1, c2 = await asyncio.gather(cores["a"].complete(MSG), cores["a"].complete(MSG))
    assert c1.ok and c2.ok and c1.served_by == c2.served_by == "b"
    assert bad.calls == 1
    assert [a.model for a in c2.attempts] == ["openai/b"]
    assert cores["a"].limiter.state()["in_flight"] == 0  # the unused permit went back


async def test_an_open_circuit_without_a_fallback_is_a_clear_error():
    bad = Backend(fail=lambda: ProviderError(500))
    a = pair(bad, None)["a"]
    await a.complete(MSG)
    c = await a.complete(MSG)
    assert not c.ok and c.error_code == "circuit_open" and c.attempts == []
    assert "circuit open" in c.error and "no fallback" in c.error and bad.calls == 1
    assert a.stats()["failures"] == 2


async def test_a_failed_fallback_behind_an_open_circuit_reports_the_fallback_error():
    bad = Backend(fail=lambda: ProviderError(500))
    worse = Backend(fail=lambda: ProviderError(400))
    cores = pair(bad, worse, b_kw={"circuit_failures": 100})
    await cores["a"].complete(MSG)  # opens a's circuit
    c = await cores["a"].complete(MSG)
    assert not c.ok and c.error_code == "fallback_failed"
    assert "circuit open" in c.error and "b: b failed after 1 attempt" in c.error


async def test_a_hung_attempt_ends_at_the_call_deadline():
    hung = Backend(delay_s=120.0)
    a = pair(hung, None)["a"]
    t = time.monotonic()
    c = await asyncio.wait_for(a.complete(MSG, timeout_s=0.5), 10)
    assert not c.ok and c.attempts[0].outcome == "timeout" and "deadline" in c.error
    assert time.monotonic() - t < 2.0
    assert a.breaker.state == "closed"  # the caller's short deadline is not the worker's fault
