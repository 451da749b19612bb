"""What the ingress does with one request, as plain async Python: read the body (bounded in
size and time), authenticate, parse, route by `model` (a served policy plans and runs a
workflow; a worker name passes straight through), reserve the request's worst case against
the key's limits, run, answer (JSON, or server-sent events relayed as the workers produce
them), settle the key's budget at the real cost, log the request. The Ray shell
(`ingress.py`) only supplies the ports: the policy host, the shared worker pool, the limits
actor and the traffic writer; tests supply local ones.

Every refusal is a `ServeError`, answered in OpenAI's error shape with its status (a 429 with
`Retry-After`); nothing a caller sends can raise anything else. Every request gets one
traffic row whatever its end: answered, refused, failed, or cut off by its client (499; its
pending worker calls are cancelled). A stream that fails after it started ends with an error
event in OpenAI's shape.

A conversation reaches every step of a workflow: the system prompt and the earlier turns
first, then the step's own message. The conductor plans on the last user turn alone (what
every policy was trained on; the earlier turns reach the workers that answer).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ray_conductor.errors import ServeError
from ray_conductor.serve import protocol as api
from ray_conductor.serve import wire
from ray_conductor.serve.keys import KeyRecord, KeyRing
from ray_conductor.serve.limits import prompt_bound, worst_case
from ray_conductor.serve.policies import PlanReply, PlanRequest
from ray_conductor.serve.ports import LimitsPort, PlannerClient, PlannerPort, TrafficSink
from ray_conductor.serve.questions import QuestionIndex
from ray_conductor.serve.reply import (
    GatewaySettings,
    Limited,
    ObservedPool,
    Reply,
    RequestState,
    error_reply,
    fingerprint,
    traffic_row,
    internal_error,
    version_headers,
)
from ray_conductor.serve.results import (
    Run,
    extension,
    failure,
    pass_through,
    usage_of,
)
from ray_conductor.serve.traffic import check_feedback
from ray_conductor.workers.base import WorkerPool
from ray_conductor.workflow import execute, is_program, with_conversation
from ray_conductor.workflow.executor import Emit, call_worker, stream_worker

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
CLIENT_GONE = 499  # nginx's status for a client that closed the connection
Body = bytes | Callable[[], Awaitable[bytes]]
_END = object()


class Gateway:
    def __init__(self, settings: GatewaySettings, *, planner: PlannerPort, pool: WorkerPool,
                 keys: KeyRing, limits: LimitsPort | None, traffic: TrafficSink,
                 questions: QuestionIndex | None = None,
                 clock: Callable[[], float] = time.time):
        self.s, self.planner, self.pool, self.keys = settings, planner, pool, keys
        self.limits, self.traffic, self.questions, self.clock = limits, traffic, questions, clock
        self.workers = list(pool.workers())
        self._prices = {w.name: (w.input_price_per_mtok, w.output_price_per_mtok)
                        for w in self.workers}
        self._policies: dict[str, dict[str, Any]] = {}
        self._policies_at = -1e9

    # -- the endpoints -------------------------------------------------------------------------
    async def answer(self, endpoint: str, raw: Body, authorization: str | None = None,
                     client: str | None = None, deadline: str | None = None) -> Reply:
        """`POST /v1/chat/completions` (endpoint "chat") or `/v1/responses` ("responses").
        `raw`: the body, or how to read it (read here, so a body too big, too slow or cut
        off is answered and logged like any other request). `deadline`: the
        `x-conductor-timeout-s` header, seconds a worker call may take (its queue wait
        included), capped by the config's `call_timeout_s`."""
        ctx = RequestState(wire.new_id(endpoint), endpoint, time.perf_counter())
        try:
            key = self.authenticate(authorization, client)
            ctx.key_id = key.key_id if key else None
            ctx.timeout_s = self._deadline(deadline)
            return await self._answer(ctx, await _read(raw), key)
        except ServeError as e:
            self._log(ctx, status=e.status, error=e.message, error_code=e.code)
            return error_reply(e)
        except asyncio.CancelledError:
            ctx.cost = ctx.reserved if ctx.cost is None else ctx.cost
            self._log(ctx, status=CLIENT_GONE, error="the client disconnected; its pending "
                      "worker calls were cancelled", error_code="client_disconnected")
            raise
        except Exception as e:  # a bug, not the caller's fault: say so, keep the replica up
            log.exception("request %s failed", ctx.rid)
            self._log(ctx, status=500, error=f"{type(e).__name__}", error_code="internal")
            return error_reply(internal_error(ctx.rid, e))
        finally:
            if not ctx.streaming:
                self._settle(ctx)

    async def models(self, authorization: str | None = None, client: str | None = None) -> Reply:
        """`GET /v1/models`: the served policies (with their live version) and the workers."""
        try:
            self.authenticate(authorization, client)
            policies = await self.policies(refresh=True)
        except ServeError as e:
            return error_reply(e)
        created = wire.now()
        data = [{"id": name, "object": "model", "created": created, "owned_by": "ray-conductor",
                 "conductor": {"kind": "policy", **info}} for name, info in policies.items()]
        data += [{"id": w.name, "object": "model", "created": created, "owned_by": "worker",
                  "conductor": {"kind": "worker", "description": w.description,
                                "input_price_per_mtok": w.input_price_per_mtok,
                                "output_price_per_mtok": w.output_price_per_mtok,
                                "replay": w.name in self.s.replay_workers}}
                 for w in self.workers]
        return Reply(body={"object": "list", "data": data})

    async def feedback(self, raw: Body, authorization: str | None = None,
                       client: str | None = None) -> Reply:
        """`POST /v1/feedback`: a reward (within the configured range) and/or a label for a
        logged request of this key."""
        try:
            key = self.authenticate(authorization, client)
            raw = await _read(raw)
            try:
                body = json.loads(raw or b"null")
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise ServeError("the feedback body is not valid JSON") from None
            try:
                rid, reward, label = check_feedback(body, self.s.reward_range)
            except ValueError as e:
                raise ServeError(api.clip(str(e), 400),
                                 param="reward" if "reward" in str(e) else None) from None
            why = await self.traffic.feedback(rid, key.key_id if key else None, reward, label)
            if why is not None:
                raise ServeError(api.clip(why, 300), 404, code="unknown_request",
                                 param="request_id")
        except ServeError as e:
            return error_reply(e)
        return Reply(body={"object": "feedback", "request_id": rid, "accepted": True})

    # -- the steps -----------------------------------------------------------------------------
    def authenticate(self, authorization: str | None, client: str | None) -> KeyRecord | None:
        """The caller's key (401 without a valid one, when keys are configured). With no keys
        the server answers loopback clients only, whatever address it was bound to."""
        if not self.keys.enabled and client is not None and client not in LOOPBACK:
            raise ServeError("this server has no API keys configured, so it answers only "
                             "clients on this machine; configure api_keys to serve others",
                             403, code="keys_not_configured", type="permission_error")
        return self.keys.identify(authorization)

    def _deadline(self, header: str | None) -> float | None:
        cap = self.s.call_timeout_s
        if header is None:
            return cap
        try:
            value = float(header)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 3600:
            raise ServeError(f"x-conductor-timeout-s must be seconds in (0, 3600], got "
                             f"{api.clip(header, 20)!r}", param="x-conductor-timeout-s")
        return min(value, cap) if cap else value

    async def policies(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """The served policies by name (cached for a moment: every request routes by them)."""
        now = time.monotonic()
        if refresh or now - self._policies_at > self.s.policies_ttl_s:
            self._policies, self._policies_at = await self.planner.describe(), now
        return self._policies

    def budget(self, key: KeyRecord | None) -> float | None:
        if key is None or self.limits is None:
            return None
        return key.dollars_per_day if key.dollars_per_day is not None else self.s.default_budget

    async def _answer(self, ctx: RequestState, raw: bytes, key: KeyRecord | None) -> Reply:
        if len(raw) > self.s.max_body_bytes:
            raise ServeError(f"the request body has {len(raw)} bytes; the limit is "
                             f"{self.s.max_body_bytes}", 413, code="request_too_large")
        req = api.parse_chat(raw) if ctx.endpoint == "chat" else api.parse_responses(raw)
        ctx.req = req
        if req.prompt_chars > self.s.max_prompt_chars:
            raise ServeError(f"the prompt has {req.prompt_chars} characters; the limit is "
                             f"{self.s.max_prompt_chars}", 413, code="prompt_too_large",
                             param="messages" if req.endpoint == "chat" else "input")
        is_policy = await self._route(req.model)
        if is_policy and req.response_format is not None:
            param = "response_format" if req.endpoint == "chat" else "text.format"
            raise ServeError(f"`{param}` (structured output) is honoured only when `model` "
                             "names a worker, whose answer is returned unchanged; a "
                             "workflow's answer is free text", param=param,
                             code="unsupported_parameter")
        found = self._recorded(req, is_policy)
        ctx.query_id = found[0] if found else None
        params = dict(req.params)
        if ctx.timeout_s:
            params["timeout_s"] = ctx.timeout_s
        budget = self.budget(key)
        if budget is not None:  # a call's output must stay within what was reserved for it
            params.setdefault("max_tokens", self.s.output_cap)
        if req.response_format is not None:
            params["response_format"] = req.response_format
        plan = None
        if is_policy:
            if key is not None and self.limits is not None and await self._remote(req.model):
                refused, wait = await self.limits.check(key.key_id)  # before an LM plans
                if refused:
                    raise Limited(refused, wait, "key_limit_exceeded")
            plan = await self._plan(req, found)
        if key is not None and self.limits is not None:
            worst = self._worst(req, plan, params) if budget is not None else 0.0
            ticket, refused, wait = await self.limits.reserve(key.key_id, worst)
            if refused:
                raise Limited(refused, wait, "key_limit_exceeded")
            ctx.ticket, ctx.reserved = ticket, worst
        if req.stream:
            return await self._stream(ctx, plan, found, params)
        run = await self._run(ctx, plan, found, params, None)
        return self._reply(ctx, run)

    async def _route(self, model: str) -> bool:
        """True for a served policy, False for a worker; 404 for anything else."""
        if model in await self.policies():
            return True
        if any(w.name == model for w in self.workers):
            return False
        if model in await self.policies(refresh=True):
            return True
        names = sorted(self._policies) + [w.name for w in self.workers]
        shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
        raise ServeError(f"the model {api.clip(model, 100)!r} does not exist here; models: "
                         f"{shown}", 404, code="model_not_found", param="model")

    async def _remote(self, model: str) -> bool:
        return (await self.policies()).get(model, {}).get("where") == "planner"

    def _recorded(self, req: api.ApiRequest, is_policy: bool) -> tuple[str, str] | None:
        """The recorded question (a `metadata.query_id` must name the text sent); for a replay
        worker passed through, the 4xx for one it cannot answer (a policy's plan is checked
        once it is known)."""
        if self.questions is None:
            return None
        found = self.questions.find(req.query_id, req.question)
        if found is None and not is_policy and req.model in self.s.replay_workers:
            raise self.questions.unrecorded()
        return found

    async def _plan(self, req: api.ApiRequest, found: tuple[str, str] | None) -> PlanReply:
        reply = await self.planner.plan(PlanRequest(req.model, req.question, self.workers,
                                                    answer_format=found[1] if found else None))
        if "unknown_model" in reply.errors:
            raise ServeError(f"the model {api.clip(req.model, 100)!r} is no longer served", 404,
                             code="model_not_found", param="model")
        if reply.interactive:
            names = {w.name for w in self.workers}
            if self.questions and found is None and names <= self.s.replay_workers:
                raise self.questions.unrecorded()
            return reply
        if reply.workflow is None:
            raise ServeError(f"policy {api.clip(req.model, 100)!r} produced no plan", 503,
                             code="no_plan", type="server_error")
        if self.questions is not None and found is None:
            called = {w for w in reply.workflow.workers if w != reply.self_name and
                      not is_program(w)}
            if called and called <= self.s.replay_workers:  # replay alone: recorded only
                raise self.questions.unrecorded()
        return reply

    # -- budgets -------------------------------------------------------------------------------
    def _price(self, worker: str) -> tuple[float, float]:
        """A call's price: its worker's, or a pricier fallback's (it may answer instead)."""
        names = [worker, *self.s.fallbacks.get(worker, ())]
        prices = [self._prices[n] for n in names if n in self._prices] or [self._dearest()]
        return max(p[0] for p in prices), max(p[1] for p in prices)

    def _dearest(self) -> tuple[float, float]:
        return (max((p[0] for p in self._prices.values()), default=0.0),
                max((p[1] for p in self._prices.values()), default=0.0))

    def _worst(self, req: api.ApiRequest, plan: PlanReply | None,
               params: dict[str, Any]) -> float:
        """The most this request can cost: every call it may make, at its prompt and its
        output cap, at the worker's price (`limits.worst_case`)."""
        calls: list[tuple[int, tuple[float, float]]]
        prompt, cap = prompt_bound(req.messages), int(params["max_tokens"])
        if plan is None:  # the caller's messages, as they are
            return worst_case([(0, self._price(req.model))], prompt, cap, step_overhead=0)
        elif plan.workflow is None:  # interactive: up to its most calls, at any worker
            calls = [(0, self._dearest())] * max(1, self._max_calls(req.model))
        else:
            calls = []
            for i, step in enumerate(plan.workflow):
                if step.worker == plan.self_name and plan.recursion_depth > 0:
                    inner = max(1, plan.max_steps) * plan.recursion_depth
                    calls += [(inner, self._dearest())] * inner
                elif not is_program(step.worker):
                    calls.append((len(step.visible(i)), self._price(step.worker)))
        return worst_case(calls, prompt, cap)

    def _max_calls(self, model: str) -> int:
        return int(self._policies.get(model, {}).get("max_calls") or 1)

    def _settle(self, ctx: RequestState) -> None:
        """The key's reservation settled at the real cost (a request cut off by its client:
        at its reservation, what a provider bills for a cut call being unknown)."""
        if ctx.settled or ctx.key_id is None or self.limits is None:
            return
        ctx.settled = True
        if ctx.ticket is None and ctx.cost is None:
            return  # refused before anything ran
        try:
            self.limits.settle(ctx.key_id, ctx.ticket, ctx.cost if ctx.cost is not None
                               else ctx.reserved)
        except Exception:  # the limiter restarting must not fail the request
            log.exception("settling request %s failed", ctx.rid)

    # -- running -------------------------------------------------------------------------------
    async def _run(self, ctx: RequestState, plan: PlanReply | None, found: tuple[str, str] | None,
                   params: dict[str, Any], emit: Emit | None) -> Run:
        """The request's run; with `emit`, its progress and the answer's text as produced."""
        req = ctx.req
        assert req is not None
        if plan is None:
            params["metadata"] = {"query_id": ctx.query_id, "question": req.question}
            if emit is None:
                c = await call_worker(self.pool, req.model, req.messages, None, params)
            else:
                c = await stream_worker(self.pool, req.model, req.messages, None, params,
                                        lambda t: emit({"event": "answer.delta", "text": t}))
            return pass_through(req.model, req.messages, c)
        fmt = found[1] if found else None
        pool = with_conversation(self.pool, req.context)
        preq = PlanRequest(req.model, req.question, self.workers, version=plan.version)
        if plan.interactive:
            run_pool = ObservedPool(pool, emit) if emit is not None else pool
            workflow, trace = await self.planner.run(preq, run_pool, query_id=ctx.query_id,
                                                     answer_format=fmt, params=params)
            return Run(workflow, trace, req.model, plan.version)
        assert plan.workflow is not None
        client, run_pool = None, pool
        if plan.recursion_depth > 0 and plan.self_name in plan.workflow.workers:
            from ray_conductor.policy.recursion import RecursivePool

            client = PlannerClient(self.planner, plan, asyncio.get_running_loop())
            run_pool = RecursivePool(pool, client)  # type: ignore[arg-type]
        trace = await execute(plan.workflow, req.question, run_pool, query_id=ctx.query_id,
                              params=params, answer_format=fmt, events=emit)
        return Run(plan.workflow, trace, req.model, plan.version, plan.text, plan.attempts,
                   plan.fell_back, list(plan.errors),
                   plan.input_tokens + (client.input_tokens if client else 0),
                   plan.output_tokens + (client.output_tokens if client else 0))

    def _finish(self, ctx: RequestState, run: Run) -> wire.Usage:
        """The run's usage, its cost kept for settling; a failed run raises its error."""
        usage = usage_of(run, *self.s.orchestration_prices)
        ctx.cost = usage.cost
        why = failure(run)
        if why is not None:
            if why.status == 429:
                why = Limited(why.message, 1.0, why.code)
            self._log(ctx, run=run, status=why.status, error=why.message, error_code=why.code,
                      usage=usage)
            raise why
        return usage

    def _reply(self, ctx: RequestState, run: Run) -> Reply:
        req = ctx.req
        assert req is not None
        usage = self._finish(ctx, run)
        ext = extension(ctx.rid, run, usage, time.perf_counter() - ctx.t0, ctx.query_id)
        answer = run.trace.answer
        self._log(ctx, run=run, status=200, usage=usage)
        if req.endpoint == "chat":
            body = wire.chat_body(ctx.rid, req.model, wire.now(), answer, usage,
                                 fingerprint(run, req), ext)
        else:
            body = wire.responses_body(ctx.rid, req.model, wire.now(), answer, usage, ext)
        return Reply(body=body, headers=version_headers(run))

    async def _stream(self, ctx: RequestState, plan: PlanReply | None, found: tuple[str, str] | None,
                      params: dict[str, Any]) -> Reply:
        """Start the run; answer once its first event (a step started, the first token) or
        its end is known: a run that fails before anything happened is a plain HTTP error,
        anything later an error event in the stream."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.ensure_future(self._run(ctx, plan, found, params, queue.put_nowait))
        task.add_done_callback(lambda _: queue.put_nowait(_END))
        try:
            first = await queue.get()
        except asyncio.CancelledError:
            task.cancel()
            raise
        if first is _END:
            self._finish(ctx, task.result())  # raises a failed run's error, as an HTTP status
        ctx.streaming = True
        version = plan.version if plan is not None else None
        return Reply(stream=self._events(ctx, version, first, queue, task),
                     headers={"x-conductor-policy-version": version or ""})

    async def _events(self, ctx: RequestState, version: str | None, first: Any,
                      queue: asyncio.Queue[Any], task: asyncio.Future[Run]
                      ) -> AsyncIterator[bytes]:
        req = ctx.req
        assert req is not None
        w: wire.ChatStream | wire.ResponsesStream
        if req.endpoint == "chat":
            fp = f"conductor-{version}" if version else f"worker-{req.model}"
            w = wire.ChatStream(ctx.rid, req.model, wire.now(), fp, req.include_usage)
        else:
            w = wire.ResponsesStream(ctx.rid, req.model, wire.now())
        relayed: list[str] = []
        try:
            for item in w.start():
                yield w.sse(item)
            item = first
            while item is not _END:
                for out in self._render(w, item, relayed):
                    yield w.sse(out)
                item = await queue.get()
            try:
                run = task.result()
                usage = self._finish(ctx, run)
            except ServeError as e:
                for out in w.fail(e):
                    yield w.sse(out)
                self._log(ctx, status=e.status, error=e.message, error_code=e.code)
                return
            if not relayed:  # the answer came whole (an interactive policy, a vote)
                for piece in wire.pieces(run.trace.answer):
                    for out in w.text(piece):
                        yield w.sse(out)
            ext = extension(ctx.rid, run, usage, time.perf_counter() - ctx.t0, ctx.query_id)
            self._log(ctx, run=run, status=200, usage=usage)
            for out in w.finish(usage, ext):
                yield w.sse(out)
        except Exception as e:  # a bug mid-stream: end it in OpenAI's shape, keep the replica
            log.exception("stream %s failed", ctx.rid)
            self._log(ctx, status=500, error=type(e).__name__, error_code="internal")
            for out in w.fail(internal_error(ctx.rid, e)):
                yield w.sse(out)
        finally:
            if not task.done():
                task.cancel()
            if not ctx.logged:  # the client went away mid-stream
                ctx.cost = ctx.reserved if ctx.cost is None else ctx.cost
                self._log(ctx, status=CLIENT_GONE, error="the client disconnected mid-stream; "
                          "its pending worker calls were cancelled",
                          error_code="client_disconnected")
            self._settle(ctx)

    @staticmethod
    def _render(w: Any, event: dict[str, Any], relayed: list[str]) -> list[Any]:
        if event.get("event") == "answer.delta":
            relayed.append(event["text"])
            return w.text(event["text"])
        return w.progress(event)

    def _log(self, ctx: RequestState, *, status: int, run: Run | None = None, usage: Any = None,
             error: str | None = None, error_code: str | None = None) -> None:
        """One traffic row per request, whatever its outcome (never the key, only its id)."""
        if ctx.logged:
            return
        ctx.logged = True
        try:
            u = usage if usage is not None else (usage_of(run, *self.s.orchestration_prices)
                                                 if run is not None else None)
            row = traffic_row(ctx, run, u, self.clock(), status=status, error=error,
                              error_code=error_code)
            self.traffic.append(row)
        except Exception:  # the log must never fail the request it records
            log.exception("traffic row of %s not logged", ctx.rid)


async def _read(raw: Body) -> bytes:
    return raw if isinstance(raw, bytes) else await raw()
