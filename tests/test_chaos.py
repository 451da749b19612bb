"""Smoke run of `benchmarks/chaos.py`: a few requests through the proxies while the provider
throws 429s, 5xx and hangs and the proxy process is SIGKILLed mid-run. Nothing may be lost:
every request ends in an answer or in a failure that says what went wrong."""

import asyncio
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.ray
@pytest.mark.slow
def test_chaos_smoke_loses_nothing_and_the_killed_proxy_comes_back(ray_cluster):
    import chaos

    a = chaos.parser().parse_args(["--requests", "24", "--concurrency", "6", "--workers", "2",
                                   "--attempt-timeout-s", "1.5", "--deadline-s", "40"])
    report = asyncio.run(chaos.run_chaos(a))
    s = report["summary"]
    assert s["requests"] == 24 and s["lost"] == 0, report
    assert s["succeeded"] + s["failed_clear"] == 24
    assert s["recovered_s"] is not None and s["recovered_s"] < 120
    p = report["provider"]
    assert p["requests_never_reaching_it"] == 0 and p["calls"] >= 24
    assert p["outcomes"].get("429", 0) + p["outcomes"].get("500", 0) > 0  # faults were served
    # only calls in flight at the kill are re-run, so at most `concurrency` answers repeat
    assert 0 <= s["duplicated_provider_calls"] <= a.concurrency
    from ray_conductor.graph import running_proxies

    assert running_proxies(f"bench_chaos_{os.getpid()}") == {}  # stopped at the end


def test_duplicates_are_provider_answers_beyond_the_first_per_request():
    import chaos

    log = [{"last_message": "[chaos-00001] q", "outcome": "429"},
           {"last_message": "[chaos-00001] q", "outcome": "ok"},
           {"last_message": "[chaos-00002] q", "outcome": "ok"},
           {"last_message": "[chaos-00002] q", "outcome": "ok"},  # re-run after the kill
           {"last_message": "[chaos-00003] q", "outcome": "hang"},
           {"last_message": "[chaos-00003] q", "outcome": "ok"},
           {"last_message": "warm up", "outcome": "ok"}]
    answered, calls, outcomes = chaos.provider_counts(log)
    assert sum(max(0, n - 1) for n in answered.values()) == 1
    assert calls == {"chaos-00001": 2, "chaos-00002": 2, "chaos-00003": 2}
    assert outcomes == {"ok": 5, "429": 1, "hang": 1}  # every provider call, ids or not
