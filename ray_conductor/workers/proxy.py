"""`WorkerProxyCore`: everything one worker proxy does around a litellm call, without Ray.

It owns the worker's rate limiter, retries, circuit breaker, response cache and accounting,
and calls an injectable `acompletion` (default: `litellm.acompletion`, imported lazily). It
never raises for a worker's fault: failures come back as a `Completion` with `error` set and
every attempt listed. The API key is read from the environment at call time and scrubbed from
every error text. The Ray actor in `actor.py` is a thin shell around this class.

`stream` is `complete` that also yields the answer's text as the provider produces it
(litellm `stream=True`): the same limiter, retries (before the first token only: a token
sent cannot be taken back), breaker, cache, fallbacks and accounting. A stream that breaks
after its first token ends with a failed `Completion` (`stream_interrupted`). Replay workers,
cache hits and fallbacks yield their text in one piece.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import replace
from typing import Any, AsyncIterator, Awaitable, Callable

from ray_conductor.errors import ConductorError
from ray_conductor.workers.accounting import CallRecord, WorkerStats
from ray_conductor.workers.base import Attempt, Completion, Message, WorkerInfo, failed
from ray_conductor.workers.cache import TTLCache, cache_key
from ray_conductor.workers.config import WorkerConfig
from ray_conductor.workers.ratelimit import Limits, Permit, RateLimiter
from ray_conductor.workers.retry import CircuitBreaker, Fault, classify, retry_delay, scrub

log = logging.getLogger(__name__)

Fallback = Callable[[str, list[Message], dict[str, Any]], Awaitable[Completion]]
Observer = Callable[[CallRecord], None]
RESERVED = ("priority", "timeout_s", "via")  # call options that are not sampling parameters


def litellm_module() -> Any:
    """litellm, imported the only safe way offline: local cost map, no tokenizer downloads,
    no debug banners on stdout."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.disable_hf_tokenizer_download = True
    return litellm


def count_tokens(model: str, messages: list[Message]) -> int:
    return int(litellm_module().token_counter(model=model, messages=messages))


def response_cost(response: Any) -> float:
    """litellm's own figure (the cost map, or what a custom provider put there)."""
    hidden = getattr(response, "_hidden_params", None) or {}
    if hidden.get("response_cost") is not None:
        return float(hidden["response_cost"])
    try:
        return float(litellm_module().completion_cost(completion_response=response) or 0.0)
    except Exception:  # a model missing from the cost map costs what we cannot know
        return 0.0


def token_cost(model: str, input_tokens: int, output_tokens: int) -> float:
    """litellm's cost map price of a call it cannot price itself (a stream)."""
    try:
        a, b = litellm_module().cost_per_token(model=model, prompt_tokens=input_tokens,
                                               completion_tokens=output_tokens)
        return float(a + b)
    except Exception:  # a model missing from the cost map costs what we cannot know
        return 0.0


class _Relay:
    """Where a streamed call's text goes as it arrives; `first_at` (clock) once any went."""

    def __init__(self, put: Callable[[str], None], clock: Callable[[], float]):
        self.put_text, self.clock = put, clock
        self.first_at: float | None = None

    @property
    def sent(self) -> bool:
        return self.first_at is not None

    def put(self, text: str) -> None:
        if text:
            if self.first_at is None:
                self.first_at = self.clock()
            self.put_text(text)


_DONE = object()


def _usage(response: Any) -> tuple[int, int]:
    return _counts(getattr(response, "usage", None))


def _counts(u: Any) -> tuple[int, int]:
    return int(getattr(u, "prompt_tokens", 0) or 0), int(getattr(u, "completion_tokens", 0) or 0)


def _text(response: Any) -> str:
    return response.choices[0].message.content or ""


class WorkerProxyCore:
    """One worker behind a queue. `fallback(name, messages, params)` calls another worker's
    proxy (the Ray shell resolves names to actor handles)."""

    def __init__(self, cfg: WorkerConfig, *,
                 acompletion: Callable[..., Awaitable[Any]] | None = None,
                 fallback: Fallback | None = None, observer: Observer | None = None,
                 queue_timeout_s: float = 300.0, default_api_base: str | None = None,
                 token_counter: Callable[[str, list[Message]], int] = count_tokens,
                 cost: Callable[[Any], float] = response_cost,
                 tokens_cost: Callable[[str, int, int], float] = token_cost,
                 clock: Callable[[], float] = time.monotonic, seed: int | None = None):
        self.cfg = cfg
        self._acompletion = acompletion
        self._fallback, self._observer = fallback, observer
        self._logged: dict[str, tuple[float, int]] = {}  # error code -> (last logged, muted)
        self.queue_timeout_s = queue_timeout_s
        self._api_base = cfg.api_base or (default_api_base if cfg.model.startswith("replay/")
                                          else None)
        self._count, self._cost, self._clock = token_counter, cost, clock
        self._tokens_cost = tokens_cost
        self._rng = random.Random(seed)
        self.limiter = RateLimiter(Limits.per_minute(cfg.rpm, cfg.tpm, cfg.window_s,
                                                     cfg.max_concurrency), clock)
        self.breaker = CircuitBreaker(cfg.circuit_failures, cfg.circuit_cooldown_s, clock)
        self.cache: TTLCache[Completion] = TTLCache(cfg.cache_size, cfg.cache_ttl_s, clock)
        self.accounts = WorkerStats()

    # -- public -------------------------------------------------------------------------------
    async def complete(self, messages: list[Message], *, priority: str = "serve",
                       timeout_s: float | None = None, via: tuple[str, ...] = (),
                       **params: Any) -> Completion:
        """Answer `messages`; `timeout_s` is the call's deadline (queue waits, retries and
        fallbacks included), `via` the workers that already passed this call on. A cache hit
        costs nothing (`cost` 0.0, `cached` True; the first call's cost is in `meta`)."""
        return await self._run(messages, priority, timeout_s, via, params, None)

    async def stream(self, messages: list[Message], *, priority: str = "serve",
                     timeout_s: float | None = None, via: tuple[str, ...] = (),
                     **params: Any) -> AsyncIterator[str | Completion]:
        """`complete`, yielding the answer's text as it arrives (pieces that arrived together
        are joined), then the `Completion` (its `text` is the pieces joined). Closing the
        iterator early cancels the call."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.ensure_future(self._run(messages, priority, timeout_s, via, params,
                                               _Relay(queue.put_nowait, self._clock)))
        task.add_done_callback(lambda _: queue.put_nowait(_DONE))
        try:
            while True:
                pieces = [await queue.get()]
                while not queue.empty():
                    pieces.append(queue.get_nowait())
                text = "".join(p for p in pieces if p is not _DONE)
                if text:
                    yield text
                if pieces[-1] is _DONE:  # put after the last piece of text
                    yield task.result()
                    return
        finally:
            if not task.done():
                task.cancel()

    async def _run(self, messages: list[Message], priority: str, timeout_s: float | None,
                   via: tuple[str, ...], params: dict[str, Any],
                   relay: _Relay | None) -> Completion:
        t0 = self._clock()
        deadline = t0 + (timeout_s if timeout_s is not None else self.queue_timeout_s)
        key = self._cache_key(messages, params)
        if key and (hit := self.cache.get(key)) is not None:
            c = self._finish(replace(hit, cached=True, cost=0.0, queue_wait_s=0.0, attempts=[],
                                     meta={**hit.meta, "cached_cost": hit.cost}), t0)
        else:
            own = await self._call_with_retries(messages, priority, deadline, params, relay)
            c = own
            if not own.ok and self._has_fallback and own.error_code != "stream_interrupted":
                c = await self._via_fallbacks(own, messages, priority, deadline, via, params)
            if key and own.ok:
                self.cache.put(key, replace(own))
            c = self._finish(c, t0, own)
        if relay is not None and c.ok and not relay.sent:
            relay.put(c.text)  # replay, a cache hit or a fallback: the text in one piece
        if relay is not None and relay.first_at is not None:
            c.meta["first_token_s"] = relay.first_at - t0
        return c

    async def warm_up(self) -> None:
        """Pay litellm's first-call setup (lazy imports, client, schemas: ~0.7 s) now, with a
        mock answer, rather than inside the first real call's admission window."""
        kw = {"api_base": self._api_base} if self._api_base else {}
        await self._backend()(model=self.cfg.model, messages=[{"role": "user", "content": "hi"}],
                              mock_response="ok", api_key="EMPTY", **kw)
        count = self._count  # and the tokenizer the estimates use
        count(self.cfg.model, [{"role": "user", "content": "warm up"}])

    def stats(self) -> dict[str, Any]:
        d = self.accounts.to_dict()
        d.update(worker=self.cfg.name, model=self.cfg.model, circuit=self.breaker.state,
                 circuit_opened=self.breaker.times_opened, cache_entries=len(self.cache),
                 **self.limiter.state())
        return d

    def info(self) -> WorkerInfo:
        """The conductor's view: description and prices (config override, else cost map)."""
        return worker_info(self.cfg)

    # -- one worker, with retries -------------------------------------------------------------
    async def _call_with_retries(self, messages: list[Message], priority: str, deadline: float,
                                 params: dict[str, Any], relay: _Relay | None = None
                                 ) -> Completion:
        attempts: list[Attempt] = []
        waited = 0.0
        try:
            kwargs = self._litellm_kwargs(messages, params)
            estimate = self._estimate(messages, params)
        except ConductorError as e:
            return self._failed(str(e), e.code, attempts, waited)
        for n in range(self.cfg.retries + 1):
            if not self.breaker.allow():
                return self._circuit_open(attempts, waited)
            try:
                permit = await self.limiter.acquire(estimate, priority, deadline - self._clock())
            except ConductorError as e:
                return self._failed(str(e), e.code, attempts, waited)
            waited += permit.queue_wait_s
            if self.breaker.state == "open":  # it opened while this call queued: do not call
                self.limiter.release(permit)
                return self._circuit_open(attempts, waited)
            result = await self._attempt(kwargs, permit, attempts, deadline, relay)
            if isinstance(result, Completion):
                result.queue_wait_s = waited
                return result
            if not result.retryable or n == self.cfg.retries:
                break
            if self._has_fallback and self.breaker.state == "open":
                return self._circuit_open(attempts, waited)  # the fallback goes now, no backoff
            delay = retry_delay(n, result, self.cfg.backoff_base_s, self.cfg.backoff_max_s,
                                self._rng)
            if self._clock() + delay >= deadline:
                attempts[-1].error = f"{attempts[-1].error} (no time left to retry)"
                break
            await asyncio.sleep(delay)
        tries = f"{len(attempts)} attempt{'s' * (len(attempts) != 1)}"
        return self._failed(f"{self.cfg.name} failed after {tries}: {attempts[-1].error}",
                            "worker_failed", attempts, waited)

    async def _attempt(self, kwargs: dict[str, Any], permit: Permit, attempts: list[Attempt],
                       deadline: float, relay: _Relay | None = None) -> Completion | Fault:
        """One call to the backend, holding a permit; the answer or the fault. A hung backend
        is cut off at the call's deadline too, not only at the attempt's own timeout. With a
        `relay` (and a backend that streams) the text goes there as it arrives."""
        t = self._clock()
        actual: int | None = None
        limit = max(0.05, min(self.cfg.timeout_s + 1.0, deadline - t))
        streamed: list[str] = []
        try:
            if relay is not None and self._streams:
                c = await asyncio.wait_for(self._streamed(kwargs, relay, streamed), limit)
                actual = c.input_tokens + c.output_tokens
            else:
                resp = await asyncio.wait_for(self._backend()(**kwargs), limit)
                inp, out = _usage(resp)
                actual = inp + out
                c = Completion(worker=self.cfg.name, text=_text(resp), input_tokens=inp,
                               output_tokens=out, cost=self._price(resp, inp, out))
        except Exception as e:  # every backend error becomes a recorded attempt
            fault = classify(e)
            cut = isinstance(e, asyncio.TimeoutError) and limit < self.cfg.timeout_s + 1.0
            message = f"the call's deadline passed after {limit:.2f}s" if cut else fault.message
            fault = replace(fault, message=self._scrub(message))
            if streamed:  # tokens already went out: no retry, no fallback, a failed answer
                return self._interrupted(fault, streamed, attempts, t)
            attempts.append(Attempt(self.cfg.model, fault.outcome, self._clock() - t, fault.status,
                                    fault.message, fault.retry_after_s))
            if fault.retryable and not cut:  # a caller's short deadline is not the worker's fault
                self.breaker.failure()
            log.info("worker %s attempt failed: %s", self.cfg.name, fault.message)
            return fault
        finally:
            self.limiter.release(permit, actual)
        self.breaker.success()
        attempts.append(Attempt(self.cfg.model, "ok", self._clock() - t, 200))
        c.attempts = attempts
        c.meta["admitted_at"] = permit.admitted_at  # for checking limits across processes
        return c

    async def _streamed(self, kwargs: dict[str, Any], relay: _Relay,
                        parts: list[str]) -> Completion:
        """One streamed call: each piece of text to `relay` as it arrives (and to `parts`);
        usage from the provider's last chunk, else counted."""
        resp = await self._backend()(**kwargs, stream=True,
                                     stream_options={"include_usage": True})
        usage = None
        async for chunk in resp:
            usage = getattr(chunk, "usage", None) or usage
            choices = getattr(chunk, "choices", None) or []
            delta = getattr(choices[0], "delta", None) if choices else None
            text = getattr(delta, "content", None) if delta is not None else None
            if text:
                parts.append(text)
                relay.put(text)
        text = "".join(parts)
        inp, out = _counts(usage)
        if not inp:
            inp = self._count(self.cfg.model, kwargs["messages"])
        if not out and text:
            out = max(0, self._count(self.cfg.model, [{"role": "assistant", "content": text}])
                      - self._count(self.cfg.model, [{"role": "assistant", "content": ""}]))
        p_in, p_out = self.cfg.input_price_per_mtok, self.cfg.output_price_per_mtok
        cost = ((inp * (p_in or 0.0) + out * (p_out or 0.0)) / 1e6
                if p_in is not None or p_out is not None
                else self._tokens_cost(self.cfg.model, inp, out))
        return Completion(worker=self.cfg.name, text=text, input_tokens=inp,
                          output_tokens=out, cost=cost, meta={"streamed": True})

    def _interrupted(self, fault: Fault, parts: list[str], attempts: list[Attempt],
                     t: float) -> Completion:
        """A stream that broke after its first token: the breaker counts it; the caller
        gets a failed answer with what had arrived in `meta`."""
        got = "".join(parts)
        why = f"the stream broke after {len(got)} characters: {fault.message}"
        attempts.append(Attempt(self.cfg.model, "stream_interrupted", self._clock() - t,
                                fault.status, why))
        self.breaker.failure()
        log.info("worker %s stream interrupted: %s", self.cfg.name, fault.message)
        return failed(self.cfg.name, why, "stream_interrupted", attempts=attempts,
                      meta={"partial_text": got})

    # -- fallbacks ----------------------------------------------------------------------------
    async def _via_fallbacks(self, own: Completion, messages: list[Message], priority: str,
                             deadline: float, via: tuple[str, ...],
                             params: dict[str, Any]) -> Completion:
        attempts, waited = list(own.attempts), own.queue_wait_s
        tried = via + (self.cfg.name,)
        why: list[str] = []  # each fallback's failure, for the error of the whole call
        for name in self.cfg.fallbacks:
            left = deadline - self._clock()
            if name in tried or left <= 0:
                continue
            try:
                fb = await self._fallback(name, messages,  # type: ignore[misc]
                                          {**params, "priority": priority, "timeout_s": left,
                                           "via": tried})
            except Exception as e:  # an unreachable fallback is one more failed attempt
                attempts.append(Attempt(name, "error", 0.0, None, self._scrub(f"fallback: {e}")))
                why.append(f"{name}: unreachable ({type(e).__name__})")
                continue
            attempts += fb.attempts
            waited += fb.queue_wait_s
            if fb.ok:
                return replace(fb, worker=self.cfg.name, served_by=fb.served_by or name,
                               attempts=attempts, queue_wait_s=waited,
                               meta={**fb.meta, "primary_error": own.error})
            why.append(f"{name}: {fb.error}")
        failed_all = replace(own, attempts=attempts, queue_wait_s=waited)
        if own.error_code == "circuit_open" and why:
            # the primary was never tried: what the fallbacks said is the real cause
            failed_all.error = self._scrub(f"{own.error}; its fallbacks failed too: "
                                           + "; ".join(why))
            failed_all.error_code = "fallback_failed"
        return failed_all

    # -- helpers ------------------------------------------------------------------------------
    def _backend(self) -> Callable[..., Awaitable[Any]]:
        if self._acompletion is None:
            self._acompletion = litellm_module().acompletion
        return self._acompletion

    def _api_key(self) -> str | None:
        env = self.cfg.api_key_env
        if env:
            key = os.environ.get(env)
            if not key:
                raise ConductorError(f"environment variable {env} (the API key of worker "
                                     f"{self.cfg.name}) is not set", code="missing_api_key")
            return key
        return "EMPTY" if self._api_base and not self.cfg.model.startswith("replay/") else None

    def _litellm_kwargs(self, messages: list[Message], params: dict[str, Any]) -> dict[str, Any]:
        kw = {k: v for k, v in params.items() if k not in RESERVED}
        kw.update(model=self.cfg.model, messages=messages, timeout=self.cfg.timeout_s,
                  max_retries=0, drop_params=True)
        if self._api_base:
            kw["api_base"] = self._api_base
        key = self._api_key()
        if key:
            kw["api_key"] = key
        return kw

    def _estimate(self, messages: list[Message], params: dict[str, Any]) -> int:
        """Tokens a call is admitted with: the prompt plus the output it may produce."""
        if not self.cfg.tpm:
            return 0
        out = params.get("max_tokens") or params.get("max_completion_tokens") or 0
        return self._count(self.cfg.model, messages) + int(out)

    @property
    def _streams(self) -> bool:
        """Replay workers answer from a recording, in one piece."""
        return not self.cfg.model.startswith("replay/")

    def _price(self, resp: Any, inp: int, out: int) -> float:
        p_in, p_out = self.cfg.input_price_per_mtok, self.cfg.output_price_per_mtok
        if p_in is not None or p_out is not None:
            return (inp * (p_in or 0.0) + out * (p_out or 0.0)) / 1e6
        return self._cost(resp)

    def _cache_key(self, messages: list[Message], params: dict[str, Any]) -> str | None:
        if not self.cfg.cache or params.get("temperature", None) != 0:
            return None
        sampling = {k: v for k, v in params.items() if k not in RESERVED + ("metadata",)}
        if self.cfg.model.startswith("replay/"):  # a replay answer depends on the query too
            sampling["query_id"] = (params.get("metadata") or {}).get("query_id")
        return cache_key(self.cfg.model, messages, sampling)

    def _scrub(self, text: str) -> str:
        env = self.cfg.api_key_env
        return scrub(text, [os.environ.get(env) if env else None])

    def _circuit_open(self, attempts: list[Attempt], waited: float) -> Completion:
        """The breaker says no: `complete` passes the call to a fallback if one exists."""
        where = " and no fallback is configured" if not self._has_fallback else ""
        return self._failed(f"circuit open after repeated failures of {self.cfg.name} (cooling "
                            f"down for {self.cfg.circuit_cooldown_s:g}s){where}",
                            "circuit_open", attempts, waited)

    @property
    def _has_fallback(self) -> bool:
        return bool(self.cfg.fallbacks) and self._fallback is not None

    def _failed(self, error: str, code: str, attempts: list[Attempt], waited: float) -> Completion:
        return failed(self.cfg.name, self._scrub(error), code, attempts=attempts,
                      queue_wait_s=waited)

    def _finish(self, c: Completion, t0: float, own: Completion | None = None) -> Completion:
        """Stamp the latency, account for this worker's own part, tell the observer."""
        c.latency_s = self._clock() - t0
        mine, paid = own or c, not c.cached
        rec = CallRecord(ok=c.ok, retries=max(0, len(mine.attempts) - 1),
                         input_tokens=mine.input_tokens * paid,
                         output_tokens=mine.output_tokens * paid, cost=mine.cost,
                         queue_wait_s=c.queue_wait_s, latency_s=c.latency_s, cached=c.cached,
                         fallback=c.served_by is not None, error_code=c.error_code)
        self.accounts.record(rec)
        if c.error:
            self._log_failure(c)
        if self._observer is not None:
            try:
                self._observer(rec)
            except Exception:  # metrics must never fail a call that succeeded
                log.exception("worker %s: the call's observer failed", self.cfg.name)
        return c


    def _log_failure(self, c: Completion, every_s: float = 30.0) -> None:
        """One warning per error code per `every_s` (with how many were muted since): a
        missing key or an outage fails every call, and one line each would bury the logs.
        Every failure is still counted in the accounts and returned to its caller."""
        code, now = c.error_code or "worker_failed", self._clock()
        last, muted = self._logged.get(code, (float("-inf"), 0))
        if now - last < every_s:
            self._logged[code] = (last, muted + 1)
            return
        more = f" (and {muted} more {code} failures in the last {now - last:.0f}s)" if muted else ""
        log.warning("worker %s: %s%s", self.cfg.name, c.error, more)
        self._logged[code] = (now, 0)


def worker_info(cfg: WorkerConfig) -> WorkerInfo:
    """A worker as the conductor sees it: description and the prices its calls are charged
    at (`list_price`; 0 where nothing knows one)."""
    inp, out = list_price(cfg)
    return WorkerInfo(cfg.name, cfg.description, float(inp or 0.0), float(out or 0.0))


def list_price(cfg: WorkerConfig) -> tuple[float | None, float | None]:
    """$/1M input and output tokens of a worker as its calls are charged: the config's prices
    when it sets either (the other is 0), else litellm's cost map for its model; None where
    neither knows."""
    inp, out = cfg.input_price_per_mtok, cfg.output_price_per_mtok
    if inp is not None or out is not None:
        return float(inp or 0.0), float(out or 0.0)
    entry = _cost_map_entry(cfg.model)
    prices = [entry.get(k) for k in ("input_cost_per_token", "output_cost_per_token")]
    pin, pout = (float(p) * 1e6 if isinstance(p, (int, float)) else None for p in prices)
    return pin, pout


def _cost_map_entry(model: str) -> dict[str, Any]:
    cost_map = litellm_module().model_cost
    bare = model.split("/", 1)[1] if "/" in model else model
    return cost_map.get(model) or cost_map.get(bare) or {}
