"""Run untrusted Python (model-written programs and their tests) in a sandbox.

Layers, outermost first, and what each one guarantees (`SandboxResult.layers` names the active
ones; `sandbox_setup`, `sandbox_kernel`, `sandbox_seccomp`, `sandbox_audit` and
`sandbox_child` hold the code that runs inside):

1. **A separate process tree** started by `unshare --user --map-root-user --pid --net --mount
   --mount-proc --fork --kill-child` ("userns", "pidns", "netns", "mountns"): no capability
   outside its user namespace (it cannot raise its own hard limits, even when the caller is
   root); other processes are invisible (no pid of theirs resolves, its parent included); only
   a loopback interface that is down; mounts stay private. A minimal environment (no API
   keys), a fresh temporary directory as cwd/HOME/TMPDIR, a wall-clock deadline after which
   the whole process group is killed.
2. **Resource limits** (soft = hard): address space, CPU seconds, size of any one file (stdout
   and stderr go to files, so this caps output too), open files, processes, no core dumps; and
   ("tmpfs") the working directory is a tmpfs of `max_disk_bytes` and `max_files` inodes,
   mounted noexec, so the total written to disk is capped, not just each file.
3. **Landlock** ("landlock-abiN"), kernel-enforced and irreversible: reads only of the stdlib
   (without site-packages, and without the lib-dynload modules that hand out raw memory, such
   as `_ctypes`), the system libraries and the working directory; writes only in the
   working directory; no `execve` but the interpreter's own; no TCP (ABI >= 4); no signals or
   abstract UNIX sockets outside the sandbox (ABI >= 6).
4. **seccomp** ("seccomp"): `prlimit`, `setpriority`, `sched_set*`, `ioprio_set`, `kill` and
   friends only on the process itself; no new processes (threads only), no new session, no
   `ptrace`, `process_vm_*`, `pidfd_*`, `mount`, `unshare`, `bpf`, `io_uring`, `keyctl`,
   `memfd_create` (Landlock would let a memfd be executed), sockets (socketpair stays), ...
5. **An audit hook** ("audit"): a Python-level tripwire that turns violations into clear
   `PermissionError("sandbox: ...")`s and refuses what the kernel cannot see (ctypes, crafted
   code objects, walking all objects or frames).

Layers 1-4 are required. Where one is missing (an old kernel, a container without user
namespaces) `run_untrusted` raises `SandboxError` instead of running the code, unless the
caller opts in with `allow_unsafe=True` or `RAY_CONDUCTOR_UNSAFE_SANDBOX=1`.

With `tests`, the verdict (`SandboxResult.passed`) comes from a trusted harness and a per-run
nonce the code under test cannot read (see sandbox_child): exiting 0 early, printing a marker,
patching builtins or `check`, or exiting from a thread or `atexit` does not pass. What stays
possible, as in every in-process Python test harness, is lying about values: a result whose
`__eq__` always says yes, a patched stdlib module the tests use, or a function that, called by
the tests, reaches their namespace through its caller's frame and changes what the later
asserts see. The verdict that the tests ran to their end is what cannot be forged.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Collection
from dataclasses import dataclass, field

from ray_conductor.errors import SandboxError

UNSAFE_ENV = "RAY_CONDUCTOR_UNSAFE_SANDBOX"
REQUIRED = ("namespaces", "tmpfs", "landlock", "seccomp")
NAMESPACES = ("userns", "pidns", "netns", "mountns")
UNPROTECTED = {
    "namespaces": "see, signal and re-limit other processes of this user, and reach the network",
    "tmpfs": "fill the disk",
    "landlock": "read every file this user can (/etc/passwd, the project, other processes' "
                "environments with their API keys) and write outside its directory",
    "seccomp": "change other processes' limits and priorities (prlimit, setpriority) and "
               "use ptrace, mount and other privileged system calls",
}
_HERE = os.path.dirname(os.path.abspath(__file__))
_SYSTEM_READ_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/dev/urandom", "/dev/zero",
                      "/dev/null")
_log = logging.getLogger(__name__)


@dataclass
class SandboxResult:
    """What happened. `ok` means exit status 0 within the limits -- which the code itself can
    produce (`os._exit(0)`); `passed` is the harness's verdict on `tests` (None without)."""

    ok: bool
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    # timeout, cpu_limit, memory, output_limit, disk_limit, blocked, signal:N
    killed_reason: str | None = None
    layers: tuple[str, ...] = field(default_factory=tuple)
    passed: bool | None = None


def run_untrusted(code: str, *, tests: str | None = None, timeout_s: float = 5.0,
                  memory_mb: int = 512, max_output_bytes: int = 1 << 20,
                  max_disk_bytes: int = 16 << 20, max_files: int = 1024,
                  max_open_files: int = 64, max_processes: int = 64,
                  allow_unsafe: bool | None = None, use_namespaces: bool = True,
                  use_landlock: bool = True, use_seccomp: bool = True,
                  use_audit_hook: bool = True,
                  simulate_missing: Collection[str] = ()) -> SandboxResult:
    """Run `code` as `__main__` in the sandbox and return what it printed and how it ended.

    With `tests` (trusted Python, e.g. asserts or `check(f)`), they run after `code` in a copy
    of its namespace and `passed` says whether they ran to the end. A failing program is a
    result, not an error; `SandboxError` means the sandbox could not start, or lacks a
    required layer and `allow_unsafe` (default: the `RAY_CONDUCTOR_UNSAFE_SANDBOX=1`
    environment variable) is off. The `use_*` switches turn one layer off to test the others
    alone, and `simulate_missing` ("namespaces", "tmpfs", "landlock", "seccomp") makes the
    sandbox behave as if this kernel lacked them; both count as missing layers.
    """
    unsafe_ok = _unsafe_allowed(allow_unsafe)
    prefix, ns_layers, ns_why = _namespaces(use_namespaces, simulate_missing)
    if ns_why and not unsafe_ok:
        raise _refusal({"namespaces": ns_why})
    cfg = {
        "layers": ns_layers, "why": {"namespaces": ns_why} if ns_why else {},
        "mountns": "mountns" in ns_layers, "required": [] if unsafe_ok else list(REQUIRED),
        "simulate_missing": sorted(simulate_missing), "stdlib": _stdlib(),
        "policy": read_policy(), "audit": use_audit_hook,
        "use": {"tmpfs": use_namespaces, "landlock": use_landlock, "seccomp": use_seccomp},
        "disk_bytes": max_disk_bytes, "files": max_files,
        "limits": {"RLIMIT_AS": memory_mb << 20, "RLIMIT_CPU": max(1, math.ceil(timeout_s)) + 1,
                   "RLIMIT_FSIZE": max_output_bytes, "RLIMIT_NOFILE": max_open_files,
                   "RLIMIT_NPROC": max_processes, "RLIMIT_CORE": 0},
    }
    nonce = secrets.token_hex(32)
    payload = json.dumps({"code": code, "tests": tests, "nonce": nonce}).encode("utf-8")
    cfg["root"] = os.path.realpath(tempfile.mkdtemp(prefix="rc-sandbox-"))
    try:
        run = _spawn(prefix, cfg, payload, timeout_s, max_output_bytes)
    finally:
        _rmtree(cfg["root"])
    report, rest = run.pop("report")
    _check_report(report, run, unsafe_ok)
    passed = None if tests is None else f"PASSED {nonce}\n".encode() in rest
    return SandboxResult(layers=tuple(report.get("layers", ())), passed=passed, **run)


def _check_report(report: dict, run: dict, unsafe_ok: bool) -> None:
    """Raise if the sandbox did not start or refused to; warn once if it ran unprotected."""
    if not report and not run["timed_out"]:
        tail = (run["stderr"].strip().splitlines() or ["no output"])[-1]
        raise SandboxError(f"the sandbox did not start (exit status {run['returncode']}): "
                           f"{tail[:300]}")
    if report.get("refused"):
        raise _refusal({k: report["why"].get(k, "missing") for k in report["refused"]})
    if report.get("why") and unsafe_ok:
        _warn_unsafe(report["why"])


def _unsafe_allowed(allow_unsafe: bool | None) -> bool:
    if allow_unsafe is not None:
        return allow_unsafe
    return os.environ.get(UNSAFE_ENV, "").strip() == "1"


def _refusal(why: dict[str, str]) -> SandboxError:
    names = ", ".join(f"{k} ({why[k]})" for k in REQUIRED if k in why)
    risks = "; ".join(UNPROTECTED[k] for k in REQUIRED if k in why)
    return SandboxError(
        f"refusing to run untrusted code: the sandbox lacks {names} here, so the code could "
        f"{risks}; set {UNSAFE_ENV}=1 or pass allow_unsafe=True to run it anyway",
        code="sandbox_unsafe")


_WARNED: set[str] = set()


def _warn_unsafe(why: dict[str, str]) -> None:
    key = ",".join(sorted(why))
    if key not in _WARNED:
        _WARNED.add(key)
        _log.warning("running untrusted code without %s (%s=1 / allow_unsafe)", key, UNSAFE_ENV)


def _stdlib() -> str:
    return os.path.realpath(sysconfig.get_paths()["stdlib"])


def read_policy() -> dict:
    """What Landlock lets the sandbox read: the stdlib (sandbox_kernel leaves out its
    site-packages and the unsafe lib-dynload modules), the system libraries, locale and time
    zone data, and the two files the harness loads after Landlock is on."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    trees = [p for p in (f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/lib64", "/lib64",
                         "/usr/lib/locale", "/usr/share/zoneinfo")
             if multiarch or not p.endswith("/")]
    dynload = [p for p in sys.path if p.rstrip("/").endswith("lib-dynload")]
    lib_dynload = dynload[0] if dynload else sysconfig.get_config_var("DESTSHARED")
    files = [*_SYSTEM_READ_FILES, os.path.join(_HERE, "sandbox_child.py"),
             os.path.join(_HERE, "sandbox_audit.py")]
    return {"stdlib": _stdlib(), "lib_dynload": lib_dynload and os.path.realpath(lib_dynload),
            "trees": trees, "files": files}


# -- namespaces: which `unshare` works here, found once by trying --------------------------------

_NS_PROBE: list[tuple[list[str], list[str]]] = []
_NS_LOCK = threading.Lock()
_NS_CANDIDATES = (
    (["--user", "--map-root-user", "--net", "--pid", "--mount", "--mount-proc", "--fork",
      "--kill-child"], ["userns", "pidns", "netns", "mountns"]),
    (["--user", "--map-root-user", "--net", "--pid", "--mount", "--fork", "--kill-child"],
     ["userns", "pidns", "netns", "mountns"]),
    (["--net", "--pid", "--mount", "--mount-proc", "--fork", "--kill-child"],
     ["pidns", "netns", "mountns"]),
    (["--user", "--map-root-user", "--net"], ["userns", "netns"]),
    (["--net"], ["netns"]),
)


def _namespaces(use: bool, simulate_missing: Collection[str]) -> tuple[list, list, str]:
    """(`unshare` prefix, namespace layers, why the required set is incomplete or "")."""
    if not use:
        return [], [], "switched off"
    if "namespaces" in simulate_missing:
        return [], [], "simulated missing"
    prefix, layers = _probe_namespaces()
    lacking = [n for n in NAMESPACES if n not in layers]
    return prefix, layers, ("no " + "/".join(lacking) + " via unshare") if lacking else ""


def _probe_namespaces() -> tuple[list[str], list[str]]:
    with _NS_LOCK:
        if not _NS_PROBE:
            found: tuple[list[str], list[str]] = ([], [])
            exe = shutil.which("unshare")
            for args, layers in _NS_CANDIDATES if exe else ():
                try:
                    r = subprocess.run([exe, *args, "--", "true"], capture_output=True,
                                       timeout=10, check=False)
                except (OSError, subprocess.TimeoutExpired):
                    continue
                if r.returncode == 0:
                    found = ([exe, *args, "--"], layers)
                    break
            _NS_PROBE.append(found)
        return _NS_PROBE[0]


# -- one run -------------------------------------------------------------------------------------

def _spawn(prefix: list[str], cfg: dict, payload: bytes, timeout_s: float,
           out_limit: int) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": cfg["root"], "TMPDIR": cfg["root"],
           "LANG": "C.UTF-8"}
    report_r, report_w = os.pipe()
    cfg["report_fd"] = report_w
    python = os.path.realpath(sys.executable)
    argv = [*prefix, python, "-I", "-S", "-B", os.path.join(_HERE, "sandbox_setup.py"),
            json.dumps(cfg)]
    timed_out = False
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(argv, cwd=cfg["root"], env=env, stdin=subprocess.PIPE,
                                        stdout=out, stderr=err, pass_fds=(report_w,),
                                        start_new_session=True, close_fds=True)
            except OSError as e:
                raise SandboxError(f"cannot start the sandbox process: {e}") from e
            finally:
                os.close(report_w)
            try:
                proc.communicate(input=payload, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            except BaseException:
                _kill_group(proc)
                raise
            stdout, stderr = _read_capped(out, out_limit), _read_capped(err, out_limit)
            out_size = max(os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size)
        report = _read_report(report_r)
    finally:
        os.close(report_r)
    rc = proc.returncode
    reason = "timeout" if timed_out else _killed_reason(rc, stderr, out_limit, out_size)
    return {"ok": rc == 0 and not timed_out, "returncode": rc, "stdout": stdout,
            "stderr": stderr, "timed_out": timed_out, "killed_reason": reason,
            "report": report}


def _read_capped(f, limit: int) -> str:
    f.seek(0)
    return f.read(limit).decode("utf-8", "replace")


def _read_report(fd: int) -> tuple[dict, bytes]:
    """The harness's first line (its layers, written before any untrusted code ran) and the
    rest (where the verdict is, among whatever the code itself may have written there)."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    first, _, rest = b"".join(chunks).partition(b"\n")
    try:
        report = json.loads(first or b"{}")
    except ValueError:
        report = {}
    return (report if isinstance(report, dict) else {}), rest


def _killed_reason(rc: int | None, stderr: str, out_limit: int, out_size: int) -> str | None:
    if rc is None or rc == 0:
        return None
    if rc == -signal.SIGXCPU or rc == 128 + signal.SIGXCPU:
        return "cpu_limit"
    if "MemoryError" in stderr:
        return "memory"
    if "File too large" in stderr or out_size >= out_limit:
        return "output_limit"
    if "No space left on device" in stderr:
        return "disk_limit"
    if "PermissionError: sandbox:" in stderr:
        return "blocked"
    if rc < 0:
        return f"signal:{-rc}"
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _rmtree(path: str) -> None:
    def fix(func, p, _exc):  # the code may have left read-only files or directories
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
