"""The OpenAI chat-completions wire format, as far as the local server speaks it: a request
checked field by field (a bad one is a 400 in OpenAI's error shape, never a silent default),
and the response, stream-chunk and error bodies. Pure: no torch, no HTTP server.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ray_conductor.errors import BadRequest

DEFAULT_MAX_TOKENS = 64
MAX_TOKENS_CAP = 1024
ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatRequest:
    """What the server needs from a `/v1/chat/completions` body."""

    messages: list[dict[str, str]]
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise BadRequest(f"`{key}` must be a number, got {value!r}", param=key)
    if not lo <= value <= hi:
        raise BadRequest(f"`{key}` must be between {lo:g} and {hi:g}, got {value!r}", param=key)
    return float(value)


def _content(m: dict[str, Any], i: int) -> str:
    """A message's text: a string, or a list of text parts (images are not supported)."""
    content = m.get("content")
    if content is None and m.get("role") == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise BadRequest(f"messages[{i}].content must be a string or a list of text parts",
                     param=f"messages[{i}].content")


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list of {role, content}",
                         param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}] needs a role, one of {', '.join(ROLES)}",
                             param=f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _content(m, i)})
    return out


def _max_tokens(body: dict[str, Any]) -> int:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    value = body.get(key)
    if value is None:
        return DEFAULT_MAX_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"`{key}` must be a positive integer, got {value!r}", param=key)
    return min(value, MAX_TOKENS_CAP)


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream, options = body.get("stream") or False, body.get("stream_options")
    if not isinstance(stream, bool):
        raise BadRequest(f"`stream` must be true or false, got {stream!r}", param="stream")
    if options is None:
        return stream, False
    if not stream:
        raise BadRequest("`stream_options` is only allowed with `stream: true`",
                         param="stream_options")
    if not isinstance(options, dict):
        raise BadRequest("`stream_options` must be an object", param="stream_options")
    return stream, bool(options.get("include_usage"))


def parse_request(raw: bytes, model_name: str) -> ChatRequest:
    """The request, or `BadRequest` naming the field that is wrong."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise BadRequest(f"the model {model!r} does not exist here; this server answers as "
                         f"{model_name!r}", param="model", code="model_not_found", status=404)
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("only n=1 is supported", param="n")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"`seed` must be an integer, got {seed!r}", param="seed")
    stream, include_usage = _stream(body)
    return ChatRequest(_messages(body), _max_tokens(body),
                       _number(body, "temperature", 0.0, 0.0, 2.0),
                       _number(body, "top_p", 1.0, 0.0, 1.0), seed, stream, include_usage)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(n_in: int, n_out: int) -> dict[str, int]:
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


def completion_body(model: str, text: str, finish: str, n_in: int, n_out: int
                    ) -> dict[str, Any]:
    return {"id": new_id(), "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": text}}],
            "usage": usage(n_in, n_out)}


def chunk(cid: str, created: int, model: str, delta: dict[str, Any] | None,
          finish: str | None = None, usage_: dict[str, int] | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk`; `delta` None is the usage-only chunk (no choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}]
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, "usage": usage_}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
