"""A fault-injecting OpenAI-compatible server on loopback, for tests and benchmarks.

It answers `/v1/chat/completions` and `/v1/models` like a provider would, and misbehaves on
purpose: latency, 429s with `Retry-After`, 5xx, hangs, and scripted sequences of outcomes, per
model, from a seeded generator so a test sees the same faults every run. With `stream: true`
it streams the answer word by word as server-sent events (`token_delay_s` between words, a
usage chunk with `stream_options.include_usage`), and can break off after
`fail_after_tokens` words (the connection cut, or an error event). Every request lands in
`log` (Authorization redacted, the messages it carried) so a test can count and read what the
provider actually received.

Runs in a background thread (`FaultServer().start()`), in a process of its own
(`FaultProcess()`), or in the foreground (`python -m ray_conductor.testing.fault_server
--port 8000`; `GET /_log` returns the request log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

OUTCOMES = ("ok", "429", "500", "503", "401", "400", "hang")


@dataclass
class Faults:
    """How one model misbehaves. Rates are probabilities per request; `script` is a list of
    outcomes (see OUTCOMES) served in order before the random ones take over."""

    latency_s: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float | None = 1.0  # None: send no Retry-After header
    rate_5xx: float = 0.0
    rate_hang: float = 0.0
    hang_s: float | None = None  # None: never answer (the client's timeout must fire)
    script: list[str] = field(default_factory=list)
    reply: str | None = None  # None: echo the start of the last message
    output_tokens: int | None = None  # None: one per word of the reply
    echo_key_in_errors: bool = False  # like providers that quote the bad key back
    token_delay_s: float = 0.0  # streaming: the wait before each word after the first
    fail_after_tokens: int | None = None  # streaming: break off after this many words
    stream_failure: str = "drop"  # "drop": cut the connection; "error": an error event


def _redact_headers(headers: Any) -> dict[str, str]:
    out = {}
    for k, v in headers.items():
        secret = k.lower() in ("authorization", "api-key", "x-api-key")
        out[k] = "[REDACTED]" if secret else v
    return out


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(_words(str(m.get("content", ""))) + 3 for m in messages)


def words_of(text: str) -> list[str]:
    """`text` cut before each word (whitespace stays with the word before): joined, exactly
    `text`."""
    return [w for w in re.split(r"(?<=\s)(?=\S)", text) if w] or [""]


class FaultServer:
    """The server. `configure(model=None, **faults)` changes behaviour at run time (None: the
    default for all models); `log` lists every request; `url` is the `/v1` base URL."""

    def __init__(self, faults: Faults | None = None, *, port: int = 0, seed: int = 0,
                 host: str = "127.0.0.1"):
        self.default = faults or Faults()
        self.per_model: dict[str, Faults] = {}
        self.log: list[dict[str, Any]] = []
        self.host, self.port = host, port
        self.seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- configuration ------------------------------------------------------------------------
    def configure(self, model: str | None = None, **changes: Any) -> None:
        with self._lock:
            base = self.default if model is None else self.per_model.get(model, self.default)
            changes.setdefault("script", list(base.script))  # never share a script list
            if model is None:
                self.default = replace(base, **changes)
            else:
                self.per_model[model] = replace(base, **changes)

    def reset(self) -> None:
        """Default behaviour for every model, an empty log, the generator re-seeded."""
        with self._lock:
            self.default, self.per_model, self.log = Faults(), {}, []
            self._rng = random.Random(self.seed)

    def requests(self, model: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.log if model is None or r["model"] == model]

    def _decide(self, model: str) -> tuple[Faults, str]:
        with self._lock:
            f = self.per_model.get(model, self.default)
            if f.script:
                return f, f.script.pop(0)
            x = self._rng.random()
            for outcome, rate in (("429", f.rate_429), ("500", f.rate_5xx), ("hang", f.rate_hang)):
                if x < rate:
                    return f, outcome
                x -= rate
            return f, "ok"

    # -- handlers -----------------------------------------------------------------------------
    async def _log(self, request: web.Request) -> web.Response:
        """The request log, for a server running in another process."""
        return web.json_response(self.requests())

    async def _models(self, request: web.Request) -> web.Response:
        names = sorted(set(self.per_model) | {"fault-default"})
        return web.json_response({"object": "list",
                                  "data": [{"id": n, "object": "model"} for n in names]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        t_arrive, mono = time.time(), time.monotonic()
        body = await request.json()
        model = str(body.get("model", ""))
        messages = body.get("messages") or [{}]
        faults, outcome = self._decide(model)
        entry = {"time": t_arrive, "monotonic": mono, "model": model, "outcome": outcome,
                 "headers": _redact_headers(request.headers), "body_keys": sorted(body),
                 "max_tokens": body.get("max_tokens"), "temperature": body.get("temperature"),
                 "stream": bool(body.get("stream")),
                 "last_message": str(messages[-1].get("content", ""))[:200],
                 "messages": [{"role": str(m.get("role")), "content": str(m.get("content"))[:4000]}
                              for m in messages if isinstance(m, dict)]}
        with self._lock:
            self.log.append(entry)
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        if outcome == "hang":
            await asyncio.sleep(faults.hang_s if faults.hang_s is not None else 3600.0)
            outcome = "ok"
        if outcome != "ok":
            return self._error(outcome, faults, request)
        if body.get("stream"):
            return await self._stream(request, model, body, faults)
        return web.json_response(self._completion(model, body, faults))

    async def _stream(self, request: web.Request, model: str, body: dict[str, Any],
                      faults: Faults) -> web.StreamResponse:
        """The answer as chat-completion chunks, one word each, `token_delay_s` apart (the
        first after `latency_s`, already waited); broken off after `fail_after_tokens`."""
        done = self._completion(model, body, faults)
        text, rid = done["choices"][0]["message"]["content"], done["id"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(data: dict[str, Any] | str) -> None:
            payload = data if isinstance(data, str) else json.dumps(data)
            await resp.write(f"data: {payload}\n\n".encode())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": rid, "object": "chat.completion.chunk", "created": done["created"],
                    "model": model, "choices": [{"index": 0, "delta": delta,
                                                 "finish_reason": finish}]}

        for i, word in enumerate(words_of(text)):
            if faults.fail_after_tokens is not None and i >= faults.fail_after_tokens:
                if faults.stream_failure == "error":
                    await send({"error": {"message": "The server had an error while streaming",
                                          "type": "server_error", "code": "server_error"}})
                    return resp
                assert request.transport is not None
                request.transport.close()  # the connection cut mid-body
                return resp
            if i and faults.token_delay_s:
                await asyncio.sleep(faults.token_delay_s)
            await send(chunk({"role": "assistant", "content": word} if i == 0
                             else {"content": word}))
        await send(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({**chunk({}), "choices": [], "usage": done["usage"]})
        await send("[DONE]")
        await resp.write_eof()
        return resp

    def _error(self, outcome: str, faults: Faults, request: web.Request) -> web.Response:
        status = int(outcome)
        kinds = {429: "rate_limit_error", 401: "invalid_api_key", 400: "invalid_request_error"}
        msg = {429: "Rate limit reached, slow down", 401: "Incorrect API key provided",
               400: "Bad request"}.get(status, "The server had an error")
        if faults.echo_key_in_errors:
            msg += f" (key: {request.headers.get('Authorization', '').removeprefix('Bearer ')})"
        headers = {}
        if status == 429 and faults.retry_after_s is not None:
            headers["Retry-After"] = f"{faults.retry_after_s:g}"
        err = {"error": {"message": msg, "type": kinds.get(status, "server_error"),
                         "code": kinds.get(status, "server_error")}}
        return web.json_response(err, status=status, headers=headers)

    def _completion(self, model: str, body: dict[str, Any], faults: Faults) -> dict[str, Any]:
        messages = body.get("messages") or []
        last = str(messages[-1].get("content", "")) if messages else ""
        text = faults.reply if faults.reply is not None else "echo: " + " ".join(last.split()[:8])
        p, c = _prompt_tokens(messages), faults.output_tokens or _words(text)
        return {
            "id": f"chatcmpl-fault-{len(self.log)}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_log", self._log)
        return app

    # -- lifecycle ----------------------------------------------------------------------------
    async def _serve(self, ready: threading.Event, errors: list[BaseException]) -> None:
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.2)
        try:
            await runner.setup()
            await web.TCPSite(runner, self.host, self.port).start()
            self.port = runner.addresses[0][1]
        except BaseException as e:  # handed to the caller of start()
            errors.append(e)
            ready.set()
            return
        ready.set()
        await self._stopping.wait()
        await runner.cleanup()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:  # hung handlers
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def start(self) -> "FaultServer":
        """Serve from a daemon thread; returns once the port is bound."""
        ready, errors = threading.Event(), []  # type: ignore[var-annotated]
        self._loop = asyncio.new_event_loop()
        loop = self._loop

        def run() -> None:
            loop.run_until_complete(self._serve(ready, errors))
            loop.close()

        self._thread = threading.Thread(target=run, name="fault-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(5)
        self._loop = self._thread = None

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class FaultProcess:
    """The server in a process of its own (its timestamps then owe nothing to the caller's
    event loop): `url` is the `/v1` base, `requests()` fetches the log over HTTP."""

    def __init__(self, latency_s: float = 0.0, seed: int = 0, timeout_s: float = 10.0,
                 reply: str | None = None, token_delay_s: float = 0.0, rate_429: float = 0.0,
                 rate_5xx: float = 0.0, rate_hang: float = 0.0, retry_after_s: float = 1.0):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.root = f"http://127.0.0.1:{port}"
        self.url = f"{self.root}/v1"
        extra = ["--reply", reply] if reply is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ray_conductor.testing.fault_server", "--port", str(port),
             "--latency-s", str(latency_s), "--seed", str(seed),
             "--token-delay-s", str(token_delay_s), "--rate-429", str(rate_429),
             "--rate-5xx", str(rate_5xx), "--rate-hang", str(rate_hang),
             "--retry-after-s", str(retry_after_s), *extra], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=1).read()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"the fault server on port {port} did not start")
                time.sleep(0.1)

    def requests(self) -> list[dict[str, Any]]:
        return json.loads(urllib.request.urlopen(f"{self.root}/_log", timeout=30).read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # hung handlers hold its shutdown up
            self.proc.kill()
            self.proc.wait(10)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-s", type=float, default=0.0)
    ap.add_argument("--rate-429", type=float, default=0.0)
    ap.add_argument("--retry-after-s", type=float, default=1.0)
    ap.add_argument("--rate-5xx", type=float, default=0.0)
    ap.add_argument("--rate-hang", type=float, default=0.0)
    ap.add_argument("--hang-s", type=float, default=None)
    ap.add_argument("--reply", default=None, help="the answer (default: an echo)")
    ap.add_argument("--token-delay-s", type=float, default=0.0)
    a = ap.parse_args(argv)
    faults = Faults(latency_s=a.latency_s, rate_429=a.rate_429, retry_after_s=a.retry_after_s,
                    rate_5xx=a.rate_5xx, rate_hang=a.rate_hang, hang_s=a.hang_s,
                    reply=a.reply, token_delay_s=a.token_delay_s)
    server = FaultServer(faults, port=a.port, seed=a.seed)
    print(f"fault server on http://127.0.0.1:{a.port}/v1 (request log: GET /_log)", flush=True)
    web.run_app(server.app(), host="127.0.0.1", port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
