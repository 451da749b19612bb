"""The rate limiter: sliding-window arithmetic on a fake clock, then the async queue in real
(short) time: limits under concurrent load, priority order, deadlines, reconciliation."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_conductor.errors import RateLimitTimeout, WorkerCallError
from ray_conductor.workers.ratelimit import Limits, RateLimiter, SlidingWindow, max_in_window


def test_max_in_window_counts_half_open_windows():
    assert max_in_window([], 1.0) == 0
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.2], 1.0) == 4  # [0.5, 1.5)
    assert max_in_window([3.0, 0.0, 1.0, 2.0], 1.0) == 1  # boundaries belong to the next one


# -- SlidingWindow, fake clock ------------------------------------------------------------------
def test_window_waits_until_the_oldest_admission_expires():
    w = SlidingWindow(limit=3, window_s=10)
    for t in (0, 1, 2):
        assert w.wait_s(t, 1) == 0
        w.add(t, 1)
    assert w.wait_s(2.5, 1) == pytest.approx(7.5)  # the admission at 0 leaves at 10
    assert w.wait_s(10.0, 1) == 0  # ... and at 10 it has left
    assert w.used(10.0) == 2


def test_token_window_frees_enough_for_the_new_amount():
    w = SlidingWindow(limit=100, window_s=10)
    w.add(0, 60)
    w.add(1, 30)
    assert w.wait_s(2, 10) == 0  # 90 + 10 fits exactly
    assert w.wait_s(2, 20) == pytest.approx(8)  # needs the 60 from t=0 gone: at 10
    assert w.wait_s(2, 75) == pytest.approx(9)  # needs both gone: at 11
    assert w.wait_s(2, 101) == math.inf  # never fits


def test_adjust_reconciles_only_counted_entries():
    w = SlidingWindow(limit=100, window_s=10)
    e = w.add(0, 60)
    w.adjust(e, 10)
    assert w.used(1) == 10
    w.add(5, 50)
    w.used(11)  # e expires
    w.adjust(e, 99)  # too late: no effect
    assert w.used(11) == 50


def test_per_minute_limits_scale_to_the_window():
    lim = Limits.per_minute(rpm=600, tpm=6000, window_s=2, concurrency=3)
    assert (lim.requests, lim.tokens, lim.window_s, lim.concurrency) == (20, 200, 2, 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.integers(1, 40)), min_size=1, max_size=60),
       st.integers(1, 5))
def test_no_window_ever_holds_more_than_the_limit(steps, limit):
    """Whatever the arrival pattern, admitting only on wait_s == 0 keeps every window of
    length window_s within the limit, for requests and tokens alike."""
    req, tok = SlidingWindow(limit, 2.0), SlidingWindow(50, 2.0)
    now, admitted = 0.0, []
    for dt, amount in steps:
        now += dt
        if req.wait_s(now, 1) == 0 and tok.wait_s(now, amount) == 0:
            req.add(now, 1)
            tok.add(now, amount)
            admitted.append((now, amount))
    assert max_in_window([t for t, _ in admitted], 2.0) <= limit
    for t0, _ in admitted:
        assert sum(a for t, a in admitted if t0 <= t < t0 + 2.0) <= 50


# -- RateLimiter, real time with short windows ----------------------------------------------------
async def test_concurrent_load_never_exceeds_the_window_limit():
    lim = RateLimiter(Limits(requests=5, window_s=0.25))
    admitted: list[float] = []

    async def call() -> None:
        p = await lim.acquire()
        # the limiter's own admission time: when this task resumes afterwards depends on the
        # machine's load, which is not what the window limits
        admitted.append(p.admitted_at)
        lim.release(p)

    t0 = time.monotonic()
    await asyncio.gather(*(call() for _ in range(23)))
    assert len(admitted) == 23
    assert max_in_window(admitted, 0.25) == 5
    # 23 calls at 5 per window need 4 full windows of waiting, and not much more
    assert 4 * 0.25 <= time.monotonic() - t0 < 4 * 0.25 + 0.5


async def test_concurrency_cap_holds():
    lim = RateLimiter(Limits(concurrency=3))
    inside, peak = 0, 0

    async def call() -> None:
        nonlocal inside, peak
        p = await lim.acquire()
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0.01)
        inside -= 1
        lim.release(p)

    await asyncio.gather(*(call() for _ in range(12)))
    assert peak == 3


async def test_serve_is_admitted_before_queued_rollouts_fifo_within_a_class():
    lim = RateLimiter(Limits(concurrency=1))
    blocker = await lim.acquire(priority="rollout")
    order: list[str] = []

    async def call(name: str, priority: str) -> None:
        p = await lim.acquire(priority=priority)
        order.append(name)
        await asyncio.sleep(0)
        lim.release(p)

    tasks = []
    for name, prio in [("r1", "rollout"), ("r2", "rollout"), ("s1", "serve"), ("r3", "rollout"),
                       ("s2", "serve")]:
        tasks.append(asyncio.create_task(call(name, prio)))
        await asyncio.sleep(0)  # queue in this order
    assert lim.state()["queued_serve"] == 2 and lim.state()["queued_rollout"] == 3
    lim.release(blocker)
    await asyncio.gather(*tasks)
    assert order == ["s1", "s2", "r1", "r2", "r3"]


async def test_rollouts_are_paced_and_leave_serving_the_last_slot():
    lim = RateLimiter(Limits(requests=4, window_s=0.4))  # pace: one rollout per 0.1 s
    times: list[float] = []

    async def rollout() -> None:
        p = await lim.acquire(priority="rollout")
        times.append(time.monotonic())
        lim.release(p)

    tasks = [asyncio.create_task(rollout()) for _ in range(6)]
    await asyncio.sleep(0.35)  # rollouts at 0, 0.1, 0.2; the fourth slot is serving's
    assert len(times) == 3
    p = await lim.acquire(priority="serve", timeout_s=0.02)
    assert p.queue_wait_s < 0.02
    await asyncio.gather(*tasks)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.1 - 0.005
    assert max_in_window(times, 0.4) == 3


async def test_rollouts_leave_serving_the_last_concurrency_slot():
    lim = RateLimiter(Limits(concurrency=2))
    held = await lim.acquire(priority="rollout")
    second = asyncio.create_task(lim.acquire(priority="rollout"))
    await asyncio.sleep(0.01)
    assert not second.done()
    p = await lim.acquire(priority="serve", timeout_s=0.01)
    lim.release(p)
    lim.release(held)
    lim.release(await second)


async def test_deadline_raises_rate_limit_timeout_and_leaves_the_queue():
    lim = RateLimiter(Limits(requests=1, window_s=30))
    lim.release(await lim.acquire())
    t0 = time.monotonic()
    with pytest.raises(RateLimitTimeout, match="waited 0.10s in the serve queue"):
        await lim.acquire(timeout_s=0.1)
    assert 0.1 <= time.monotonic() - t0 < 0.3
    assert lim.state()["queued_serve"] == 0


async def test_a_timed_out_serve_call_does_not_block_the_rollouts_behind_it():
    lim = RateLimiter(Limits(requests=1, window_s=0.3))
    lim.release(await lim.acquire())
    rollout = asyncio.create_task(lim.acquire(priority="rollout", timeout_s=2))
    with pytest.raises(RateLimitTimeout):
        await lim.acquire(priority="serve", timeout_s=0.05)
    p = await rollout  # admitted when the window frees, ~0.3 s in
    assert 0.2 < p.queue_wait_s < 0.6


async def test_reconcile_frees_tokens_the_estimate_overstated():
    lim = RateLimiter(Limits(tokens=100, window_s=30))
    lim.release(await lim.acquire(tokens=80), actual_tokens=20)
    p = await lim.acquire(tokens=70, timeout_s=0.05)  # 20 + 70 fits only after reconciling
    assert p.queue_wait_s < 0.05
    assert lim.state()["tokens_in_window"] == 90


async def test_a_call_larger_than_the_token_budget_fails_at_once():
    lim = RateLimiter(Limits(tokens=100, window_s=30))
    with pytest.raises(WorkerCallError, match="can never fit") as e:
        await lim.acquire(tokens=101)
    assert e.value.code == "over_capacity"


async def test_cancelled_waiters_leave_no_trace():
    lim = RateLimiter(Limits(concurrency=1))
    held = await lim.acquire()
    waiter = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    lim.release(held)
    p = await lim.acquire(timeout_s=0.05)  # the slot is free: nobody leaked it
    assert lim.state()["in_flight"] == 1 and p.queue_wait_s < 0.05
