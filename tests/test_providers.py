"""The `replay/` litellm provider, driven through `WorkerProxyCore` and litellm: the query id
reaches the pool through litellm's metadata, recorded usage and cost come back, holes are not
retried; then the shipped demo pool end to end."""

from __future__ import annotations

from typing import Any

import pytest

from ray_conductor.data.pools import replay_pool
from ray_conductor.workers import providers
from ray_conductor.workers.base import Completion
from ray_conductor.workers.config import replay_workers
from ray_conductor.workers.proxy import WorkerProxyCore

MSG = [{"role": "user", "content": "Original question:\nWhat is 2+2?"}]


class FakeReplayPool:
    """What `ReplayPool.complete` looks like from the provider's side."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def complete(self, worker: str, messages: list, **params: Any) -> Completion:
        meta = params.get("metadata") or {}
        self.calls.append((worker, meta))
        if meta.get("query_id") == "hole":
            return Completion(worker=worker, error="no recorded answer",
                              error_code="missing_answer")
        return Completion(worker=worker, text=f"{worker} says 4", input_tokens=11, output_tokens=2,
                          cost=0.0042)


@pytest.fixture
def fake_pool():
    pool = FakeReplayPool()
    providers.register(pool=pool)
    yield pool
    providers.register(loader=replay_pool)


async def test_replay_answers_with_the_recorded_row(fake_pool):
    (cfg,) = replay_workers(None, ["gpt-4o"])
    c = await WorkerProxyCore(cfg).complete(MSG, temperature=0,
                                            metadata={"query_id": "q7", "question": "Q"})
    assert c.ok and c.text == "gpt-4o says 4"
    assert (c.input_tokens, c.output_tokens, c.cost) == (11, 2, 0.0042)
    assert fake_pool.calls == [("gpt-4o", {"query_id": "q7", "question": "Q"})]


async def test_a_recorded_hole_fails_without_retries(fake_pool):
    (cfg,) = replay_workers(None, ["gpt-4o"], retries=3)
    c = await WorkerProxyCore(cfg).complete(MSG, metadata={"query_id": "hole"})
    assert not c.ok and "no recorded answer" in c.error and "missing_answer" in c.error
    assert len(fake_pool.calls) == 1 and c.attempts[0].status == 404


async def test_the_pool_spec_travels_as_api_base_or_pool_default():
    providers._POOLS["fake:spec"] = pool = FakeReplayPool()
    providers.register(loader=replay_pool)
    try:
        (cfg,) = replay_workers("fake:spec", ["m1"])
        assert (await WorkerProxyCore(cfg).complete(MSG, metadata={"query_id": "a"})).ok
        (bare,) = replay_workers(None, ["m2"])
        core = WorkerProxyCore(bare, default_api_base="fake:spec")
        assert (await core.complete(MSG, metadata={"query_id": "b"})).ok
        c = await WorkerProxyCore(bare).complete(MSG, metadata={"query_id": "c"})
        assert not c.ok and "without a pool" in c.error
        assert [w for w, _ in pool.calls] == ["m1", "m2"]
    finally:
        del providers._POOLS["fake:spec"]


async def test_the_demo_pool_end_to_end():
    from ray_conductor.data.pools import load_pool

    data = load_pool("demo")
    model = data.models[0]
    recs = [(q, data.record(q.query_id, model)) for q in data.queries()[:50]]
    q, rec = next((q, r) for q, r in recs if r is not None and r.response)
    providers.register(loader=replay_pool)
    (cfg,) = replay_workers("demo", [model])
    c = await WorkerProxyCore(cfg).complete(MSG, metadata={"query_id": q.query_id})
    assert c.ok and c.text == rec.response and c.cost == pytest.approx(rec.cost)
    assert (c.input_tokens, c.output_tokens) == (rec.input_tokens, rec.output_tokens)


@pytest.mark.slow
async def test_a_real_local_llm_answers_through_litellm():
    """SmolLM2-135M on CPU behind the OpenAI-compatible server: a live, non-replay worker."""
    from ray_conductor.localllm import LocalLLM

    with LocalLLM() as llm:
        core = WorkerProxyCore(llm.worker(timeout_s=120, retries=0))
        c = await core.complete([{"role": "user", "content": "What is the capital of France?"}],
                                temperature=0, max_tokens=12)
    assert c.ok, c.error
    assert "Paris" in c.text and c.output_tokens > 0 and c.input_tokens > 5  # greedy: stable
    assert c.cost == 0.0 and core.stats()["calls"] == 1
