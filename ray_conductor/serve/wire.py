"""OpenAI's wire format, the writing side: answer bodies, stream chunks, typed Responses
events, error bodies and server-sent events, all parsed unchanged by the official `openai`
client (the reading side is `serve.protocol`). Extensions ride where the client keeps them:
the usage block carries the orchestration tokens and the dollar cost, every body a
`conductor` block; a failure mid-stream ends it with an error in OpenAI's shape. Pure.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray_conductor.errors import ServeError


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


class ChatStream:
    """The chunks of a streamed chat completion, as they become known: the role, the run's
    progress (an empty delta with a `conductor` event), the answer's text, then the finish
    (with the `conductor` block), with `include_usage` a last chunk with `choices: []` and
    usage, and `[DONE]`; or, if the run fails midway, an error in OpenAI's shape."""

    def __init__(self, rid: str, model: str, created: int, fingerprint: str,
                 include_usage: bool):
        self.rid, self.model, self.created = rid, model, created
        self.fingerprint, self.include_usage = fingerprint, include_usage

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None,
              **extra: Any) -> dict[str, Any]:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish}]
        out = {"id": self.rid, "object": "chat.completion.chunk", "created": self.created,
               "model": self.model, "system_fingerprint": self.fingerprint, "choices": choices}
        if self.include_usage:
            out["usage"] = None
        return {**out, **extra}

    def start(self) -> list[dict[str, Any]]:
        return [self.chunk({"role": "assistant", "content": ""})]

    def progress(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return [self.chunk({}, conductor=event)]

    def text(self, piece: str) -> list[dict[str, Any]]:
        return [self.chunk({"content": piece})] if piece else []

    def finish(self, usage: Usage, ext: dict[str, Any]) -> list[dict[str, Any] | str]:
        out: list[dict[str, Any] | str] = [self.chunk({}, "stop", conductor=ext)]
        if self.include_usage:
            out.append({**self.chunk(None), "usage": usage.chat()})
        return out + ["[DONE]"]

    def fail(self, e: ServeError) -> list[dict[str, Any] | str]:
        """What the official client raises as `APIError` (no `[DONE]`: the answer is cut)."""
        return [error_body(e)]

    @staticmethod
    def sse(item: dict[str, Any] | str) -> bytes:
        return sse(item)


def chat_chunks(rid: str, model: str, created: int, answer: str, usage: Usage,
                fingerprint: str, ext: dict[str, Any], include_usage: bool) -> list[Any]:
    """The whole stream of an answer known at once (the text in pieces)."""
    w = ChatStream(rid, model, created, fingerprint, include_usage)
    out: list[Any] = w.start()
    for p in pieces(answer):
        out += w.text(p)
    return out + [c for c in w.finish(usage, ext) if c != "[DONE]"]


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


class ResponsesStream:
    """The typed events of a streamed Response, in the order OpenAI sends them, numbered:
    created and in progress; the run's progress as `response.conductor.<event>`; the message
    item and its text as it arrives; done and completed. A failure midway is an `error`
    event and `response.failed`."""

    def __init__(self, rid: str, model: str, created: int):
        self.rid, self.model, self.created = rid, model, created
        self.seq, self.opened, self.text_so_far = 0, False, ""
        item_id = "msg_" + rid.removeprefix("resp_")
        self.where = {"item_id": item_id, "output_index": 0, "content_index": 0}

    def _ev(self, **e: Any) -> dict[str, Any]:
        e["sequence_number"] = self.seq
        self.seq += 1
        return e

    def start(self) -> list[dict[str, Any]]:
        started = responses_body(self.rid, self.model, self.created, None, None, None,
                                 "in_progress")
        return [self._ev(type="response.created", response=started),
                self._ev(type="response.in_progress", response=started)]

    def progress(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return [self._ev(type=f"response.conductor.{event.get('event', 'progress')}",
                         conductor=event)]

    def _open(self) -> list[dict[str, Any]]:
        if self.opened:
            return []
        self.opened = True
        return [self._ev(type="response.output_item.added", output_index=0,
                         item=_message_item(self.rid, "", "in_progress")),
                self._ev(type="response.content_part.added", **self.where,
                         part={"type": "output_text", "text": "", "annotations": [],
                               "logprobs": []})]

    def text(self, piece: str) -> list[dict[str, Any]]:
        if not piece:
            return []
        self.text_so_far += piece
        return self._open() + [self._ev(type="response.output_text.delta", **self.where,
                                        delta=piece, logprobs=[])]

    def finish(self, usage: Usage, ext: dict[str, Any]) -> list[dict[str, Any]]:
        item = _message_item(self.rid, self.text_so_far)
        return self._open() + [
            self._ev(type="response.output_text.done", **self.where, text=self.text_so_far,
                     logprobs=[]),
            self._ev(type="response.content_part.done", **self.where, part=item["content"][0]),
            self._ev(type="response.output_item.done", output_index=0, item=item),
            self._ev(type="response.completed", response=responses_body(
                self.rid, self.model, self.created, self.text_so_far, usage, ext))]

    def fail(self, e: ServeError) -> list[dict[str, Any]]:
        failed = responses_body(self.rid, self.model, self.created, None, None, None, "failed")
        failed["error"] = {"code": "rate_limit_exceeded" if e.status == 429 else "server_error",
                           "message": e.message}
        return [self._ev(type="error", code=e.code, message=e.message, param=e.param),
                self._ev(type="response.failed", response=failed)]

    @staticmethod
    def sse(item: dict[str, Any]) -> bytes:
        return sse(item, item["type"])


def responses_events(rid: str, model: str, created: int, answer: str, usage: Usage,
                     ext: dict[str, Any]) -> list[dict[str, Any]]:
    """The whole stream of an answer known at once (the text in pieces)."""
    w = ResponsesStream(rid, model, created)
    out = w.start()
    for p in pieces(answer):
        out += w.text(p)
    return out + w.finish(usage, ext)


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    """One server-sent event (`event:` for the Responses API's typed events)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"),
                                                         default=str)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def dumps(body: Any) -> bytes:
    """A JSON body as UTF-8 (non-ASCII kept), never failing on text a worker returned that
    is not valid Unicode (escaped then)."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                          default=str).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":"), default=str).encode("utf-8")


def now() -> int:
    return int(time.time())
