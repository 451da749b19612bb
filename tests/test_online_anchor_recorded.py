"""Recorded anchors (`training.anchor.recorded`): an anchor pool's recorded answers are free
cells for the workers' first answer fingerprints, re-priced on a price change (nothing asked)
and asked again (within the budget) after a worker's model changes."""

from __future__ import annotations

import pytest

from ray_conductor.config import default_data_dir
from ray_conductor.data.pools import load_pool
from ray_conductor.online.anchor import ANCHOR, anchor_rows, combined
from ray_conductor.online.reroll import AnswerCache, Reroller
from ray_conductor.workers.base import Completion, WorkerInfo


@pytest.fixture(scope="module")
def demo():
    return load_pool("demo", default_data_dir())


class PricedReplay:
    """The demo recording served at chosen prices: a call costs its recorded tokens at the
    pool's current prices; calls are counted."""

    def __init__(self, data, prices):
        self.data, self.prices, self.calls = data, dict(prices), 0

    def workers(self):
        return [WorkerInfo(w, "", p[0], p[1]) for w, p in self.prices.items()]

    async def complete(self, worker, messages, **params):
        self.calls += 1
        r = self.data.record(params["metadata"]["query_id"], worker)
        p_in, p_out = self.prices[worker]
        return Completion(worker=worker, text=r.response or "", input_tokens=r.input_tokens,
                          output_tokens=r.output_tokens,
                          cost=(r.input_tokens * p_in + r.output_tokens * p_out) / 1e6)


def recorded_prices(data, names):
    infos = {i.name: i for i in data.worker_infos()}
    return {w: (infos[w].input_price_per_mtok, infos[w].output_price_per_mtok) for w in names}


NAMES = ["gpt-4o", "gemini-1.5-flash-002", "Meta-Llama-3_1-8B-Instruct"]


def test_anchor_rows_carry_the_recording_as_cells_only_when_asked(demo):
    plain = anchor_rows(demo, "train", 20, 0.3)
    rows = anchor_rows(demo, "train", 20, 0.3, recorded=True)
    assert [r.key for r in rows] == [r.key for r in plain] and not any(r.served for r in plain)
    for r in rows:
        assert r.model == r.source == ANCHOR and r.time == 0.0
        assert {c.worker for c in r.served} == set(demo.models)
        for c in r.served:
            rec = demo.record(r.query_id, c.worker)
            assert c.ok == (rec.response is not None)
            assert (c.input_tokens, c.output_tokens) == (rec.input_tokens, rec.output_tokens)


def test_recorded_anchors_are_free_repriced_on_a_price_rise_and_asked_after_a_model_change(
        tmp_path, demo):
    rows = anchor_rows(demo, "train", 30, 0.3, recorded=True)
    verifier = combined(None, demo)
    prices = recorded_prices(demo, NAMES)
    pool = PricedReplay(demo, prices)
    prints = {w: f"fp-{w}" for w in NAMES}
    cache = AnswerCache(tmp_path / "answers.jsonl")
    wanted = [(r, w) for r in rows for w in NAMES]

    rr = Reroller(pool, prints, cache, verifier)
    have = rr.served(rows)
    got, st = rr.cells(wanted, budget=0, have=have)
    assert pool.calls == 0 and st.out_of_budget == 0  # every cell came from the recording
    for r in rows:
        for w in NAMES:
            a, rec = have[r.key][w], demo.record(r.query_id, w)
            assert a.responded == (rec.response is not None)
            if a.responded:
                assert a.correct == demo.judge(r.query_id, rec.response)
                assert a.cost == pytest.approx(rec.cost, rel=1e-6, abs=1e-9)

    # the provider raises gpt-4o's price tenfold: re-priced from the tokens, nothing asked
    pool.prices["gpt-4o"] = tuple(10 * p for p in prices["gpt-4o"])
    rr = Reroller(pool, prints, AnswerCache(tmp_path / "answers.jsonl"), verifier)
    dear = rr.served(rows)
    assert pool.calls == 0
    r0 = next(r for r in rows if dear[r.key]["gpt-4o"].responded)
    assert dear[r0.key]["gpt-4o"].cost == pytest.approx(10 * have[r0.key]["gpt-4o"].cost)
    assert dear[r0.key]["gemini-1.5-flash-002"].cost == have[r0.key]["gemini-1.5-flash-002"].cost

    # gpt-4o's model changes (a new answer fingerprint): its recorded answers are another
    # config's, so they are asked again, within the budget; the others stay free
    changed = {**prints, "gpt-4o": "fp-gpt-4o-new"}
    rr = Reroller(pool, changed, AnswerCache(tmp_path / "answers.jsonl"), verifier)
    have = rr.served(rows)
    assert all("gpt-4o" not in have.get(r.key, {}) for r in rows)
    assert all(len(have[r.key]) == len(NAMES) - 1 for r in rows)
    got, st = rr.cells(wanted, budget=10, have=have)
    assert st.calls == pool.calls == 10 and st.out_of_budget == len(rows) - 10


# -- a replay worker's answer fingerprint is its recording, not the pool's file name -------------


def test_a_replay_workers_fingerprint_follows_its_own_recording(tmp_path, demo):
    import pyarrow.parquet as pq

    from ray_conductor.data.pools import load_table
    from ray_conductor.online.cells import answer_prints
    from ray_conductor.workers.config import WorkerPoolConfig, replay_workers

    table = load_table("demo", default_data_dir())[0]
    models = table.column("model").to_pylist()
    keep = [m != "gpt-4o" for m in models]
    pq.write_table(table, tmp_path / "a.parquet")
    pq.write_table(table.filter(keep), tmp_path / "minus.parquet")  # gpt-4o left out
    resp = table.column("response").to_pylist()
    changed = [("degraded" if m == "gpt-4o" and r else r) for m, r in zip(models, resp)]
    pq.write_table(table.set_column(table.schema.get_field_index("response"), "response",
                                    pa_array(changed)), tmp_path / "degraded.parquet")

    class App:
        def __init__(self, spec):
            self.cfg = WorkerPoolConfig(workers=replay_workers(spec, NAMES))

        def settings(self):
            from omegaconf import OmegaConf
            return {"pool_config": OmegaConf.structured(self.cfg)}

        def config(self):
            class C:
                data_dir = None
            return C()

    full, minus, degraded = (answer_prints(App(f"parquet:{tmp_path / f}"), {})
                             for f in ("a.parquet", "minus.parquet", "degraded.parquet"))
    for w in NAMES[1:]:  # the same recording of them in all three files
        assert full[w] == minus[w] == degraded[w]
    assert full["gpt-4o"] != degraded["gpt-4o"]  # its answers changed
    assert "gpt-4o" in minus and minus["gpt-4o"] != full["gpt-4o"]  # no recording of it


def pa_array(values):
    import pyarrow as pa
    return pa.array(values, type=pa.string())
