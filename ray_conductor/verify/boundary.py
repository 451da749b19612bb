"""The code under test and its tests in two sandboxes, with only plain values between them.

`run_across(program, tests, candidates)` starts two sandboxed processes (`sandbox.spawn`,
every layer in each): the program runs in one and answers calls (sandbox_across `serve`);
the tests run in the other, where each name in `candidates` is a stand-in that sends its
arguments across and gets back a value decoded by `sandbox_values.decode` (exact plain types,
documented there). The tests, the expected values and the comparisons never enter the
program's process, so the program cannot read the tests' frames or bytecode (`sys._getframe`,
`f_back`, a traceback, `inspect`) and cannot return an object that lies about equality (an
`__eq__` that always says yes, `mock.ANY`, an `int` subclass): what arrives is a plain `int`.
The verdict is still the run's nonce, written by the tests' process only when the tests
return (a dead or misbehaving program raises `CandidateGone`, which no test can catch).

`crossing_names(tests)` says whether a test script has a shape this handles: the tests may
only *call* the program's names (`f(x) == y`, `check(candidate)`); a name of the program used
as a value (`f.__name__`, `isinstance(r, Node)`, passing `f` along) cannot cross, and such
tests run in the shared process as before (`verify.code` counts them).
"""

from __future__ import annotations

import ast
import builtins
import os
import secrets
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from ray_conductor.verify.sandbox import SandboxResult, check_report, kill_group, prepare, spawn

_BUILTINS = frozenset(dir(builtins))


def run_across(program: str, tests: str, candidates: Sequence[str], *,
               imports: Sequence[str] = (), timeout_s: float = 10.0,
               max_output_bytes: int = 1 << 20, **options: Any) -> SandboxResult:
    """Run `tests` against `program` across the boundary. `candidates`: the program's names
    the tests call; `imports`: stdlib modules the tests use without importing them (they
    relied on the program's imports). `options`: `sandbox.prepare`'s (limits, switches).
    `passed` is the verdict; `stdout` is the program's; `stderr` both processes'."""
    setup = prepare(timeout_s=timeout_s, max_output_bytes=max_output_bytes, **options)
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    nonce = secrets.token_hex(32)
    sides = {
        "serve": ({"role": "serve", "code": program, "request_fd": request_r,
                   "reply_fd": reply_w}, (request_r, reply_w), timeout_s + 1.0),
        "trusted": ({"role": "trusted", "tests": tests, "candidates": list(candidates),
                     "imports": list(imports), "nonce": nonce, "request_fd": request_w,
                     "reply_fd": reply_r}, (request_w, reply_r), timeout_s),
    }
    runs: dict[str, Any] = {}
    procs: dict[str, Any] = {}
    started = threading.Semaphore(0)

    def side(name: str) -> None:
        payload, fds, limit = sides[name]
        try:
            runs[name] = spawn(setup, payload, limit, max_output_bytes, fds=fds,
                               started=lambda p: (procs.__setitem__(name, p), started.release()))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            runs[name] = e
        finally:
            if name not in procs:
                started.release()

    threads = {n: threading.Thread(target=side, args=(n,), daemon=True) for n in sides}
    try:
        for t in threads.values():
            t.start()
        for _ in threads:
            started.acquire()
    finally:  # the children hold their ends now: an end closes when its holder dies
        for fd in (request_r, request_w, reply_r, reply_w):
            os.close(fd)
    threads["trusted"].join()
    if "serve" in procs:
        kill_group(procs["serve"])
    threads["serve"].join()
    return _result(runs, setup.unsafe_ok, nonce)


def _result(runs: dict[str, Any], unsafe_ok: bool, nonce: str) -> SandboxResult:
    for r in runs.values():
        if isinstance(r, BaseException):
            raise r
    program, tests = runs["serve"], runs["trusted"]
    reports = {}
    for name, run in (("serve", program), ("trusted", tests)):
        reports[name], rest = run.pop("report")
        check_report(reports[name], run, unsafe_ok)
    passed = f"PASSED {nonce}\n".encode() in rest  # the tests' report (read last)
    stderr = "\n".join(x for x in (program["stderr"].strip(), tests["stderr"].strip()) if x)
    return SandboxResult(ok=tests["ok"], returncode=tests["returncode"],
                         stdout=program["stdout"], stderr=stderr,
                         timed_out=tests["timed_out"],
                         killed_reason=tests["killed_reason"] or (
                             None if program["killed_reason"] == "signal:9"
                             else program["killed_reason"]),
                         layers=tuple(reports["serve"].get("layers", ())), passed=passed,
                         boundary=True)


def crossing_names(tests: str, names: Iterable[str] | None = None
                   ) -> tuple[list[str], list[str], str | None]:
    """(the program's names the tests call, the stdlib modules they use unimported, None), or
    ([], [], why the tests cannot run across the boundary). `names`: the program's names
    (HumanEval: `candidate` and the entry point); default: every name the tests use but
    neither define nor import, other than builtins and stdlib modules."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return [], [], "the tests do not parse"
    loads, bound = _names(tree)
    free = loads - bound - _BUILTINS
    modules = sorted(n for n in free if n in sys.stdlib_module_names)
    wanted = sorted(free - set(modules)) if names is None else sorted(set(names))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in wanted and isinstance(node.ctx, ast.Load):
            parent = parents.get(node)
            if not (isinstance(parent, ast.Call) and parent.func is node):
                return [], [], (f"`{node.id}` is used as a value on line {node.lineno}, not "
                                "only called")
    return wanted, modules, None


def _names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names read, names the tests bind themselves)."""
    loads: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
    return loads, bound
