"""Issue 27 on the live path: the online loop's cells asked through litellm (a real
`WorkerProxyCore` per worker, no Ray) of the loopback fault server standing in for a
provider. What the replay tests show for recorded answers must hold for a provider's: the
budget caps the requests that reach it, a cell's cost is its reported tokens at the
configured prices, a price rise re-prices the cached answers without one request, a 500 is
left for the next round and a 400 is settled as no answer."""

from __future__ import annotations

import pytest

from ray_conductor.online.reroll import AnswerCache, Reroller
from ray_conductor.online.rewards import LABEL, Judge, LoggedRow
from ray_conductor.workflow.model import ROUTER_SUBTASK
from ray_conductor.workers.base import WorkerInfo
from ray_conductor.workers.config import WorkerConfig, answer_fingerprint
from ray_conductor.workers.proxy import WorkerProxyCore

PRICES = {"right": (1.0, 2.0), "wrong": (3.0, 4.0)}  # $ per 1M input / output tokens


def worker(name: str, url: str, factor: float = 1.0) -> WorkerConfig:
    p_in, p_out = PRICES[name]
    return WorkerConfig(name=name, model=f"openai/{name}", api_base=url, retries=0,
                        timeout_s=10.0, circuit_failures=1000,
                        input_price_per_mtok=p_in * factor, output_price_per_mtok=p_out * factor)


class LivePool:
    """The `WorkerPool` protocol over one `WorkerProxyCore` per worker, calling litellm."""

    def __init__(self, cfgs: list[WorkerConfig]):
        self.cfgs = cfgs
        self.cores = {c.name: WorkerProxyCore(c, seed=0) for c in cfgs}

    def workers(self):
        return [WorkerInfo(c.name, "", c.input_price_per_mtok, c.output_price_per_mtok)
                for c in self.cfgs]

    async def complete(self, name, messages, **params):
        return await self.cores[name].complete(messages, **params)


def row(i: int) -> LoggedRow:
    return LoggedRow(f"r{i}", 1000.0 + i, "online", "v1", f"Question {i}: pick (A) or (B).",
                     None, f"k{i}", "A", 0.0, 1.0, LABEL, Judge(LABEL, "mc", reference="A"), ())


def rerolled(cfgs, cache_path):
    prints = {c.name: answer_fingerprint(c) for c in cfgs}
    return Reroller(LivePool(cfgs), prints, AnswerCache(cache_path), concurrency=4)


def test_live_cells_keep_the_budget_reprice_a_price_rise_and_retry_only_transient_failures(
        fault_server, tmp_path):
    fault_server.configure("right", reply="The answer is (A)", output_tokens=20)
    fault_server.configure("wrong", reply="The answer is (B)", output_tokens=30)
    cache = tmp_path / "answers.jsonl"
    rows = [row(i) for i in range(4)]
    wanted = [(r, w) for r in rows for w in PRICES]
    cfgs = [worker(w, fault_server.url) for w in PRICES]

    # the budget caps what reaches the provider; the rest waits for the next round
    got, st = rerolled(cfgs, cache).cells(wanted, budget=5)
    assert len(fault_server.requests()) == st.calls == 5 and st.out_of_budget == 3
    got2, st2 = rerolled(cfgs, cache).cells(wanted, budget=5)
    assert st2.calls == 3 and st2.cached == 5 and len(fault_server.requests()) == 8
    cells = {k: {**got.get(k, {}), **got2.get(k, {})} for k in {r.key for r in rows}}
    sent = {r["model"] for r in fault_server.requests()}
    assert sent == {"right", "wrong"}
    for k, by in cells.items():
        assert by["right"].correct and by["right"].answer == "A", k
        assert not by["wrong"].correct and by["wrong"].answer == "B", k
        for w, a in by.items():  # the provider's reported tokens at the configured prices
            assert a.output_tokens == (20 if w == "right" else 30) and a.input_tokens > 0
            p_in, p_out = PRICES[w]
            assert a.cost == pytest.approx((a.input_tokens * p_in + a.output_tokens * p_out)
                                           / 1e6)

    # the provider raises one price tenfold: every answer is re-priced, nothing is asked
    pricier = [worker("right", fault_server.url, 10.0), worker("wrong", fault_server.url)]
    assert [answer_fingerprint(c) for c in pricier] == [answer_fingerprint(c) for c in cfgs]
    again, st3 = rerolled(pricier, cache).cells(wanted, budget=100)
    assert len(fault_server.requests()) == 8 and st3.calls == 0
    assert st3.repriced == 4 and st3.cached == 4 and st3.price_change_reasks == 0
    for k, by in again.items():
        assert by["right"].cost == pytest.approx(10 * cells[k]["right"].cost)
        assert by["wrong"].cost == pytest.approx(cells[k]["wrong"].cost)

    # a 500 says nothing about the worker: left out, asked again next round; a 400 would
    # fail again: settled as no answer and never asked again
    fault_server.configure("wrong", reply="The answer is (B)", output_tokens=30,
                           script=["500"])
    fault_server.configure("right", reply="The answer is (A)", output_tokens=20,
                           script=["400"])
    new = [(row(9), w) for w in PRICES]
    got4, st4 = rerolled(pricier, cache).cells(new, budget=10)
    assert st4.calls == 2 and st4.failed == 2
    assert "wrong" not in got4.get("k9", {})  # transient: no cell this round
    settled = got4["k9"]["right"]
    assert not settled.responded and not settled.correct and settled.answer is None
    got5, st5 = rerolled(pricier, cache).cells(new, budget=10)
    assert st5.calls == 1 and st5.cached == 1  # only the transient one is asked again
    assert got5["k9"]["wrong"].responded and got5["k9"]["wrong"].answer == "B"
    assert [r["model"] for r in fault_server.requests()[8:]].count("right") == 1


def test_a_provider_that_swaps_its_model_under_the_same_config_is_found_and_re_asked(
        fault_server, tmp_path):
    """`reroll.drift_z` on the live path: `right` answers (A) and is estimated right 90% of
    the time; then the provider starts answering (B) with nothing in the worker's config
    changed (same model name, endpoint, prices: the same answer fingerprint). The round whose
    served traces show it logs `drifted`, and the cells of `right` it then buys are asked of
    the provider again, for questions it had answered before the swap too: their cached
    answers (A) are void, the new ones (B) are judged wrong."""
    import json

    import numpy as np
    import pandas as pd
    from online_stubs import App
    from test_online_loop import kinds, setup

    fault_server.configure("right", reply="The answer is (A)", output_tokens=20)
    fault_server.configure("wrong", reply="The answer is (B)", output_tokens=30)
    cfgs = [worker(w, fault_server.url) for w in PRICES]
    loop, _, log, trainer, reg = setup(tmp_path, gain=0.0)
    app = App(loop.app.ref)
    pool = LivePool(cfgs)
    app.pool = pool
    app.rollout_pool = lambda: (pool, {c.name: answer_fingerprint(c) for c in cfgs})
    loop.app = app
    loop.cfg.reroll.calls_per_row, loop.cfg.reroll.concurrency = 1.0, 4

    def estimates(policy_dir, data):
        names = [w.name for w in data.workers]
        p = np.array([[0.9 if w == "right" else 0.1 for w in names]] * len(data.rows))
        return p, np.ones_like(p), np.full(len(names), 0.001), names

    trainer.estimates = estimates

    def served(n, start, said):
        for i in range(start, start + n):
            log.t += 1.0
            step = {"index": 0, "worker": "right", "subtask": ROUTER_SUBTASK, "access": [],
                    "program": False, "skipped": False, "text": f"The answer is ({said})",
                    "answer": said, "cost": 0.0001, "input_tokens": 50, "output_tokens": 20,
                    "error": None}
            log.rows.append({
                "request_id": f"r{len(log.rows)}", "status": 200, "model": "online",
                "policy_version": "v1", "question": f"Question {i}: pick (A) or (B).",
                "query_id": None, "answer": f"The answer is ({said})", "cost": 0.0001,
                "reward": None, "label": "A", "trace": json.dumps({"steps": [step]}),
                "time": pd.Timestamp(log.t, unit="s", tz="UTC")})

    served(40, 0, "A")
    assert "drifted" not in kinds(loop.round())
    before = len(fault_server.requests("right"))
    fault_server.configure("right", reply="The answer is (B)", output_tokens=20)
    served(40, 40, "B")
    made = loop.round()
    assert kinds(made)[0] == "drifted" and made[0]["workers"][0]["worker"] == "right"
    asked = fault_server.requests("right")[before:]
    old = [r for r in asked if any(f"Question {i}:" in r["last_message"] for i in range(40))]
    assert old, "no question answered before the swap was asked again"
    epoch = loop.cells().rr.fingerprints["right"]
    assert epoch.endswith("#drift1")
    before_swap = [r for r in loop._rows([]) if int(r.question.split()[1][:-1]) < 40]
    fresh = [loop.cache.get(AnswerCache.key(r, "right", epoch)) for r in before_swap]
    fresh = [a for a in fresh if a is not None]
    assert fresh and all(a.answer == "B" and not a.correct for a in fresh)
