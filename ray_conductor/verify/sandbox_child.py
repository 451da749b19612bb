"""The sandbox's second stage: the trusted harness that runs untrusted code (and its tests).

`exec`ed by sandbox_setup, already inside the namespaces, Landlock and seccomp, as
`python -I -S -B -u sandbox_child.py <config JSON>`; stdin carries the payload as JSON
(`role`, then `code`, `tests`, `nonce`, ... as the role needs). It installs the audit hook,
reports the active layers on the report fd, then, by role:

* **plain**: the code runs as `__main__` in the main thread; the exit status is the result.
* **serve** / **trusted**: the two sides of the value boundary (see sandbox_across): the code
  under test answers calls in one sandbox, the tests run in another.
* **shared** (the code and its tests in this one process): whether the tests passed must not
  be forgeable by the code under test, which shares this process (an exit status of 0, or a
  marker on stdout, is). The verdict is the
  run's random nonce, written on the report fd right after the tests return. A worker thread
  does the whole run as one chain of C calls (`deque.extend` over `itertools.starmap` of
  `exec`, `dict.update`, `os.write`...), so no Python frame holds the chain: the code's frames
  begin at the code itself (and `f_back` from the tests' frames ends there too), the nonce
  lives only inside the chain, reachable from the worker's C state alone, and the only way to
  reach the `os.write` that carries it is for `exec` of the tests to return. The main thread
  never runs untrusted code: after starting the worker it only calls prebound C functions and
  allocates no tracked object, so no garbage-collector callback or finaliser runs on it;
  signal handlers cannot be installed from the worker, SIGINT is ignored, and the audit hook
  refuses `sys._current_frames`, `gc.get_objects`/`get_referrers`, tracing and `ctypes`.
  The tests run in a copy of the code's namespace whose builtins are a copy taken before the
  code ran, so patching the `builtins` module cannot change what the tests call. (A function
  the tests call can still reach their namespace through its caller's frame: that is a lie
  about values, like an `__eq__` that always says yes, not a forged verdict.)

Stdlib only and no package imports: run as a script.
"""

from __future__ import annotations

import builtins
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
THREAD_STACK = 16 << 20  # the worker's C stack: twice the usual main-thread default
NOT_PASSED = b"sandbox: the tests did not run to the end\n"


def load(name: str):
    """A sibling module of this file, by path (the package itself is not importable here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_rc_" + name, os.path.join(HERE, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def print_failure(unraisable) -> None:
    """`sys.unraisablehook` for the worker: just the traceback of what stopped the tests."""
    sys.__excepthook__(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)


def run_code(filename: str):
    """`run(code, globals)`: compile and execute, under `filename` in tracebacks."""
    def run(code: str, g: dict) -> None:
        exec(compile(code, filename, "exec"), g)  # noqa: S102  (what the sandbox is for)

    return run


def run_plain(code: str) -> None:
    sys.argv = ["<untrusted>"]
    g = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(code, "<untrusted>", "exec"), g)  # noqa: S102  (what the sandbox is for)


def run_tests(payload: dict, report_fd: int) -> None:
    """Run the code, then the tests in a copy of its namespace, on a worker thread; the worker
    writes the verdict on `report_fd` right after the tests return. Never returns."""
    import _thread
    import collections
    import itertools
    import operator
    import signal
    import threading  # noqa: F401  (imported here, so that it knows the real main thread)

    if not hasattr(_thread, "_set_sentinel"):
        raise RuntimeError("sandbox: the test harness needs CPython 3.11 or 3.12")
    sys.argv = ["<untrusted>"]
    user_code = compile(payload["code"], "<untrusted>", "exec")
    test_code = compile(payload["tests"], "<tests>", "exec")
    user_g = {"__name__": "__main__", "__builtins__": builtins}
    test_g: dict = {}
    done: list = []
    box: list = []  # the worker's sentinel: a lock its thread state releases when it ends
    started = _thread.allocate_lock()
    started.acquire()
    call = operator.call
    work = (itertools.chain(
        map(box.append, itertools.starmap(call, [(_thread._set_sentinel,)])),
        map(call, map(getattr, iter(box), ["acquire"])),  # the worker holds its sentinel
        itertools.starmap(call, [
            (started.release,),
            (exec, user_code, user_g),
            (test_g.update, user_g),
            (test_g.__setitem__, "__builtins__", dict(builtins.__dict__)),
            (exec, test_code, test_g),
            # the nonce goes straight into this list, held only by the worker's C call
            (os.write, report_fd, f"PASSED {payload.pop('nonce')}\n".encode()),
            (done.append, True),
        ])),)
    wait_started, wait_sentinel, write, exit_ = (started.acquire, _thread.LockType.acquire,
                                                 os.write, os._exit)
    not_passed = NOT_PASSED
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.unraisablehook = print_failure
    _thread.stack_size(THREAD_STACK)
    _thread.start_new_thread(collections.deque(maxlen=0).extend, work)
    del work
    # from here on: no new Python objects, no Python calls, only these C functions
    wait_started()
    wait_sentinel(box[0])  # returns once the worker's thread state is gone
    if not done:
        write(2, not_passed)
    exit_(0 if done else 1)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    sys.path.extend(cfg["package_roots"])  # READ_PACKAGES (numpy), read-only
    payload = json.loads(sys.stdin.buffer.read())
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    layers = list(cfg["layers"])
    if cfg["audit"]:
        hook = load("sandbox_audit").make_hook(cfg["root"], cfg["stdlib"], os, builtins, sys,
                                                   cfg["packages"])
        sys.addaudithook(hook)
        del hook  # reachable from the untrusted code's frames otherwise (plain runs)
        layers.append("audit")
    report = {"layers": layers, "why": cfg["why"]}
    os.write(cfg["report_fd"], (json.dumps(report) + "\n").encode())
    role = payload["role"]
    if role in ("plain", "serve"):
        os.close(cfg["report_fd"])
    if role == "plain":
        run_plain(payload["code"])
    elif role == "serve":
        load("sandbox_across").serve(payload, load("sandbox_values"), run_code("<untrusted>"))
    elif role == "trusted":
        load("sandbox_across").trusted(payload, load("sandbox_values"), cfg["report_fd"],
                                       run_code("<tests>"))
    else:
        run_tests(payload, cfg["report_fd"])


if __name__ == "__main__":
    main()
