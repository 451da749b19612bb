"""The HTTP ingress: a FastAPI app behind `@serve.ingress`, shaped like Ray Serve LLM's
`OpenAiIngress` (which cannot be imported without vLLM or SGLang, ray-project/ray#64661).
A thin shell: it hands the gateway the body's reader (bounded in size and time) and the
Ray-backed ports, and turns the `Reply` into an HTTP response (JSON, or server-sent events
as they are produced). Unknown paths and methods answer in OpenAI's error shape too.

The served policies live here (`PolicyHost`): kNN, lite, pinned and scripted workflows plan
in this replica, with no hop to another deployment; an LM conductor plans in the planner
deployment. Hot-swap is this deployment's `user_config` (`{"policies": {name: ref}}`):
`reconfigure` loads what changed off the event loop and swaps it in, no replica restarts.
"""

import asyncio
import logging  # no `from __future__ import annotations`: FastAPI reads the annotations
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_conductor.errors import ServeError
from ray_conductor.serve.gateway import Gateway
from ray_conductor.serve.reply import GatewaySettings, Reply
from ray_conductor.serve.planner import limit_threads
from ray_conductor.serve.wire import dumps, error_body

log = logging.getLogger(__name__)
api = FastAPI(title="ray_conductor", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(StarletteHTTPException)
async def _no_such_endpoint(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    what = {404: "no such endpoint", 405: "method not allowed here"}.get(exc.status_code,
                                                                         str(exc.detail))
    e = ServeError(f"{request.method} {request.url.path[:200]}: {what}; the endpoints are POST "
                   "/v1/chat/completions, POST /v1/responses, GET /v1/models, POST "
                   "/v1/feedback, GET /healthz", exc.status_code,
                   code="not_found" if exc.status_code == 404 else "method_not_allowed")
    return JSONResponse(error_body(e), status_code=exc.status_code)


def to_response(reply: Reply) -> Response:
    if reply.stream is not None:
        return StreamingResponse(reply.stream, status_code=reply.status,
                                 media_type="text/event-stream", headers=reply.headers)
    return Response(dumps(reply.body), status_code=reply.status, headers=reply.headers,
                    media_type="application/json")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (never read whole), and
    with 408 when it has not all arrived within `timeout_s`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ServeError(f"the request body has {declared} bytes; the limit is {limit}", 413,
                         code="request_too_large")
    parts, n = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                n += len(chunk)
                if n > limit:
                    raise ServeError(f"the request body is over the limit of {limit} bytes",
                                     413, code="request_too_large")
                parts.append(chunk)
    except TimeoutError:
        raise ServeError(f"the request body did not arrive within {timeout_s:g}s ({n} bytes "
                         "came); send it whole", 408, code="request_timeout") from None
    return b"".join(parts)


class _RemotePlanner:
    """The planner deployment (LM conductors); its being unreachable is a 503, not a bug."""

    def __init__(self, handle: Any):
        self.h = handle

    async def _call(self, method: str, *args: Any) -> Any:
        from ray.exceptions import RayError
        from ray.serve.exceptions import RayServeException

        try:
            return await getattr(self.h, method).remote(*args)
        except (RayError, RayServeException) as e:
            raise ServeError(f"the planner is unavailable ({type(e).__name__}); retry shortly",
                             503, code="planner_unavailable", type="server_error") from None

    async def plan(self, req: Any) -> Any:
        return await self._call("plan", req)

    async def describe(self) -> dict[str, Any]:
        return await self._call("describe")

    async def whoami(self) -> dict[str, Any]:
        return await self._call("whoami")


class _Limits:
    def __init__(self, actor: Any):
        self.a = actor

    async def reserve(self, key_id: str, dollars: float) -> tuple[str | None, str | None, float]:
        return await self.a.reserve.remote(key_id, dollars)

    async def check(self, key_id: str) -> tuple[str | None, float]:
        return await self.a.check.remote(key_id)

    def settle(self, key_id: str, ticket: str | None, dollars: float) -> None:
        self.a.settle.remote(key_id, ticket, dollars)


class _Traffic:
    """Rows go to the writer actor in batches (every `every_s`, or `batch` rows): one actor
    call per request cost the writer and the ingress ~3 ms of CPU. `close` (the replica's
    graceful shutdown) sends the rest and waits for the writer to have them."""

    def __init__(self, actor: Any, every_s: float = 0.1, batch: int = 64):
        self.a, self.every_s, self.batch = actor, every_s, batch
        self.rows: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch:
            self._send()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.every_s, self._send)

    def _send(self) -> Any:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows, self.rows = self.rows, []
        return self.a.append.remote(rows) if rows else None

    async def close(self) -> None:
        ref = self._send()
        if ref is not None:
            await ref

    async def feedback(self, request_id: str, key_id: str | None, reward: float | None,
                       label: str | None) -> str | None:
        ref = self._send()  # the row of a request answered a moment ago may still be here
        if ref is not None:
            await ref
        return await self.a.feedback.remote(request_id, key_id, reward, label)


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _local_loader(cfg: Any, workers: list[Any]) -> Any:
    """How this replica loads a policy that plans here (`policies.load_policy`)."""
    from functools import lru_cache

    from ray_conductor.serve.policies import LoadContext, load_policy

    @lru_cache(maxsize=1)
    def data() -> Any:
        from ray_conductor.data.pools import load_pool

        return load_pool(cfg.pool, cfg.data_dir)

    ctx = LoadContext(workers, data if cfg.pool else None, cfg.pool, cfg.knn_k,
                      dict(cfg.conductor), cfg.plan_temperature)
    return lambda ref: load_policy(ref, ctx)


def online_learning_cost() -> dict[str, Any]:
    """Per served model of this app, the online loop's running learning cost (extra calls
    and dollars, traffic dollars, learning $ per served $), as the loop publishes it to
    Ray's internal KV (`online.decisions.OnlineMetrics.publish`); {} where no loop runs."""
    import json

    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

    prefix = f"conductor_online_cost/{serve.get_replica_context().app_name}/"  # the loop's
    out: dict[str, Any] = {}
    for key in _internal_kv_list(prefix):
        try:
            body = json.loads(_internal_kv_get(key) or b"{}")
        except ValueError:
            continue
        out[key.decode()[len(prefix):] if isinstance(key, bytes) else key[len(prefix):]] = body
    return out


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, planner: Any, settings: dict[str, Any], pool: Any, limits: Any,
                 traffic: Any):
        """`pool` (the shared worker proxies), `limits` (the key limits actor, None without
        keys) and `traffic` (the traffic writer) come built from the graph (`build_app`)."""
        from ray_conductor.serve.config import as_serve_config
        from ray_conductor.serve.host import PolicyHost
        from ray_conductor.serve.keys import KeyRing
        from ray_conductor.serve.questions import QuestionIndex
        from ray_conductor.workers.config import as_pool_config

        cfg = as_serve_config(settings["config"])
        keys = KeyRing(settings.get("keys") or [])
        limits = _Limits(limits) if limits is not None and keys.enabled else None
        pool_cfg = as_pool_config(settings["pool_config"])
        replay = frozenset(w.name for w in pool_cfg.workers if w.model.startswith("replay/"))
        questions = QuestionIndex.from_pool(cfg.pool, cfg.data_dir) if replay and cfg.pool \
            else None
        self.max_body, self.body_timeout_s = cfg.max_body_bytes, cfg.body_timeout_s
        self.traffic = _Traffic(traffic)
        self.planner = _RemotePlanner(planner) if planner is not None else None
        self.host = PolicyHost(_local_loader(cfg, list(pool.workers())), self.planner,
                               cfg.plan_batch_size, cfg.plan_batch_wait_s)
        self.versions: dict[str, str] = {}
        self.swap_error: str | None = None
        self.gateway = Gateway(
            GatewaySettings(cfg.pool, replay, cfg.max_body_bytes, cfg.max_prompt_chars,
                            cfg.call_timeout_s, (cfg.orchestration_input_price_per_mtok,
                                                 cfg.orchestration_output_price_per_mtok),
                            default_budget=cfg.limits.dollars_per_day,
                            output_cap=cfg.limits.output_tokens_cap,
                            reward_range=tuple(cfg.feedback_reward_range),  # type: ignore[arg-type]
                            fallbacks={w.name: tuple(w.fallbacks) for w in pool_cfg.workers}),
            planner=self.host, pool=pool, keys=keys, limits=limits, traffic=self.traffic,
            questions=questions)
        if not keys.enabled:
            log.warning("no API keys configured: answering clients on this machine only")

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the policies `user_config` names and swap them in. A swap that fails to load
        keeps the live policies (and reports why in `whoami`); only a replica with no policy
        yet fails, so a bad first config is a failed deploy with the reason."""
        refs = dict(user_config.get("policies") or {})
        try:
            self.versions = await asyncio.to_thread(self.host.update, refs)
            self.swap_error = None
            limit_threads()
        except Exception as e:  # a bad new version must not take the live ones down
            if not self.host.policies.names():
                raise
            self.swap_error = f"{refs}: {type(e).__name__}: {e}"
            log.error("policy swap refused, still serving %s: %s", self.versions, e)

    async def __del__(self) -> None:
        """Serve's graceful shutdown (Serve awaits it, after the last request): hand the
        last rows to the writer."""
        traffic = getattr(self, "traffic", None)
        if traffic is not None:
            await traffic.close()

    async def _answer(self, endpoint: str, request: Request) -> Response:
        h = request.headers
        return to_response(await self.gateway.answer(
            endpoint, lambda: read_body(request, self.max_body, self.body_timeout_s),
            h.get("authorization"), _client(request), h.get("x-conductor-timeout-s")))

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._answer("chat", request)

    @api.post("/v1/responses")
    async def responses(self, request: Request) -> Response:
        return await self._answer("responses", request)

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        return to_response(await self.gateway.models(request.headers.get("authorization"),
                                                     _client(request)))

    @api.post("/v1/feedback")
    async def feedback(self, request: Request) -> Response:
        return to_response(await self.gateway.feedback(
            lambda: read_body(request, 100_000, self.body_timeout_s),
            request.headers.get("authorization"), _client(request)))

    @api.get("/healthz")
    async def healthz(self, request: Request) -> Response:
        """Alive, which replica answered, the live policy versions (the planner's too), and
        the client address as this replica sees it."""
        me = await self.whoami()
        if me.get("planner_error"):
            return JSONResponse({"status": "degraded", "ingress": me,
                                 "error": me["planner_error"]}, 503)
        return JSONResponse({"status": "ok", "ingress": me, "client": _client(request),
                             "learning": online_learning_cost()})

    # -- called through a deployment handle (`app.served`, `app.swap_policy`) ----------------
    async def describe(self) -> dict[str, dict[str, Any]]:
        return await self.host.describe()

    async def whoami(self) -> dict[str, Any]:
        ctx = serve.get_replica_context()
        out: dict[str, Any] = {
            "pid": os.getpid(), "replica": ctx.replica_id.unique_id,
            "versions": dict(self.versions), "swap_error": self.swap_error,
            "batches": len(self.host.batches), "max_batch": max(self.host.batches, default=0)}
        if self.planner is not None:
            try:
                out["planner"] = await self.planner.whoami()
            except ServeError as e:
                out["planner_error"] = e.message
        return out

