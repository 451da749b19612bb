"""The sandbox's audit hook: Python-level tripwires that turn violations into clear errors.

`sys.addaudithook` hooks cannot be removed. The hook keeps everything it needs in a closure of
immutable values and its own references to the builtins it calls, and turns string arguments
into exact `str`/`bytes` before looking at them, so neither patched builtins nor a `str`
subclass with its own methods can steer it. It is a tripwire, not a boundary on its own:
Landlock, seccomp and the namespaces are the boundaries. What it adds that the kernel cannot
see: no `ctypes`, no crafted code objects (`code.__new__`, `marshal` data other than the
stdlib's and the read-only packages' own `.pyc`), no walking every object (`gc.get_*`) or
every thread's frames, no trace/profile/audit hooks -- the ways Python code could reach
memory or frames that the sandbox's test harness keeps to itself.

Stdlib only and no package imports: the sandbox child loads this file by path.
"""

from __future__ import annotations

# event -> ((index of a path argument, index of its dir_fd argument or None), ...)
WRITES = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
          "os.rename": ((0, 2), (1, 3)), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
          "os.truncate": ((0, None),), "os.utime": ((0, 3),), "os.setxattr": ((0, None),),
          "os.removexattr": ((0, None),), "os.mkfifo": ((0, 2),), "os.mknod": ((0, 3),),
          "shutil.rmtree": ((0, 1),), "shutil.move": ((0, None), (1, None)),
          "shutil.copyfile": ((1, None),), "shutil.copytree": ((1, None),),
          "tempfile.mkstemp": ((0, None),), "tempfile.mkdtemp": ((0, None),)}
BANNED_PREFIXES = (
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill",
    "os.killpg", "os.link", "os.symlink", "os.startfile", "os.pidfd_open", "subprocess.",
    "socket.", "ctypes.", "signal.pthread_kill", "gc.get_", "sys._current_frames",
    "sys._current_exceptions", "sys.addaudithook", "sys.settrace", "sys.setprofile",
    "sys._setprofileallthreads", "sys._settraceallthreads", "code.__new__", "urllib.",
    "http.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.",
    "webbrowser.", "cpython.")
BANNED_EVENTS = frozenset({"marshal.load"})
BANNED_MODULES = frozenset({
    "ctypes", "_ctypes", "_xxsubinterpreters", "_xxinterpchannels",
    "_interpreters", "cffi", "_cffi_backend", "_testcapi", "_testinternalcapi"})


def make_hook(root: str, stdlib: str, os_mod, builtins_mod, sys_mod, packages=()):
    """The audit hook for a sandbox whose writable directory is `root` and whose trusted
    `.pyc` files live under `stdlib` (and not in its site-packages) and in the read-only
    `packages` directories."""
    import types

    getframe = sys_mod._getframe
    coroutine_code = types.coroutine.__code__  # its co.replace(co_flags=...) is harmless
    b = builtins_mod
    type_, len_, bytes_, str_, int_, tuple_, memoryview_, issubclass_, open_ = (
        b.type, b.len, b.bytes, b.str, b.int, b.tuple, b.memoryview, b.issubclass, b.open)
    perm, exc_, import_error = b.PermissionError, b.Exception, b.ImportError
    s_add, b_add = str_.__add__, bytes_.__add__
    s_starts, s_ends, s_split, s_join = str_.startswith, str_.endswith, str_.split, str_.join
    fspath, getcwd, readlink, getpid = os_mod.fspath, os_mod.getcwd, os_mod.readlink, \
        os_mod.getpid
    o_write = os_mod.O_WRONLY | os_mod.O_RDWR | os_mod.O_APPEND | os_mod.O_CREAT | os_mod.O_TRUNC
    root = root.rstrip("/")
    stdlib = stdlib.rstrip("/") + "/"
    package_dirs = tuple_(p.rstrip("/") + "/" for p in packages)
    writes, banned_prefixes, banned_events, banned_modules = (
        tuple_(WRITES.items()), BANNED_PREFIXES, BANNED_EVENTS, BANNED_MODULES)
    last_pyc = [None]  # the stdlib .pyc the importer opened last: the one marshal may load

    def exact(x):
        """`x` as an exact str (bytes decoded), or None; no method of `x` is called."""
        if issubclass_(type_(x), str_):
            return s_add("", x)
        if issubclass_(type_(x), bytes_):
            return b_add(b"", x).decode("utf-8", "surrogateescape")
        return None

    def normalise(path, dir_fd=None):
        p = exact(path)
        if p is None:
            p = exact(fspath(path))  # a PathLike: its __fspath__ may run; its result is checked
        if p is None:
            raise perm("sandbox: unusable path")
        if not s_starts(p, "/"):
            base = getcwd() if dir_fd is None else readlink(f"/proc/self/fd/{dir_fd}")
            p = base + "/" + p
        parts = []
        for part in s_split(p, "/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + s_join("/", parts)

    def inside(path, dir_fd=None):
        if issubclass_(type_(path), int_):
            return True  # an already-open descriptor
        try:
            p = normalise(path, dir_fd)
        except exc_:
            return False
        return p == root or s_starts(p, root + "/") or p == "/dev/null"

    def on_open(args):
        path, mode = args[0], exact(args[1])
        flags = args[2] if len_(args) > 2 and issubclass_(type_(args[2]), int_) else 0
        writing = (mode is not None and ("w" in mode or "a" in mode or "x" in mode
                                         or "+" in mode)) or (flags & o_write) != 0
        # os.open (mode None) may carry a dir_fd the event does not show: relative paths
        # cannot be resolved, so they may not be written that way
        p = exact(path)
        unresolvable = mode is None and p is not None and not s_starts(p, "/")
        if writing and (unresolvable or not inside(path)):
            raise perm(f"sandbox: writing {p or 'a path'} is not allowed")
        if not writing and p is not None and s_ends(p, ".pyc"):
            trusted = (s_starts(p, stdlib) and "/site-packages/" not in p) or (
                bool(package_dirs) and s_starts(p, package_dirs))
            last_pyc[0] = p if trusted else None

    def on_marshal(data):
        path, last_pyc[0] = last_pyc[0], None
        if path is not None and type_(data) in (bytes_, memoryview_):
            with open_(path, "rb") as f:
                same = f.read()[16:] == bytes_(data)
            last_pyc[0] = None
            if same:
                return
        raise perm("sandbox: marshal.loads of anything but the stdlib's (and the read-only "
                   "packages') .pyc is not allowed")

    def on_write(event, args):
        for spec_event, spec in writes:
            if spec_event != event:
                continue
            for i, j in spec:
                dir_fd = args[j] if j is not None and j < len_(args) else None
                dir_fd = dir_fd if type_(dir_fd) is int_ and dir_fd >= 0 else None
                if i < len_(args) and args[i] is not None and not inside(args[i], dir_fd):
                    raise perm(f"sandbox: {event} outside the sandbox is not allowed")

    def hook(event, args):
        if event == "open":
            return on_open(args)
        if event == "marshal.loads":
            return on_marshal(args[0])
        if s_starts(event, ("os.", "shutil.", "tempfile.")):
            on_write(event, args)
        if event == "socket.__new__" and len_(args) > 1 and args[1] == 1:
            return  # AF_UNIX, as from socketpair() (asyncio); seccomp refuses socket() itself
        if event == "code.__new__" and getframe(1).f_code is coroutine_code:
            return  # asyncio's @types.coroutine: flags only, same bytecode and constants
        if event == "import" and exact(args[0]) in banned_modules:
            # an ImportError, as for a module that is not installed: numpy imports ctypes
            # under `try: ... except ImportError`
            raise import_error(f"sandbox: import of {exact(args[0])} is not allowed")
        if event == "resource.prlimit" and args[0] not in (0, getpid()):
            raise perm("sandbox: prlimit on another process is not allowed")
        if event in banned_events or s_starts(event, banned_prefixes):
            raise perm(f"sandbox: {event} is not allowed")

    return hook
