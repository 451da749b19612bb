"""Retry policy, pure: classification, Retry-After, backoff bounds, circuit breaker, scrubbing."""

from __future__ import annotations

import asyncio
import email.utils
import random

import pytest

from ray_conductor.workers.retry import (
    REDACTED, CircuitBreaker, Fault, backoff_s, classify, parse_retry_after, retry_delay, scrub)


class FakeResponse:
    def __init__(self, headers: dict[str, str]):
        self.headers = headers


class StatusError(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None = None):
        super().__init__(f"status {status}")
        self.status_code = status
        self.response = FakeResponse(headers or {})


class APIConnectionError(Exception):  # named like openai's / litellm's
    status_code = 500


def test_parse_retry_after_seconds_and_http_dates():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30)


@pytest.mark.parametrize("exc, outcome, retryable", [
    (StatusError(429, {"Retry-After": "3"}), "rate_limited", True),
    (StatusError(500), "server_error", True),
    (StatusError(503), "server_error", True),
    (StatusError(408), "timeout", True),
    (asyncio.TimeoutError(), "timeout", True),
    (ConnectionRefusedError(), "connection", True),
    (APIConnectionError("Connection error."), "connection", True),
    (StatusError(400), "error", False),
    (StatusError(401), "error", False),
    (ValueError("a bug"), "error", False),
])
def test_classify(exc, outcome, retryable):
    f = classify(exc)
    assert (f.outcome, f.retryable) == (outcome, retryable)


def test_classify_reads_retry_after_from_the_response_headers():
    f = classify(StatusError(429, {"Retry-After": "3"}))
    assert (f.status, f.retry_after_s) == (429, 3.0)
    assert classify(StatusError(429, {"retry-after-ms": "250"})).retry_after_s == 0.25


def test_backoff_doubles_with_equal_jitter_and_is_capped():
    rng = random.Random(0)
    for attempt, full in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (6, 10.0)]:
        for _ in range(50):
            d = backoff_s(attempt, 0.5, 10.0, rng)
            assert full / 2 <= d <= full
    spread = {round(backoff_s(3, 0.5, 10.0, rng), 3) for _ in range(20)}
    assert len(spread) > 10  # jittered, not lockstep


def test_retry_after_beats_a_shorter_backoff_and_not_a_longer_one():
    rng = random.Random(0)
    assert retry_delay(0, Fault("rate_limited", 429, 5.0), 0.1, 1.0, rng) == 5.0
    d = retry_delay(4, Fault("rate_limited", 429, 0.01), 0.5, 2.0, rng)
    assert 1.0 <= d <= 2.0


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_circuit_breaker_opens_cools_down_and_probes():
    clock = Clock()
    b = CircuitBreaker(failures=3, cooldown_s=10, clock=clock)
    b.failure(), b.failure()
    b.success()  # a success resets the count
    b.failure(), b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow() and b.times_opened == 1
    clock.t = 10
    assert b.state == "half_open"
    assert b.allow() and not b.allow()  # one probe at a time
    b.failure()  # probe failed: open again for a full cooldown
    assert b.state == "open" and b.times_opened == 2
    clock.t = 20
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_a_lost_probe_frees_the_slot_after_a_cooldown():
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=5, clock=clock)
    b.failure()
    clock.t = 5
    assert b.allow()  # the probe is never reported back
    clock.t = 9
    assert not b.allow()
    clock.t = 10
    assert b.allow()


def test_scrub_removes_the_key_and_key_shaped_strings():
    text = ("Incorrect API key provided: sk-test-SECRET123; header Bearer abcdef123456; "
            "other sk-proj-AAAAAAAAAAAA and AIzaSyA1234567890123456789012345")
    out = scrub(text, ["sk-test-SECRET123", None, ""])
    for secret in ("SECRET123", "abcdef123456", "sk-proj-AAAA", "AIzaSy"):
        assert secret not in out
    assert out.count(REDACTED) == 4
    assert scrub("my-custom-key-value is bad", ["my-custom-key-value"]) == f"{REDACTED} is bad"
