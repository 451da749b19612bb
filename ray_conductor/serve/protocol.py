"""OpenAI's wire format as the serving app speaks it: chat-completions and Responses requests
checked field by field (a bad one is a `ServeError` naming the field, answered as a 4xx in
OpenAI's error shape, never a silent default), and the bodies, stream chunks, typed Responses
events and error bodies that the official `openai` client parses unchanged. Pure: no Ray, no
HTTP server.

Extensions ride where the client keeps them (`model_dump()` shows unknown fields): the usage
block carries Fugu's orchestration token counts and the dollar cost, and every body a
`conductor` block with the workflow and its trace.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray_conductor.errors import ServeError

ROLES = ("system", "developer", "user", "assistant", "tool")
SAMPLING = ("temperature", "top_p", "max_tokens", "seed", "stop")
UNSUPPORTED = ("tools", "functions", "audio", "previous_response_id")


@dataclass(frozen=True)
class ApiRequest:
    """What the app needs from either endpoint's body: the messages in chat form, how to
    answer (stream or not), the sampling parameters passed to workers, and a replay query id
    (`metadata.query_id`) when the caller names a recorded question by id."""

    endpoint: str  # "chat" | "responses"
    model: str
    messages: list[dict[str, str]]
    stream: bool = False
    include_usage: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    query_id: str | None = None

    @property
    def question(self) -> str:
        """The last user message: what a conductor plans for and replay workers look up."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    @property
    def prompt_chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages)


# -- reading requests --------------------------------------------------------------------------


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ServeError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ServeError("the request body must be a JSON object")
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ServeError("`model` is required: a conductor policy or a worker name "
                         "(GET /v1/models lists them)", param="model")
    return model.strip()


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ServeError(f"`{key}` must be a number, got {_show(v)}", param=key)
    if not lo <= v <= hi:
        raise ServeError(f"`{key}` must be between {lo:g} and {hi:g}, got {v!r}", param=key)
    return float(v)


def _positive_int(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ServeError(f"`{key}` must be a positive integer, got {_show(v)}", param=key)
    return v


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _params(body: dict[str, Any], max_tokens_key: str) -> dict[str, Any]:
    """Sampling parameters for the workers, validated; absent ones are left to the worker."""
    out: dict[str, Any] = {"temperature": _number(body, "temperature", 0.0, 2.0),
                           "top_p": _number(body, "top_p", 0.0, 1.0),
                           "max_tokens": _positive_int(body, max_tokens_key)}
    if max_tokens_key == "max_tokens" and body.get("max_completion_tokens") is not None:
        out["max_tokens"] = _positive_int(body, "max_completion_tokens")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ServeError(f"`seed` must be an integer, got {_show(seed)}", param="seed")
    out["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if (not isinstance(stop, list) or len(stop) > 4
                or not all(isinstance(s, str) and s for s in stop)):
            raise ServeError("`stop` must be a string or a list of up to 4 strings",
                             param="stop")
        out["stop"] = stop
    return {k: v for k, v in out.items() if v is not None}


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for key in UNSUPPORTED:
        if body.get(key):
            what = ("send the whole conversation in `input`" if key == "previous_response_id"
                    else "a conductor answers text only")
            raise ServeError(f"`{key}` is not supported here: {what}", param=key,
                             code="unsupported_parameter")
    n = body.get("n")
    if n is not None and n != 1:
        raise ServeError("only n=1 is supported", param="n", code="unsupported_parameter")


def _text_parts(content: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts (no images or audio)."""
    if isinstance(content, str):
        return content
    kinds = ("text", "input_text", "output_text")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") in kinds
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ServeError(f"{where}.content must be a string or a list of text parts",
                     param=f"{where}.content")


def _message(m: Any, where: str) -> dict[str, str]:
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise ServeError(f"{where} needs a role, one of {', '.join(ROLES)}", param=f"{where}.role")
    content = m.get("content")
    if content is None and m["role"] == "assistant":
        content = ""
    role = "system" if m["role"] == "developer" else m["role"]
    return {"role": role, "content": _text_parts(content, where)}


def _with_a_user_turn(messages: list[dict[str, str]], param: str) -> list[dict[str, str]]:
    if not any(m["role"] == "user" for m in messages):
        raise ServeError("the conversation needs at least one user message: the last one is "
                         "the question", param=param)
    return messages


def _query_id(body: dict[str, Any]) -> str | None:
    meta = body.get("metadata")
    if meta is None:
        return None
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise ServeError("`metadata` must be an object of string values", param="metadata")
    return meta.get("query_id") or None


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream, options = body.get("stream") or False, body.get("stream_options")
    if not isinstance(stream, bool):
        raise ServeError(f"`stream` must be true or false, got {_show(stream)}", param="stream")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise ServeError("`stream_options` must be an object", param="stream_options")
    if not stream:
        raise ServeError("`stream_options` is only allowed with `stream: true`",
                         param="stream_options")
    return stream, bool(options.get("include_usage"))


def parse_chat(raw: bytes) -> ApiRequest:
    """A `/v1/chat/completions` body, or `ServeError` naming the field that is wrong."""
    body = _body(raw)
    model = _model(body)
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ServeError("`messages` must be a non-empty list of {role, content}",
                         param="messages")
    msgs = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    stream, include_usage = _stream(body)
    return ApiRequest("chat", model, _with_a_user_turn(msgs, "messages"), stream,
                      include_usage, _params(body, "max_tokens"), _query_id(body))


def _input_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """`instructions` and `input` (a string, or a list of message items) as chat messages."""
    out: list[dict[str, str]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ServeError("`instructions` must be a string", param="instructions")
        out.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str) and items:
        return out + [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise ServeError("`input` must be a non-empty string or a list of messages",
                         param="input")
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("type", "message") != "message":
            raise ServeError(f"input[{i}] is a {_show(item.get('type'))} item; only messages "
                             "are supported", param=f"input[{i}].type")
        out.append(_message(item, f"input[{i}]"))
    return out


def parse_responses(raw: bytes) -> ApiRequest:
    """A `/v1/responses` body, or `ServeError` naming the field that is wrong."""
    body = _body(raw)
    model = _model(body)
    _refuse_unsupported(body)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ServeError(f"`stream` must be true or false, got {_show(stream)}", param="stream")
    msgs = _with_a_user_turn(_input_messages(body), "input")
    return ApiRequest("responses", model, msgs, stream, True,
                      _params(body, "max_output_tokens"), _query_id(body))


# -- writing answers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Tokens and dollars of one request: the workers' and the conductor's own (orchestration),
    both included in the totals, as Fugu reports them."""

    input_tokens: int = 0  # workers
    output_tokens: int = 0
    orchestration_input_tokens: int = 0
    orchestration_output_tokens: int = 0
    worker_cost: float = 0.0
    orchestration_cost: float = 0.0

    @property
    def cost(self) -> float:
        return self.worker_cost + self.orchestration_cost

    def _cost(self) -> dict[str, Any]:
        return {"cost": round(self.cost, 10),
                "cost_details": {"workers": round(self.worker_cost, 10),
                                 "orchestration": round(self.orchestration_cost, 10)}}

    def chat(self) -> dict[str, Any]:
        p = self.input_tokens + self.orchestration_input_tokens
        c = self.output_tokens + self.orchestration_output_tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "prompt_tokens_details": {
                    "cached_tokens": 0,
                    "orchestration_input_tokens": self.orchestration_input_tokens},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "orchestration_output_tokens": self.orchestration_output_tokens},
                **self._cost()}

    def responses(self) -> dict[str, Any]:
        p = self.input_tokens + self.orchestration_input_tokens
        c = self.output_tokens + self.orchestration_output_tokens
        return {"input_tokens": p, "output_tokens": c, "total_tokens": p + c,
                "input_tokens_details": {
                    "cached_tokens": 0, "cache_write_tokens": 0,
                    "orchestration_input_tokens": self.orchestration_input_tokens},
                "output_tokens_details": {
                    "reasoning_tokens": 0,
                    "orchestration_output_tokens": self.orchestration_output_tokens},
                **self._cost()}


def new_id(endpoint: str) -> str:
    return ("chatcmpl-" if endpoint == "chat" else "resp_") + uuid.uuid4().hex[:24]


def error_body(e: ServeError) -> dict[str, Any]:
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


def pieces(text: str, size: int = 48) -> list[str]:
    """`text` in pieces of about `size` characters cut at word starts; joined they are
    exactly `text` (so a streaming client rebuilds the same answer)."""
    out, cur = [], ""
    for word in re.split(r"(?<=\s)(?=\S)", text):
        cur += word
        if len(cur) >= size:
            out.append(cur)
            cur = ""
    if cur or not out:
        out.append(cur)
    return out


def chat_body(rid: str, model: str, created: int, answer: str, usage: Usage,
              fingerprint: str, ext: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": answer,
                                     "refusal": None}}],
            "usage": usage.chat(), "conductor": ext}


def chat_chunks(rid: str, model: str, created: int, answer: str, usage: Usage,
                fingerprint: str, ext: dict[str, Any], include_usage: bool) -> list[dict]:
    """The chunks of a streamed answer: the role, the text in pieces, the finish (with the
    `conductor` block), and with `include_usage` a last chunk with `choices: []` and usage."""
    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish}]
        out = {"id": rid, "object": "chat.completion.chunk", "created": created,
               "model": model, "system_fingerprint": fingerprint, "choices": choices}
        if include_usage:
            out["usage"] = None
        return {**out, **extra}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in pieces(answer) if p]
    out.append(chunk({}, "stop", conductor=ext))
    if include_usage:
        out.append({**chunk(None), "usage": usage.chat()})
    return out


def _message_item(rid: str, answer: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": answer, "annotations": [], "logprobs": []}]
    return {"id": "msg_" + rid.removeprefix("resp_"), "type": "message", "status": status,
            "role": "assistant", "content": content if status == "completed" else []}


def responses_body(rid: str, model: str, created: int, answer: str | None, usage: Usage | None,
                   ext: dict[str, Any] | None, status: str = "completed") -> dict[str, Any]:
    """A Response object; `answer` None (and status in_progress) while a stream starts."""
    return {"id": rid, "object": "response", "created_at": created, "status": status,
            "model": model, "output": [] if answer is None else [_message_item(rid, answer)],
            "output_text": answer or "", "error": None, "incomplete_details": None,
            "instructions": None, "metadata": {}, "parallel_tool_calls": False,
            "temperature": None, "top_p": None, "tool_choice": "none", "tools": [],
            "text": {"format": {"type": "text"}}, "truncation": "disabled",
            "usage": usage.responses() if usage else None, "conductor": ext}


def responses_events(rid: str, model: str, created: int, answer: str, usage: Usage,
                     ext: dict[str, Any]) -> list[dict[str, Any]]:
    """The typed events of a streamed Response, in the order OpenAI sends them."""
    item = _message_item(rid, answer)
    part = item["content"][0]
    where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    started = responses_body(rid, model, created, None, None, None, "in_progress")
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0,
         "item": _message_item(rid, answer, "in_progress")},
        {"type": "response.content_part.added", **where,
         "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}]
    events += [{"type": "response.output_text.delta", **where, "delta": p, "logprobs": []}
               for p in pieces(answer) if p]
    events += [{"type": "response.output_text.done", **where, "text": answer, "logprobs": []},
               {"type": "response.content_part.done", **where, "part": part},
               {"type": "response.output_item.done", "output_index": 0, "item": item},
               {"type": "response.completed",
                "response": responses_body(rid, model, created, answer, usage, ext)}]
    return [{**e, "sequence_number": i} for i, e in enumerate(events)]


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    """One server-sent event (`event:` for the Responses API's typed events)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"),
                                                         default=str)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def now() -> int:
    return int(time.time())
