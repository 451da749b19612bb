"""`benchmarks/shift_scenarios.py` and `shift_report.py`: the world after each shift, as the
offline end-state check judges it, and the recovered share recomputed from the means."""

from __future__ import annotations

import importlib

import pytest

from scripts import ROOT


def _module(name, monkeypatch):
    """A benchmark module imported by name, as `shift.py` imports it (its dataclasses need a
    module in sys.modules)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module(name)


def test_after_world_prices_degrades_or_keeps_the_unseen_questions(tmp_path, monkeypatch):
    from ray_conductor.data.pools import load_pool, load_table

    sc = _module("shift_scenarios", monkeypatch)
    table, _ = load_table("demo", cache_dir=None)
    data = load_pool("demo")
    best = "gemini-1.5-pro-002"
    qids = {q.query_id for q in data.queries("test")[:40]}
    w = sc.World(data, table, 30.0, best, tmp_path, part_b=[])
    before = load_pool(f"parquet:{sc.derive(table, tmp_path / 'same.parquet', qids)}")

    def cells(pool, model):
        return {q: pool.record(q, model) for q in sorted(qids)}

    got = {k: load_pool(f"parquet:{sc.after_world(k, w, qids, tmp_path / f'{k}.parquet')}")
           for k in "bcd"}
    assert sc.after_world("a", w, qids, tmp_path / "a.parquet") is None
    for k, pool in got.items():
        assert {q.query_id for q in pool.queries("all")} == qids, k
    old, b, c = cells(before, best), cells(got["b"], best), cells(got["c"], best)
    weak = cells(before, sc.WEAK)
    assert all(b[q].cost == pytest.approx(old[q].cost * sc.PRICE_RISE) for q in qids)
    assert all(b[q].answer == old[q].answer for q in qids)  # a price changes no answer
    assert all((c[q].answer, c[q].correct) == (weak[q].answer, weak[q].correct) for q in qids)
    assert any(old[q].correct != c[q].correct for q in qids)  # the degradation shows
    other = "gpt-4o"
    assert cells(got["c"], other) == cells(before, other)
    assert cells(got["d"], best) == old


def test_aggregate_recomputes_the_unseen_recovered_share_from_the_means(monkeypatch):
    rep = _module("shift_report", monkeypatch)

    def run(online, frozen, refit):
        return {"summary": {"online_after": 0.6, "frozen_after": 0.5, "refit_after": 0.7,
                            "frozen_after_offline": 0.5, "online_final_unseen": online,
                            "frozen_unseen": frozen, "refit_unseen": refit,
                            "recovered_vs_refit_unseen": (online - frozen) / (refit - frozen)
                            if refit > frozen else None}}

    out = rep.aggregate([run(0.60, 0.50, 0.70), run(0.64, 0.50, 0.60)])
    assert out["online_final_unseen"] == pytest.approx(0.62)
    # the ratio of the means (0.12 / 0.15), not the mean of the per-seed ratios (0.5, 1.4)
    assert out["recovered_vs_refit_unseen"] == pytest.approx(0.8)
    assert out["recovered_vs_refit_unseen_sd"] > 0.5  # the per-seed spread stays visible
    flat = rep.aggregate([run(0.6, 0.5, 0.5)])
    assert flat["recovered_vs_refit_unseen"] is None  # no refit gain: nothing to recover


def test_the_live_window_is_weighted_by_who_served_it(monkeypatch):
    """`served_mix` counts the window's questions per online version (recorded counts, or an
    older report's version list split evenly); `aggregate` recomputes the live and
    after-the-shift shares from the means, as it does the end state's."""
    rep = _module("shift_report", monkeypatch)
    ticks = [{"phase": 0, "start": 0, "online_versions": ["v1"], "online": {"n": 50}},
             {"phase": 1, "start": 0, "online_versions": ["v1"], "online": {"n": 50},
              "online_version_counts": {"v1": 50}},
             {"phase": 1, "start": 50, "online_versions": ["v1", "v2"], "online": {"n": 50},
              "online_version_counts": {"v1": 10, "v2": 40}},
             {"phase": 1, "start": 100, "online_versions": ["v2", "v3"], "online": {"n": 50}}]
    window = rep.window_ticks(ticks, 1, 150, 100)
    assert [t["start"] for t in window] == [50, 100]
    assert rep.served_mix(window) == {"v1": 10, "v2": 65, "v3": 25}
    assert rep.served_mix(rep.window_ticks(ticks, 1, 150, 150)) == {"v1": 60, "v2": 65,
                                                                     "v3": 25}

    def run(live, shift):
        return {"summary": {"online_after": 0.6, "frozen_after": 0.5, "refit_after": 0.7,
                            "frozen_after_offline": 0.5, "online_final_unseen": 0.7,
                            "frozen_unseen": 0.5, "refit_unseen": 0.7,
                            "online_live_unseen": live, "online_shift_unseen": shift}}

    out = rep.aggregate([run(0.68, 0.6), run(0.66, 0.56)])
    assert out["recovered_vs_refit_live_unseen"] == pytest.approx(0.85)
    assert out["recovered_vs_refit_shift_unseen"] == pytest.approx(0.4)
