"""Both sides of the value boundary, as sandbox_child runs them (`boundary.run_across`).

* **serve** (the code under test's process): run the program as `__main__`, then answer
  call requests from the request pipe, one line each, until it closes. Nothing secret lives
  here (no test, no expected value, no nonce), so nothing here needs protecting from the
  program: it may rewrite this loop, and can still only send lines.
* **trusted** (the tests' process, where no untrusted code ever runs): run the tests with
  each name of the code under test bound to a `Candidate` that sends its calls across and
  decodes the reply with `sandbox_values.decode` (exact plain types, or the call fails). If
  the tests return, write the run's nonce on the report fd: the verdict.

Stdlib only and no package imports: sandbox_child loads this file by path.
"""

from __future__ import annotations

import builtins
import os
import sys

# raised in the tests' process for these names would change how Python runs, not what failed
_NOT_RERAISED = ("StopIteration", "StopAsyncIteration", "GeneratorExit")


class CandidateGone(BaseException):
    """The code under test died, or broke the protocol: no test may catch this
    (`except Exception`), so the tests cannot run to their end."""


# -- the code under test's side ---------------------------------------------------------------

def serve(payload: dict, values, run) -> None:
    """Run the program (`run(code, globals)`), then answer calls until the pipe closes."""
    g = {"__name__": "__main__", "__builtins__": builtins}
    sys.argv = ["<untrusted>"]
    run(payload["code"], g)
    reader = os.fdopen(payload["request_fd"], "rb")
    out = payload["reply_fd"]
    while True:
        line = reader.readline(values.MAX_LINE + 1)
        if not line:
            return
        try:
            reply = _answer(g, values.loads(line), values)
        except values.ValueRefused as e:
            reply = {"raised": "TypeError", "message": f"sandbox: {e}"}
        _write_all(out, values.dumps(reply))


def _answer(g: dict, msg: dict, values) -> dict:
    name = msg.get("call")
    fn = g.get(name) if type(name) is str else None
    if fn is None:
        return {"raised": "NameError", "message": f"name {name!r} is not defined"}
    args = [values.decode(a) for a in msg.get("args") or []]
    kwargs = {k: values.decode(v) for k, v in msg.get("kwargs") or [] if type(k) is str}
    try:
        result = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the tests decide what an exception means
        return {"raised": _builtin_name(e), "message": str(e)[:500]}
    try:
        return {"value": values.encode_result(result)}
    except (values.ValueRefused, RecursionError) as e:
        return {"raised": "TypeError", "message": f"sandbox: the result cannot cross the "
                                                  f"boundary: {e}"}


def _builtin_name(e: BaseException) -> str:
    """The nearest builtin exception class of `e` (a program's own subclass of ValueError
    arrives as ValueError)."""
    for cls in type(e).__mro__:
        if getattr(builtins, cls.__name__, None) is cls:
            return cls.__name__
    return "Exception"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- the tests' side -----------------------------------------------------------------------------

class Link:
    """The tests' end of the two pipes: one call at a time."""

    def __init__(self, request_fd: int, reply_fd: int, values):
        self.out, self.values = request_fd, values
        self.reader = os.fdopen(reply_fd, "rb")

    def call(self, name: str, args: tuple, kwargs: dict):
        v = self.values
        try:
            msg = {"call": name, "args": [v.encode(a) for a in args],
                   "kwargs": [[k, v.encode(x)] for k, x in kwargs.items()]}
        except (v.ValueRefused, RecursionError) as e:
            raise TypeError(f"sandbox: an argument cannot cross into the sandbox: {e}") from None
        try:
            _write_all(self.out, v.dumps(msg))
        except OSError:
            raise CandidateGone("the code under test ended before it was called") from None
        line = self.reader.readline(v.MAX_LINE + 1)
        if not line:
            raise CandidateGone("the code under test ended before it answered")
        try:
            reply = v.loads(line)
            if "value" in reply and len(reply) == 1:
                return v.decode(reply["value"])
        except (v.ValueRefused, RecursionError) as e:
            raise CandidateGone(f"the code under test answered with no plain value: {e}") \
                from None
        raise _exception(reply)


def _exception(reply: dict) -> BaseException:
    """The builtin exception the code under test raised (its message as text), or
    `CandidateGone` for a reply that is neither a value nor an exception."""
    name, message = reply.get("raised"), reply.get("message")
    if type(name) is not str or type(message) is not str or len(reply) != 2:
        return CandidateGone("the code under test answered with no plain value")
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)) or name in _NOT_RERAISED:
        cls = RuntimeError
    for base in cls.__mro__:  # e.g. UnicodeDecodeError needs 5 arguments: ValueError then
        try:
            return base(message[:500])
        except TypeError:
            continue
    return RuntimeError(message[:500])


class Candidate:
    """What the tests call in place of a function of the code under test."""

    def __init__(self, link: Link, name: str):
        self._link, self.__name__ = link, name

    def __call__(self, *args, **kwargs):
        return self._link.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<sandboxed {self.__name__}>"


def trusted(payload: dict, values, report_fd: int, run) -> None:
    """Run the tests against the candidates; write the nonce if they return. Never returns."""
    link = Link(payload["request_fd"], payload["reply_fd"], values)
    candidates = {n: Candidate(link, n) for n in payload["candidates"]}
    g = {"__name__": "__main__", "__builtins__": builtins, "_rc_candidates": candidates,
         **candidates}
    for name in payload.get("imports") or []:
        g[name] = __import__(name)
    nonce = payload.pop("nonce")
    try:
        run(payload["tests"], g)
    except BaseException:  # noqa: BLE001 - printed, and the verdict is not written
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os.write(report_fd, f"PASSED {nonce}\n".encode())
    sys.stdout.flush()
    os._exit(0)
