"""The HTTP ingress: a FastAPI app behind `@serve.ingress`, shaped like Ray Serve LLM's
`OpenAiIngress` (which cannot be imported without vLLM or SGLang, ray-project/ray#64661).
A thin shell: it reads the body (bounded), hands it to the `Gateway` with Ray-backed ports
(the planner deployment, the shared worker proxies, the key-limits actor, the traffic
writer), and turns the `Reply` into an HTTP response. Unknown paths and methods answer in
OpenAI's error shape too.
"""

import asyncio
import logging  # no `from __future__ import annotations`: FastAPI reads the annotations
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_conductor.errors import ServeError
from ray_conductor.serve.gateway import Gateway, GatewaySettings, Reply, error_reply
from ray_conductor.serve.protocol import error_body

log = logging.getLogger(__name__)
api = FastAPI(title="ray_conductor", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(StarletteHTTPException)
async def _no_such_endpoint(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    what = {404: "no such endpoint", 405: "method not allowed here"}.get(exc.status_code,
                                                                         str(exc.detail))
    e = ServeError(f"{request.method} {request.url.path}: {what}; the endpoints are POST "
                   "/v1/chat/completions, POST /v1/responses, GET /v1/models, POST "
                   "/v1/feedback, GET /healthz", exc.status_code,
                   code="not_found" if exc.status_code == 404 else "method_not_allowed")
    return JSONResponse(error_body(e), status_code=exc.status_code)


def to_response(reply: Reply) -> Response:
    if reply.stream is not None:
        return StreamingResponse(iter(reply.stream), status_code=reply.status,
                                 media_type="text/event-stream", headers=reply.headers)
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (never read whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ServeError(f"the request body has {declared} bytes; the limit is {limit}", 413,
                         code="request_too_large")
    parts, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise ServeError(f"the request body is over the limit of {limit} bytes", 413,
                             code="request_too_large")
        parts.append(chunk)
    return b"".join(parts)


class _Planner:
    """The planner deployment; its being unreachable or overloaded is a 503, not a bug."""

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

    async def run(self, req: Any, query_id: Any, answer_format: Any, params: Any) -> Any:
        return await self._call("run", req, query_id, answer_format, params)

    async def describe(self) -> dict[str, Any]:
        return await self._call("describe")


class _Limits:
    def __init__(self, actor: Any):
        self.a = actor

    async def admit(self, key_id: str) -> str | None:
        return await self.a.admit.remote(key_id)

    def charge(self, key_id: str, dollars: float) -> None:
        self.a.charge.remote(key_id, dollars)


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


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, planner: Any, settings: dict[str, Any]):
        from ray_conductor.serve.actors import limits_actor, traffic_actor
        from ray_conductor.serve.config import as_serve_config
        from ray_conductor.serve.keys import KeyRing, load_keys
        from ray_conductor.serve.pool import serving_pool
        from ray_conductor.serve.questions import QuestionIndex
        from ray_conductor.workers.config import as_pool_config

        cfg = as_serve_config(settings["config"])
        ns, app = cfg.ray.namespace, cfg.app_name
        pool = serving_pool(ns, cfg.graph, settings["pool_config"])
        records = settings.get("keys")
        if records is None:  # deployed from a YAML: the keys come from its file or variable
            records = load_keys(cfg.api_keys, cfg.api_keys_file, cfg.api_keys_env)
        keys = KeyRing(records)
        limits = None
        if keys.enabled:
            per_key = {r.key_id: {"requests_per_minute": r.requests_per_minute,
                                  "dollars_per_day": r.dollars_per_day}
                       for r in keys.records()}
            default = {"requests_per_minute": cfg.limits.requests_per_minute,
                       "dollars_per_day": cfg.limits.dollars_per_day}
            limits = _Limits(limits_actor(app, ns, per_key, default))
        replay = frozenset(w.name for w in as_pool_config(settings["pool_config"]).workers
                           if w.model.startswith("replay/"))
        questions = QuestionIndex.from_pool(cfg.pool, cfg.data_dir) if replay and cfg.pool \
            else None
        self.max_body = cfg.max_body_bytes
        self.traffic = _Traffic(traffic_actor(app, ns, cfg.log_dir, cfg.log_buffer_rows,
                                              cfg.log_flush_s))
        self.gateway = Gateway(
            GatewaySettings(cfg.pool, replay, cfg.max_body_bytes, cfg.max_prompt_chars,
                            cfg.call_timeout_s, (cfg.orchestration_input_price_per_mtok,
                                                 cfg.orchestration_output_price_per_mtok)),
            planner=_Planner(planner), pool=pool, keys=keys, limits=limits,
            traffic=self.traffic,
            questions=questions)
        self.planner = planner
        if not keys.enabled:
            log.warning("no API keys configured: answering clients on this machine only")

    async def __del__(self) -> None:
        """Serve's graceful shutdown (Serve awaits it, after the last request): hand the
        last rows to the writer."""
        traffic = getattr(self, "traffic", None)
        if traffic is not None:
            await traffic.close()

    async def _answer(self, endpoint: str, request: Request) -> Response:
        try:
            raw = await read_body(request, self.max_body)
        except ServeError as e:
            return to_response(error_reply(e))
        h = request.headers
        return to_response(await self.gateway.answer(endpoint, raw, h.get("authorization"),
                                                     _client(request),
                                                     h.get("x-conductor-timeout-s")))

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
        try:
            raw = await read_body(request, 100_000)
        except ServeError as e:
            return to_response(error_reply(e))
        return to_response(await self.gateway.feedback(
            raw, request.headers.get("authorization"), _client(request)))

    @api.get("/healthz")
    async def healthz(self, request: Request) -> Response:
        """Alive, which planner replica answered, the live policy versions, and the client
        address as this replica sees it."""
        try:
            planner = await self.planner.whoami.remote()
        except Exception as e:  # the ingress is up; say what is not
            return JSONResponse({"status": "degraded", "planner": None,
                                 "error": f"planner unreachable: {type(e).__name__}"}, 503)
        return JSONResponse({"status": "ok", "planner": planner, "client": _client(request)})
