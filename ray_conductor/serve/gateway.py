"""What the ingress does with one request, as plain async Python: authenticate, parse, route
by `model` (a served policy plans and runs a workflow; a worker name passes straight through),
check the per-key limits, run, shape the answer (JSON or server-sent events), charge the key,
log the request. The Ray shell (`ingress.py`) only supplies the ports: the planner, the
shared worker pool, the limits actor and the traffic writer; tests supply local ones.

Every refusal is a `ServeError`, answered in OpenAI's error shape with its status; nothing a
caller sends can raise anything else. A cancelled request (the client went away) is logged
and re-raised, which cancels the worker calls still pending.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray_conductor.errors import ServeError
from ray_conductor.serve import protocol as api
from ray_conductor.serve.keys import KeyRecord, KeyRing
from ray_conductor.serve.policies import PlanReply, PlanRequest
from ray_conductor.serve.ports import Limits, Planner, PlannerClient, TrafficSink
from ray_conductor.serve.questions import QuestionIndex
from ray_conductor.serve.results import (
    Run,
    extension,
    failure,
    pass_through,
    steps_view,
    usage_of,
)
from ray_conductor.serve.traffic import check_feedback, request_row
from ray_conductor.workers.base import WorkerPool
from ray_conductor.workflow import execute, is_program, render

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
CLIENT_GONE = 499  # nginx's status for a client that closed the connection


@dataclass
class GatewaySettings:
    pool: str | None = None  # the replay pool's spec, for messages
    replay_workers: frozenset[str] = frozenset()  # workers that answer only recorded questions
    max_body_bytes: int = 2_000_000
    max_prompt_chars: int = 200_000
    call_timeout_s: float | None = None
    orchestration_prices: tuple[float, float] = (0.0, 0.0)  # $/1M input, output
    policies_ttl_s: float = 2.0


@dataclass
class Reply:
    """An HTTP answer: a JSON body, or the chunks of a server-sent-event stream."""

    status: int = 200
    body: dict[str, Any] | None = None
    stream: list[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def error_reply(e: ServeError, rid: str | None = None) -> Reply:
    return Reply(e.status, api.error_body(e), headers={"x-request-id": rid} if rid else {})


@dataclass
class _Ctx:
    rid: str
    endpoint: str
    t0: float
    key_id: str | None = None
    req: api.ApiRequest | None = None
    query_id: str | None = None
    timeout_s: float | None = None
    logged: bool = False


class Gateway:
    def __init__(self, settings: GatewaySettings, *, planner: Planner, pool: WorkerPool,
                 keys: KeyRing, limits: Limits | None, traffic: TrafficSink,
                 questions: QuestionIndex | None = None,
                 clock: Callable[[], float] = time.time):
        self.s, self.planner, self.pool, self.keys = settings, planner, pool, keys
        self.limits, self.traffic, self.questions, self.clock = limits, traffic, questions, clock
        self.workers = list(pool.workers())
        self._policies: dict[str, dict[str, Any]] = {}
        self._policies_at = -1e9

    # -- the endpoints -------------------------------------------------------------------------
    async def answer(self, endpoint: str, raw: bytes, authorization: str | None = None,
                     client: str | None = None, deadline: str | None = None) -> Reply:
        """`POST /v1/chat/completions` (endpoint "chat") or `/v1/responses` ("responses").
        `deadline`: the `x-conductor-timeout-s` header, seconds a worker call may take (its
        queue wait included), capped by the config's `call_timeout_s`."""
        ctx = _Ctx(api.new_id(endpoint), endpoint, time.perf_counter())
        try:
            key = self.authenticate(authorization, client)
            ctx.key_id = key.key_id if key else None
            ctx.timeout_s = self._deadline(deadline)
            reply = await self._answer(ctx, raw, key)
        except ServeError as e:
            self._log(ctx, status=e.status, error=e.message, error_code=e.code)
            return error_reply(e, ctx.rid)
        except asyncio.CancelledError:
            self._log(ctx, status=CLIENT_GONE, error="the client disconnected; its pending "
                      "worker calls were cancelled", error_code="client_disconnected")
            raise
        except Exception as e:  # a bug, not the caller's fault: say so, keep the replica up
            log.exception("request %s failed", ctx.rid)
            self._log(ctx, status=500, error=f"{type(e).__name__}", error_code="internal")
            return error_reply(ServeError(f"internal error ({type(e).__name__}) on request "
                                          f"{ctx.rid}; the server log has the details", 500,
                                          code="internal_error", type="server_error"), ctx.rid)
        return reply

    async def models(self, authorization: str | None = None, client: str | None = None) -> Reply:
        """`GET /v1/models`: the served policies (with their live version) and the workers."""
        try:
            self.authenticate(authorization, client)
            policies = await self.policies(refresh=True)
        except ServeError as e:
            return error_reply(e)
        created = api.now()
        data = [{"id": name, "object": "model", "created": created, "owned_by": "ray-conductor",
                 "conductor": {"kind": "policy", **info}} for name, info in policies.items()]
        data += [{"id": w.name, "object": "model", "created": created, "owned_by": "worker",
                  "conductor": {"kind": "worker", "description": w.description,
                                "input_price_per_mtok": w.input_price_per_mtok,
                                "output_price_per_mtok": w.output_price_per_mtok,
                                "replay": w.name in self.s.replay_workers}}
                 for w in self.workers]
        return Reply(body={"object": "list", "data": data})

    async def feedback(self, raw: bytes, authorization: str | None = None,
                       client: str | None = None) -> Reply:
        """`POST /v1/feedback`: a reward and/or a label for a logged request of this key."""
        try:
            key = self.authenticate(authorization, client)
            try:
                body = json.loads(raw or b"null")
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise ServeError("the feedback body is not valid JSON") from None
            try:
                rid, reward, label = check_feedback(body)
            except ValueError as e:
                raise ServeError(str(e)) from None
            why = await self.traffic.feedback(rid, key.key_id if key else None, reward, label)
            if why is not None:
                raise ServeError(why, 404, code="unknown_request", param="request_id")
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
                             f"{header[:20]!r}", param="x-conductor-timeout-s")
        return min(value, cap) if cap else value

    async def policies(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """The served policies by name (cached for a moment: every request routes by them)."""
        now = time.monotonic()
        if refresh or now - self._policies_at > self.s.policies_ttl_s:
            self._policies, self._policies_at = await self.planner.describe(), now
        return self._policies

    async def _answer(self, ctx: _Ctx, raw: bytes, key: KeyRecord | None) -> Reply:
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
        if key is not None and self.limits is not None:
            refused = await self.limits.admit(key.key_id)
            if refused:
                raise ServeError(refused, 429, code="key_limit_exceeded",
                                 type="rate_limit_error")
        found = self._recorded(req, is_policy)
        ctx.query_id = found[0] if found else req.query_id
        params = dict(req.params)
        if ctx.timeout_s:
            params["timeout_s"] = ctx.timeout_s
        run = await (self._run_policy(req, found, params) if is_policy
                     else self._pass_through(req, ctx.query_id, params))
        why = failure(run)
        if why is not None:
            self._log(ctx, run=run, status=why.status, error=why.message, error_code=why.code)
            raise why
        return self._reply(ctx, run, key)

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
        raise ServeError(f"the model {model!r} does not exist here; models: {shown}", 404,
                         code="model_not_found", param="model")

    def _recorded(self, req: api.ApiRequest, is_policy: bool) -> tuple[str, str] | None:
        """The recorded question; for a replay worker passed through, the 4xx for one it
        cannot answer (a policy's plan is checked once it is known)."""
        if self.questions is None:
            return None
        found = self.questions.find(req.query_id, req.question)
        if found is None and not is_policy and req.model in self.s.replay_workers:
            raise self.questions.unrecorded()
        return found

    def _check_plan(self, reply: PlanReply, found: tuple[str, str] | None) -> None:
        """A plan that calls only replay workers cannot answer an unrecorded question."""
        if self.questions is None or found is not None or reply.workflow is None:
            return
        called = {w for w in reply.workflow.workers if w != reply.self_name and
                  not is_program(w)}
        if called and called <= self.s.replay_workers:
            raise self.questions.unrecorded()

    async def _pass_through(self, req: api.ApiRequest, query_id: str | None,
                            params: dict[str, Any]) -> Run:
        params["metadata"] = {"query_id": query_id, "question": req.question}
        c = await self.pool.complete(req.model, req.messages, **params)
        return pass_through(req.model, req.messages, c)

    async def _run_policy(self, req: api.ApiRequest, found: tuple[str, str] | None,
                          params: dict[str, Any]) -> Run:
        query_id, fmt = found if found else (req.query_id, None)
        preq = PlanRequest(req.model, req.question, self.workers)
        reply = await self.planner.plan(preq)
        if "unknown_model" in reply.errors:
            raise ServeError(f"the model {req.model!r} is no longer served", 404,
                             code="model_not_found", param="model")
        if reply.interactive:
            names = {w.name for w in self.workers}
            if self.questions and found is None and names <= self.s.replay_workers:
                raise self.questions.unrecorded()
            preq.version = reply.version
            workflow, trace = await self.planner.run(preq, query_id, fmt, params)
            return Run(workflow, trace, req.model, reply.version)
        if reply.workflow is None:
            raise ServeError(f"policy {req.model!r} produced no plan", 503,
                             code="no_plan", type="server_error")
        self._check_plan(reply, found)
        pool = self.pool
        client, run_pool = None, pool
        if reply.recursion_depth > 0:
            from ray_conductor.policy.recursion import RecursivePool

            client = PlannerClient(self.planner, reply, asyncio.get_running_loop())
            run_pool = RecursivePool(pool, client)  # type: ignore[arg-type]
        trace = await execute(reply.workflow, req.question, run_pool, query_id=query_id,
                              params=params, answer_format=fmt)
        return Run(reply.workflow, trace, req.model, reply.version, reply.text, reply.attempts,
                   reply.fell_back, list(reply.errors),
                   reply.input_tokens + (client.input_tokens if client else 0),
                   reply.output_tokens + (client.output_tokens if client else 0))

    # -- the answer ----------------------------------------------------------------------------
    def _reply(self, ctx: _Ctx, run: Run, key: KeyRecord | None) -> Reply:
        req = ctx.req
        assert req is not None
        usage = usage_of(run, *self.s.orchestration_prices)
        if key is not None and self.limits is not None:
            self.limits.charge(key.key_id, usage.cost)
        latency = time.perf_counter() - ctx.t0
        ext = extension(ctx.rid, run, usage, latency, ctx.query_id)
        fingerprint = f"conductor-{run.version}" if run.version else f"worker-{req.model}"
        headers = {"x-request-id": ctx.rid, "x-conductor-policy-version": run.version or ""}
        created, answer = api.now(), run.trace.answer
        self._log(ctx, run=run, status=200, usage=usage)
        if req.endpoint == "chat" and not req.stream:
            return Reply(body=api.chat_body(ctx.rid, req.model, created, answer, usage,
                                            fingerprint, ext), headers=headers)
        if req.endpoint == "chat":
            chunks = api.chat_chunks(ctx.rid, req.model, created, answer, usage, fingerprint,
                                     ext, req.include_usage)
            return Reply(stream=[api.sse(c) for c in chunks] + [api.sse("[DONE]")],
                         headers=headers)
        if not req.stream:
            return Reply(body=api.responses_body(ctx.rid, req.model, created, answer, usage,
                                                 ext), headers=headers)
        events = api.responses_events(ctx.rid, req.model, created, answer, usage, ext)
        return Reply(stream=[api.sse(e, e["type"]) for e in events], headers=headers)

    def _log(self, ctx: _Ctx, *, status: int, run: Run | None = None, usage: Any = None,
             error: str | None = None, error_code: str | None = None) -> None:
        """One traffic row per request, whatever its outcome (never the key, only its id)."""
        if ctx.logged:
            return
        ctx.logged = True
        req = ctx.req
        u = usage if usage is not None else (usage_of(run, *self.s.orchestration_prices)
                                             if run is not None else None)
        trace = None
        if run is not None:
            trace = {"steps": steps_view(run, with_text=True), "answer": run.trace.answer,
                     "wall_s": run.trace.wall_s, "plan_text": run.plan_text,
                     "plan_attempts": run.plan_attempts, "plan_fell_back": run.plan_fell_back,
                     "plan_errors": run.plan_errors}
        row = request_row(
            request_id=ctx.rid, time=self.clock(), key_id=ctx.key_id, endpoint=ctx.endpoint,
            model=req.model if req else None, policy=run.policy if run else None,
            policy_version=run.version if run else None, stream=req.stream if req else None,
            status=status, error=error, error_code=error_code,
            question=req.question if req else None, query_id=ctx.query_id,
            workflow=render(run.workflow) if run else None, trace=trace,
            answer=run.trace.answer if run else None, cost=u.cost if u else 0.0,
            input_tokens=u.input_tokens if u else 0, output_tokens=u.output_tokens if u else 0,
            orchestration_input_tokens=u.orchestration_input_tokens if u else 0,
            orchestration_output_tokens=u.orchestration_output_tokens if u else 0,
            latency_s=time.perf_counter() - ctx.t0)
        try:
            self.traffic.append(row)
        except Exception:  # the log must never fail the request it records
            log.exception("traffic row of %s not logged", ctx.rid)
