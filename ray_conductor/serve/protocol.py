"""OpenAI's wire format as the serving app speaks it: chat-completions and Responses requests
checked field by field (a bad one is a `ServeError` naming the field, answered as a 4xx in
OpenAI's error shape, never a silent default), and the bodies, stream chunks, typed Responses
events and error bodies that the official `openai` client parses unchanged (those are
written by `serve.wire`). Pure: no Ray, no HTTP server.

Every parameter is either honoured or refused with a 400 naming it (`tools`, `tool_choice`,
`logprobs`, `n>1`, ...; `response_format` only where one worker answers); unknown ones are
refused as OpenAI refuses them. No error message echoes more than `ECHO_CHARS` characters of
what the caller sent, and text is made valid Unicode at the door (a lone surrogate becomes
U+FFFD), so nothing downstream (the workers, the JSON answer, the traffic log) chokes on it.

Extensions ride where the client keeps them (`model_dump()` shows unknown fields): the usage
block carries Fugu's orchestration token counts and the dollar cost, and every body a
`conductor` block with the workflow and its trace. A stream carries the run's progress: for
chat completions on chunks with an empty delta and a `conductor` event, for the Responses API
as typed `response.conductor.*` events; a failure mid-stream ends it with an error in
OpenAI's shape (`ChatStream`, `ResponsesStream`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ray_conductor.errors import ServeError

ROLES = ("system", "developer", "user", "assistant", "tool")
ECHO_CHARS = 200  # the most of a caller's input any error message repeats
TEXT_ONLY = "a conductor answers text only"
# parameters no conductor can honour: refused when present (with what to do instead)
CHAT_REFUSED = {
    "tools": TEXT_ONLY, "tool_choice": TEXT_ONLY, "functions": TEXT_ONLY,
    "function_call": TEXT_ONLY, "parallel_tool_calls": TEXT_ONLY, "audio": TEXT_ONLY,
    "prediction": "predicted outputs are not supported",
    "top_logprobs": "log-probabilities are not returned",
    "logit_bias": "a workflow's workers have different vocabularies",
    "reasoning_effort": "set it in the worker config instead",
    "web_search_options": "web search is not supported", "verbosity": "not supported"}
CHAT_ACCEPTED = {"model", "messages", "stream", "stream_options", "temperature", "top_p",
                 "max_tokens", "max_completion_tokens", "seed", "stop", "n", "metadata",
                 "user", "store", "presence_penalty", "frequency_penalty", "response_format",
                 "logprobs", "modalities", "service_tier", "safety_identifier",
                 "prompt_cache_key"}
RESPONSES_REFUSED = {
    "tools": TEXT_ONLY, "tool_choice": TEXT_ONLY, "parallel_tool_calls": TEXT_ONLY,
    "max_tool_calls": TEXT_ONLY,
    "previous_response_id": "send the whole conversation in `input`",
    "conversation": "send the whole conversation in `input`",
    "prompt": "prompt templates are not supported", "reasoning": "set it in the worker config",
    "top_logprobs": "log-probabilities are not returned",
    "background": "background responses are not supported"}
RESPONSES_ACCEPTED = {"model", "input", "instructions", "stream", "stream_options",
                      "max_output_tokens", "temperature", "top_p", "metadata", "user", "store",
                      "text", "truncation", "include", "service_tier", "safety_identifier",
                      "prompt_cache_key"}


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
    response_format: dict[str, Any] | None = None  # a structured-output request (not text)

    @property
    def _last_user(self) -> int:
        return max(i for i, m in enumerate(self.messages) if m["role"] == "user")

    @property
    def question(self) -> str:
        """The last user message: what a conductor plans for and replay workers look up."""
        return self.messages[self._last_user]["content"]

    @property
    def context(self) -> list[dict[str, str]]:
        """The rest of the conversation, in the order sent: what every step of a workflow sees
        before its own message (the system prompt and the earlier turns)."""
        i = self._last_user
        return self.messages[:i] + self.messages[i + 1:]

    @property
    def prompt_chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages)


# -- reading requests --------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """`text` as valid Unicode: surrogate pairs joined, lone surrogates (valid JSON escapes,
    but not encodable as UTF-8) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def clip(text: Any, n: int = ECHO_CHARS) -> str:
    """At most `n` characters of `text` (for messages that quote a caller), marked if cut."""
    text = clean_text(text if isinstance(text, str) else repr(text))
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


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
    return clean_text(model.strip())


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
    return clip(repr(v), 40)


def _params(body: dict[str, Any], max_tokens_key: str) -> dict[str, Any]:
    """Sampling parameters for the workers, validated; absent ones are left to the worker."""
    out: dict[str, Any] = {"temperature": _number(body, "temperature", 0.0, 2.0),
                           "top_p": _number(body, "top_p", 0.0, 1.0),
                           "max_tokens": _positive_int(body, max_tokens_key),
                           "presence_penalty": _number(body, "presence_penalty", -2.0, 2.0),
                           "frequency_penalty": _number(body, "frequency_penalty", -2.0, 2.0)}
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


def _unsupported(key: str, why: str) -> ServeError:
    return ServeError(f"`{key}` is not supported here: {why}", param=key,
                      code="unsupported_parameter")


def _check_keys(body: dict[str, Any], accepted: set[str], refused: dict[str, str]) -> None:
    """Every parameter is one the app honours: a refused one present (even empty, as
    `tools: []`) or an unknown one is a 400 naming it."""
    for key, value in body.items():
        if key in refused and value is not None:
            raise _unsupported(key, refused[key])
        if key not in accepted and key not in refused:
            raise ServeError(f"unrecognized request argument supplied: {clip(key, 60)}",
                             param=clip(key, 60), code="unknown_parameter")
    n = body.get("n")
    if n is not None and n != 1:
        raise _unsupported("n", "a workflow gives one answer: send n=1, or several requests")
    if body.get("logprobs") not in (None, False):
        raise _unsupported("logprobs", "log-probabilities are not returned")
    if body.get("modalities") not in (None, ["text"]):
        raise _unsupported("modalities", TEXT_ONLY)
    if body.get("service_tier") not in (None, "auto", "default"):
        raise _unsupported("service_tier", "only the default tier is served")
    for key in ("user", "safety_identifier", "prompt_cache_key"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ServeError(f"`{key}` must be a string", param=key)
    if body.get("store") is not None and not isinstance(body["store"], bool):
        raise ServeError("`store` must be true or false", param="store")


def _response_format(fmt: Any, param: str) -> dict[str, Any] | None:
    """A structured-output request, or None for plain text."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise ServeError(f"`{param}` must be an object with a `type`", param=param)
    if fmt["type"] == "text":
        return None
    if fmt["type"] not in ("json_object", "json_schema"):
        raise ServeError(f"`{param}.type` must be text, json_object or json_schema, got "
                         f"{_show(fmt['type'])}", param=f"{param}.type")
    return fmt


def _text_parts(content: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts (no images or audio)."""
    if isinstance(content, str):
        return clean_text(content)
    kinds = ("text", "input_text", "output_text")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") in kinds
                                         and isinstance(p.get("text"), str) for p in content):
        return clean_text("".join(p["text"] for p in content))
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
    qid = meta.get("query_id")
    if qid is not None and len(qid) > 200:
        raise ServeError("`metadata.query_id` is over 200 characters", param="metadata.query_id")
    return clean_text(qid) if qid else None


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
    _check_keys(body, CHAT_ACCEPTED, CHAT_REFUSED)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ServeError("`messages` must be a non-empty list of {role, content}",
                         param="messages")
    msgs = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    stream, include_usage = _stream(body)
    return ApiRequest("chat", model, _with_a_user_turn(msgs, "messages"), stream,
                      include_usage, _params(body, "max_tokens"), _query_id(body),
                      _response_format(body.get("response_format"), "response_format"))


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
    _check_keys(body, RESPONSES_ACCEPTED, RESPONSES_REFUSED)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ServeError(f"`stream` must be true or false, got {_show(stream)}", param="stream")
    if body.get("stream_options") is not None and not stream:
        raise ServeError("`stream_options` is only allowed with `stream: true`",
                         param="stream_options")
    if body.get("include"):
        raise _unsupported("include", "no extra output is produced")
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise ServeError("`truncation` must be auto or disabled", param="truncation")
    msgs = _with_a_user_turn(_input_messages(body), "input")
    return ApiRequest("responses", model, msgs, stream, True,
                      _params(body, "max_output_tokens"), _query_id(body), _text_format(body))


def _text_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """The Responses API's `text.format` as a chat `response_format` (None: plain text)."""
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict) or set(text) - {"format", "verbosity"}:
        raise ServeError("`text` must be an object with `format`", param="text")
    if text.get("verbosity") is not None:
        raise _unsupported("text.verbosity", "not supported")
    fmt = _response_format(text.get("format"), "text.format")
    if fmt is None or fmt["type"] == "json_object":
        return fmt
    spec = {k: v for k, v in fmt.items() if k in ("name", "schema", "strict", "description")}
    return {"type": "json_schema", "json_schema": spec}
