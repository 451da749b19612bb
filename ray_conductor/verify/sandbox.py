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
   **A filesystem view** ("view"): that tmpfs becomes the process's root (`pivot_root`, the
   old root detached) holding, at their own paths and read-only, only what the sandbox may
   read: the interpreter and its libraries, the stdlib without its site-packages, the system
   libraries, locale and time zone data, the harness's files and `READ_PACKAGES` (numpy).
   Every other host path does not exist in there, so `stat` (which Landlock cannot refuse)
   learns nothing about it.
3. **Landlock** ("landlock-abiN"), kernel-enforced and irreversible: reads only of the stdlib
   (without site-packages, and without the lib-dynload modules that hand out raw memory, such
   as `_ctypes`), `READ_PACKAGES`, the system libraries and the working directory; writes
   only in the
   working directory; no `execve` but the interpreter's own; no TCP (ABI >= 4); no signals or
   abstract UNIX sockets outside the sandbox (ABI >= 6).
4. **seccomp** ("seccomp"): `prlimit`, `setpriority`, `sched_set*`, `ioprio_set`, `kill` and
   friends only on the process itself; no new processes (threads only), no new session, no
   `ptrace`, `process_vm_*`, `pidfd_*`, `mount`, `unshare`, `bpf`, `io_uring`, `keyctl`,
   `memfd_create` (Landlock would let a memfd be executed), sockets (socketpair stays), ...
5. **An audit hook** ("audit"): a Python-level tripwire that turns violations into clear
   `PermissionError("sandbox: ...")`s and refuses what the kernel cannot see (ctypes, crafted
   code objects, walking all objects or frames).

Layers 1-4 (the view included) are required. Where one is missing (an old kernel, a
container without user namespaces) `run_untrusted` raises `SandboxError` instead of running
the code, unless the caller opts in with `allow_unsafe=True` or
`RAY_CONDUCTOR_UNSAFE_SANDBOX=1`.

With `tests`, the verdict (`SandboxResult.passed`) comes from a trusted harness and a per-run
nonce the code under test cannot read (see sandbox_child): exiting 0 early, printing a marker,
patching builtins or `check`, or exiting from a thread or `atexit` does not pass. In this
shared mode the code still runs in the tests' process, so it can lie about values: a result
whose `__eq__` always says yes, or a function that reads its caller's frame and bytecode and
returns the value the next `assert` compares against. `boundary.run_across` closes that: the
code under test and the tests run in two such sandboxes, and only plain values cross.
"""

from __future__ import annotations

import copy
import functools
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
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from ray_conductor.errors import SandboxError

UNSAFE_ENV = "RAY_CONDUCTOR_UNSAFE_SANDBOX"
REQUIRED = ("namespaces", "tmpfs", "view", "landlock", "seccomp")
NAMESPACES = ("userns", "pidns", "netns", "mountns")
UNPROTECTED = {
    "namespaces": "see, signal and re-limit other processes of this user, and reach the network",
    "tmpfs": "fill the disk",
    "view": "learn whether any host file exists, its size and its times (stat)",
    "landlock": "read every file this user can (/etc/passwd, the project, other processes' "
                "environments with their API keys) and write outside its directory",
    "seccomp": "change other processes' limits and priorities (prlimit, setpriority) and "
               "use ptrace, mount and other privileged system calls",
}
_HERE = os.path.dirname(os.path.abspath(__file__))
_SYSTEM_READ_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/dev/urandom", "/dev/zero",
                      "/dev/null")
# installed packages that answers commonly import, readable (never writable) in the sandbox
READ_PACKAGES = ("numpy",)
# their native libraries start one thread per core unless told otherwise (RLIMIT_NPROC)
THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# the files the harness loads by path after the filesystem is locked down
_HARNESS_FILES = ("sandbox_child.py", "sandbox_audit.py", "sandbox_values.py",
                  "sandbox_across.py")
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
    boundary: bool = False  # the tests ran in a process of their own (`boundary.run_across`)


def run_untrusted(code: str, *, tests: str | None = None, timeout_s: float = 5.0,
                  memory_mb: int = 512, max_output_bytes: int = 1 << 20,
                  max_disk_bytes: int = 16 << 20, max_files: int = 1024,
                  max_open_files: int = 64, max_processes: int = 64,
                  allow_unsafe: bool | None = None, use_namespaces: bool = True,
                  use_view: bool = True, use_landlock: bool = True, use_seccomp: bool = True,
                  use_audit_hook: bool = True,
                  simulate_missing: Collection[str] = ()) -> SandboxResult:
    """Run `code` as `__main__` in the sandbox and return what it printed and how it ended.

    With `tests` (trusted Python, e.g. asserts or `check(f)`), they run after `code` in a copy
    of its namespace and `passed` says whether they ran to the end (the code shares the
    tests' process here: `boundary.run_across` keeps them apart). A failing program is a
    result, not an error; `SandboxError` means the sandbox could not start, or lacks a
    required layer and `allow_unsafe` (default: the `RAY_CONDUCTOR_UNSAFE_SANDBOX=1`
    environment variable) is off. The `use_*` switches turn one layer off to test the others
    alone, and `simulate_missing` ("namespaces", "tmpfs", "view", "landlock", "seccomp")
    makes the sandbox behave as if this kernel lacked them; both count as missing layers.
    """
    setup = prepare(timeout_s=timeout_s, memory_mb=memory_mb,
                    max_output_bytes=max_output_bytes, max_disk_bytes=max_disk_bytes,
                    max_files=max_files, max_open_files=max_open_files,
                    max_processes=max_processes, allow_unsafe=allow_unsafe,
                    use_namespaces=use_namespaces, use_view=use_view,
                    use_landlock=use_landlock, use_seccomp=use_seccomp,
                    use_audit_hook=use_audit_hook, simulate_missing=simulate_missing)
    nonce = secrets.token_hex(32)
    payload = {"role": "plain" if tests is None else "shared", "code": code, "tests": tests,
               "nonce": nonce}
    run = spawn(setup, payload, timeout_s, max_output_bytes)
    report, rest = run.pop("report")
    check_report(report, run, setup.unsafe_ok)
    passed = None if tests is None else f"PASSED {nonce}\n".encode() in rest
    return SandboxResult(layers=tuple(report.get("layers", ())), passed=passed, **run)


@dataclass(frozen=True)
class Setup:
    """How to start one sandboxed process: the `unshare` prefix, the harness's config (its
    working directory is made per process by `spawn`), and whether missing layers are
    allowed."""

    prefix: tuple[str, ...]
    cfg: dict
    unsafe_ok: bool


def prepare(*, timeout_s: float = 5.0, memory_mb: int = 512, max_output_bytes: int = 1 << 20,
            max_disk_bytes: int = 16 << 20, max_files: int = 1024, max_open_files: int = 64,
            max_processes: int = 64, allow_unsafe: bool | None = None,
            use_namespaces: bool = True, use_view: bool = True, use_landlock: bool = True,
            use_seccomp: bool = True, use_audit_hook: bool = True,
            simulate_missing: Collection[str] = ()) -> Setup:
    """The `Setup` of `run_untrusted`'s options; raises `SandboxError` where the namespaces
    are missing and unsafe runs are not allowed."""
    unsafe_ok = _unsafe_allowed(allow_unsafe)
    prefix, ns_layers, ns_why = _namespaces(use_namespaces, simulate_missing)
    if ns_why and not unsafe_ok:
        raise _refusal({"namespaces": ns_why})
    policy = read_policy()
    cfg = {
        "layers": ns_layers, "why": {"namespaces": ns_why} if ns_why else {},
        "mountns": "mountns" in ns_layers, "required": [] if unsafe_ok else list(REQUIRED),
        "simulate_missing": sorted(simulate_missing), "policy": policy,
        "stdlib": policy["stdlib"], "audit": use_audit_hook,
        "use": {"tmpfs": use_namespaces, "view": use_namespaces and use_view,
                "landlock": use_landlock, "seccomp": use_seccomp},
        "disk_bytes": max_disk_bytes, "files": max_files,
        "limits": {"RLIMIT_AS": memory_mb << 20, "RLIMIT_CPU": max(1, math.ceil(timeout_s)) + 1,
                   "RLIMIT_FSIZE": max_output_bytes, "RLIMIT_NOFILE": max_open_files,
                   "RLIMIT_NPROC": max_processes, "RLIMIT_CORE": 0},
    }
    return Setup(tuple(prefix), cfg, unsafe_ok)


def check_report(report: dict, run: dict, unsafe_ok: bool) -> None:
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
    """A copy of `_read_policy()`, found once (sysconfig's first reads race between
    threads: a thread could see no MULTIARCH and leave the system libraries out)."""
    with _POLICY_LOCK:
        return copy.deepcopy(_read_policy())


_POLICY_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _read_policy() -> dict:
    """What the sandbox may see and read: the stdlib (sandbox_kernel leaves out its
    site-packages and the unsafe lib-dynload modules), the system libraries, locale and time
    zone data, the harness's own files, and `READ_PACKAGES` with the directories that hold
    them (listable: the filesystem view shows only the allowed packages there)."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    trees = [p for p in (f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/lib64", "/lib64",
                         "/usr/lib/locale", "/usr/share/zoneinfo")
             if multiarch or not p.endswith("/")]
    dynload = [p for p in sys.path if p.rstrip("/").endswith("lib-dynload")]
    lib_dynload = dynload[0] if dynload else sysconfig.get_config_var("DESTSHARED")
    files = [*_SYSTEM_READ_FILES, *(os.path.join(_HERE, f) for f in _HARNESS_FILES)]
    packages, package_roots = _packages()
    return {"stdlib": _stdlib(), "lib_dynload": lib_dynload and os.path.realpath(lib_dynload),
            "trees": trees, "files": files, "packages": packages,
            "package_roots": package_roots}


@functools.lru_cache(maxsize=1)
def _packages() -> tuple[list[str], list[str]]:
    """(the directories of `READ_PACKAGES` and their `.libs` siblings, the directories that
    hold them); found without importing them."""
    import importlib.util

    dirs, roots = [], []
    for name in READ_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        d = os.path.realpath(list(spec.submodule_search_locations)[0])
        root = os.path.dirname(d)
        dirs += [p for p in (d, os.path.join(root, name + ".libs")) if os.path.isdir(p)]
        roots += [root] if root not in roots else []
    return dirs, roots


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

def spawn(setup: Setup, payload: dict, timeout_s: float, out_limit: int, *,
          fds: tuple[int, ...] = (), started: Callable[[subprocess.Popen], None] | None = None
          ) -> dict:
    """Run one sandboxed process to its end (or its deadline) in a fresh working directory:
    `payload` goes to its stdin as JSON, `fds` stay open in it, `started(proc)` is told the
    process (so that another thread may end it). Returns SandboxResult's fields and
    `report`: (the harness's first report line, the rest)."""
    cfg = {**setup.cfg, "root": os.path.realpath(tempfile.mkdtemp(prefix="rc-sandbox-"))}
    env = {"PATH": "/usr/bin:/bin", "HOME": cfg["root"], "TMPDIR": cfg["root"],
           "LANG": "C.UTF-8", **THREAD_ENV}
    report_r, report_w = os.pipe()
    cfg["report_fd"] = report_w
    python = os.path.realpath(sys.executable)
    argv = [*setup.prefix, python, "-I", "-S", "-B", os.path.join(_HERE, "sandbox_setup.py"),
            json.dumps(cfg)]
    data = json.dumps(payload).encode("utf-8")
    timed_out = False
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(argv, cwd=cfg["root"], env=env, stdin=subprocess.PIPE,
                                        stdout=out, stderr=err, pass_fds=(report_w, *fds),
                                        start_new_session=True, close_fds=True)
            except OSError as e:
                raise SandboxError(f"cannot start the sandbox process: {e}") from e
            finally:
                os.close(report_w)
            if started is not None:
                started(proc)
            try:
                proc.communicate(input=data, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_group(proc)
            except BaseException:
                kill_group(proc)
                raise
            stdout, stderr = _read_capped(out, out_limit), _read_capped(err, out_limit)
            out_size = max(os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size)
        report = _read_report(report_r)
    finally:
        os.close(report_r)
        _rmtree(cfg["root"])
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
    if "Error: sandbox:" in stderr:  # the audit hook's PermissionError (ImportError)
        return "blocked"
    if rc < 0:
        return f"signal:{-rc}"
    return None


def kill_group(proc: subprocess.Popen) -> None:
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
