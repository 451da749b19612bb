"""Run untrusted Python (model-written programs and their tests) in a sandbox.

Layers, outermost first, and what each one guarantees:

1. **A separate process** (`python -I -S -B`: no site-packages, no user files, stdlib only) in
   its own session, with a minimal environment (no API keys: only PATH, HOME, TMPDIR, LANG),
   a fresh temporary directory as cwd and HOME (deleted afterwards), and a wall-clock deadline
   after which the whole process group is killed.
2. **Resource limits** (`setrlimit`, set before user code runs, soft = hard so they cannot be
   raised): address space (`memory_mb`), CPU seconds, size of any file written -- stdout and
   stderr go to files, so this caps output too -- open files, processes (not enforced by
   Linux for root), no core dumps.
3. **A network namespace** (`unshare --net`, or `unshare --user --map-root-user --net` when
   not root), where one probe at first use shows it works: the process sees only a loopback
   interface that is down, so no TCP, UDP or DNS reaches anything.
4. **Landlock** (Linux >= 5.13, ABI checked at run time), kernel-enforced and irreversible:
   writes and file creation only inside the temporary directory; reads only of the stdlib,
   the system libraries and the temporary directory; no `execve` of any file; with ABI >= 4 no
   TCP bind/connect; with ABI >= 6 no signals or abstract UNIX sockets outside the sandbox.
5. **An audit hook** (`sys.addaudithook`, Python-level, cannot be removed): raises
   `PermissionError("sandbox: ...")` on writes outside the temporary directory, process
   creation (fork, exec, spawn, system, subprocess), kill, sockets, `ctypes` and
   sub-interpreters, and `gc` walks that could reach the hook's state. It turns violations
   into clear errors and is the only file/network guard where 3 and 4 are unavailable; it is
   a tripwire, not a security boundary on its own (a CPython memory bug bypasses it).

`SandboxResult.layers` says which of 3-5 were active for the run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass, field

from ray_conductor.errors import SandboxError

_READ_ROOTS = ("/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime", "/dev/urandom",
               "/dev/null", "/dev/zero")


@dataclass
class SandboxResult:
    """What happened. `ok` means exit status 0 within the limits."""

    ok: bool
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    killed_reason: str | None = None  # timeout, cpu_limit, memory, output_limit, blocked, signal:N
    layers: tuple[str, ...] = field(default_factory=tuple)


# -- the child's prelude: trusted code that locks the process down, then runs the user's code ----

_PRELUDE = r'''
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
code = sys.stdin.buffer.read().decode("utf-8", "replace")
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
for name, value in cfg["limits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))


def landlock(root, read_roots):
    import ctypes, platform, stat, struct
    if platform.machine() not in ("x86_64", "aarch64", "arm64"):
        raise OSError("landlock: unknown syscall numbers on " + platform.machine())
    libc = ctypes.CDLL(None, use_errno=True)
    L = ctypes.c_long

    def call(*args):
        r = libc.syscall(*[a if isinstance(a, ctypes.Array) else L(a) for a in args])
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, "landlock: " + os.strerror(e))
        return r

    abi = call(444, 0, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (
        1 << 15 if abi >= 5 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    attr = struct.pack("QQQ", fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)[:size]
    ruleset = call(444, ctypes.create_string_buffer(attr, size), size, 0)
    read = 1 << 2 | 1 << 3  # READ_FILE | READ_DIR; EXECUTE (1 << 0) is never granted
    file_rights = 1 << 1 | 1 << 2 | 1 << 14 | 1 << 15

    def allow(path, rights):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= file_rights
        rule = struct.pack("=Qi", rights & fs, fd)
        call(445, ruleset, 1, ctypes.create_string_buffer(rule, len(rule)), 0)
        os.close(fd)

    for p in read_roots:
        if os.path.exists(p):
            allow(p, read)
    allow(root, fs & ~1)
    if os.path.exists("/dev/null"):
        allow("/dev/null", 1 << 1 | 1 << 2)
    libc.prctl(38, L(1), L(0), L(0), L(0))  # PR_SET_NO_NEW_PRIVS
    call(446, ruleset, 0)
    return abi


def make_hook(root, fspath, getcwd, readlink):
    """The audit hook. Its state lives in this closure, out of reach of the user's code."""
    root = root.rstrip("/")
    # event -> {index of a path argument: index of its dir_fd argument (or None)}
    writes = {"os.remove": {0: 1}, "os.rmdir": {0: 1}, "os.mkdir": {0: 2},
              "os.rename": {0: 2, 1: 3}, "os.chmod": {0: 2}, "os.chown": {0: 3},
              "os.truncate": {0: None}, "os.utime": {0: 3}, "os.setxattr": {0: None},
              "os.removexattr": {0: None}, "os.mkfifo": {0: 2}, "os.mknod": {0: 3},
              "shutil.rmtree": {0: 1}, "shutil.move": {0: None, 1: None},
              "shutil.copyfile": {1: None}, "shutil.copytree": {1: None},
              "tempfile.mkstemp": {0: None}, "tempfile.mkdtemp": {0: None}}
    banned = ("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
              "os.kill", "os.killpg", "os.link", "os.symlink", "os.startfile", "os.pidfd_open",
              "subprocess.", "socket.", "ctypes.", "signal.pthread_kill", "gc.get_",
              "sys._current_frames", "urllib.", "http.", "ftplib.", "smtplib.", "poplib.",
              "imaplib.", "nntplib.", "telnetlib.", "webbrowser.")
    banned_modules = {"ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters",
                      "_xxinterpchannels", "_interpreters", "cffi", "_cffi_backend"}

    def normalise(path, dir_fd=None):
        path = fspath(path)
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            base = getcwd() if dir_fd is None else readlink("/proc/self/fd/%d" % dir_fd)
            path = base + "/" + path
        parts = []
        for p in path.split("/"):
            if p == "..":
                if parts:
                    parts.pop()
            elif p and p != ".":
                parts.append(p)
        return "/" + "/".join(parts)

    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return True  # an already-open descriptor
        try:
            p = normalise(path, dir_fd)
        except Exception:
            return False
        return p == root or p.startswith(root + "/") or p == "/dev/null"

    def hook(event, args):
        if event == "open":
            path, mode, flags = args[0], args[1], args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND
                                                    | os.O_CREAT | os.O_TRUNC))
            # os.open (mode None) may carry a dir_fd the event does not show: relative
            # paths cannot be resolved, so they may not be written that way
            unresolvable = mode is None and isinstance(path, (str, bytes)) and not (
                fspath(path).startswith("/" if isinstance(path, str) else b"/"))
            if writing and (unresolvable or not inside(path)):
                raise PermissionError("sandbox: writing %r is not allowed" % (path,))
            return
        if event in writes:
            for i, j in writes[event].items():
                dir_fd = args[j] if j is not None and j < len(args) else None
                dir_fd = dir_fd if isinstance(dir_fd, int) and dir_fd >= 0 else None
                if i < len(args) and args[i] is not None and not inside(args[i], dir_fd):
                    raise PermissionError("sandbox: %s on %r is not allowed" % (event, args[i]))
            return
        if event == "import" and args[0] in banned_modules:
            raise PermissionError("sandbox: import of %s is not allowed" % args[0])
        if event.startswith(banned):
            raise PermissionError("sandbox: %s is not allowed" % event)

    return hook


layers = list(cfg["layers"])
if cfg["landlock"]:
    try:
        layers.append("landlock-abi%d" % landlock(cfg["root"], cfg["read_roots"]))
    except OSError as e:
        sys.stderr.write("sandbox: landlock unavailable (%s)\n" % e)
for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
    del sys.modules[name]
if cfg["audit"]:
    sys.addaudithook(make_hook(cfg["root"], os.fspath, os.getcwd, os.readlink))
    layers.append("audit")
os.write(cfg["report_fd"], json.dumps(layers).encode())
os.close(cfg["report_fd"])
del landlock, make_hook, name
sys.argv = ["<untrusted>"]
exec(compile(code, "<untrusted>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


# -- the parent ---------------------------------------------------------------------------------

_NS_PROBE: list[tuple[list[str], str]] = []
_NS_LOCK = threading.Lock()


def _namespace_prefix() -> tuple[list[str], str]:
    """`unshare` arguments that give a fresh network namespace here, found once by trying."""
    with _NS_LOCK:
        if not _NS_PROBE:
            found: tuple[list[str], str] = ([], "")
            exe = shutil.which("unshare")
            if exe:
                for args, name in (([exe, "--net", "--"], "netns"),
                                   ([exe, "--user", "--map-root-user", "--net", "--"],
                                    "userns+netns")):
                    try:
                        r = subprocess.run(args + ["true"], capture_output=True, timeout=10)
                    except (OSError, subprocess.TimeoutExpired):
                        continue
                    if r.returncode == 0:
                        found = (args, name)
                        break
            _NS_PROBE.append(found)
        return _NS_PROBE[0]


def _read_capped(f, limit: int) -> str:
    f.seek(0)
    return f.read(limit).decode("utf-8", "replace")


def _rmtree(path: str) -> None:
    def fix(func, p, _exc):  # the code may have left read-only files or directories
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


def _killed_reason(rc: int | None, stdout: str, stderr: str, out_limit: int,
                   out_size: int) -> str | None:
    if rc is None or rc == 0:
        return None
    if rc == -signal.SIGXCPU:
        return "cpu_limit"
    if "MemoryError" in stderr:
        return "memory"
    if "File too large" in stderr or out_size >= out_limit:
        return "output_limit"
    if "PermissionError: sandbox:" in stderr:
        return "blocked"
    if rc < 0:
        return f"signal:{-rc}"
    return None


def run_untrusted(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512,
                  max_output_bytes: int = 1 << 20, max_open_files: int = 64,
                  max_processes: int = 64, isolate_network: bool = True,
                  use_landlock: bool = True, use_audit_hook: bool = True) -> SandboxResult:
    """Run `code` as `__main__` in the sandbox and return what it printed and how it ended.

    A failing program is a result (`ok=False`), not an error; `SandboxError` means the
    sandbox itself could not start. `max_output_bytes` caps stdout, stderr and any file the
    code writes. The `isolate_network`, `use_landlock` and `use_audit_hook` switches exist to
    test each layer alone; leave them on.
    """
    root = os.path.realpath(tempfile.mkdtemp(prefix="rc-sandbox-"))
    prefix, ns_layer = _namespace_prefix() if isolate_network else ([], "")
    paths = sysconfig.get_paths()
    cpu = max(1, math.ceil(timeout_s)) + 1
    cfg = {
        "root": root, "landlock": use_landlock, "audit": use_audit_hook,
        "layers": [ns_layer] if ns_layer else [],
        "read_roots": [paths["stdlib"], paths["platstdlib"], *_READ_ROOTS],
        "limits": {"RLIMIT_AS": memory_mb << 20, "RLIMIT_CPU": cpu,
                   "RLIMIT_FSIZE": max_output_bytes, "RLIMIT_NOFILE": max_open_files,
                   "RLIMIT_NPROC": max_processes, "RLIMIT_CORE": 0},
    }
    env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8"}
    report_r, report_w = os.pipe()
    cfg["report_fd"] = report_w
    argv = [*prefix, sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", _PRELUDE,
            json.dumps(cfg)]
    timed_out = False
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.PIPE,
                                        stdout=out, stderr=err, pass_fds=(report_w,),
                                        start_new_session=True, close_fds=True)
            except OSError as e:
                raise SandboxError(f"cannot start the sandbox process: {e}") from e
            finally:
                os.close(report_w)
            try:
                proc.communicate(input=code.encode("utf-8"), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            except BaseException:
                _kill_group(proc)
                raise
            stdout = _read_capped(out, max_output_bytes)
            stderr = _read_capped(err, max_output_bytes)
            out_size = max(os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size)
        layers = _read_layers(report_r)
    finally:
        os.close(report_r)
        _rmtree(root)
    rc = proc.returncode
    reason = "timeout" if timed_out else _killed_reason(rc, stdout, stderr, max_output_bytes,
                                                        out_size)
    return SandboxResult(ok=rc == 0 and not timed_out, returncode=rc, stdout=stdout,
                         stderr=stderr, timed_out=timed_out, killed_reason=reason,
                         layers=tuple(layers))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _read_layers(fd: int) -> list[str]:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    try:
        return list(json.loads(b"".join(chunks) or b"[]"))
    except ValueError:
        return []
