"""Kernel layers the sandbox sets up on itself: a size-capped tmpfs, a filesystem view that
holds only the allowed trees, Landlock, seccomp.

Each function either takes effect or raises OSError (the layer is then reported missing).
They need `ctypes`, so they run in `sandbox_setup`, which then `exec`s a fresh interpreter for
the untrusted code: a process that once loaded `_ctypes` can load it again from CPython's
extension cache even when Landlock no longer lets it read the file. Stdlib only and no package
imports: the setup script loads this file by path.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct

_SYS = {  # (x86_64, aarch64)
    "landlock_create_ruleset": (444, 444), "landlock_add_rule": (445, 445),
    "landlock_restrict_self": (446, 446), "seccomp": (317, 277), "pivot_root": (155, 41),
}
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC = 1, 1
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MNT_DETACH = 2
# statvfs f_flag bits -> the mount flags a bind remount must keep (the kernel locks them)
_KEPT_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
               (os.ST_NOATIME, 1024), (os.ST_NODIRATIME, 2048), (os.ST_RELATIME, 1 << 21))

# lib-dynload modules that hand out raw memory or are CPython's own test hooks: never readable
_UNSAFE_EXTENSIONS = ("_ctypes", "_test", "_xx", "xx", "_cffi")
# never readable in the stdlib directory: installed packages (numpy and cffi read raw memory)
_STDLIB_HOLES = ("site-packages", "dist-packages", "lib-dynload")


def arch() -> str:
    """'x86_64' or 'aarch64' (the only two with syscall tables here); raises OSError else."""
    m = os.uname().machine
    m = {"amd64": "x86_64", "arm64": "aarch64"}.get(m.lower(), m)
    if m not in ("x86_64", "aarch64"):
        raise OSError(f"no syscall numbers for {m}")
    return m


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.col = 0 if arch() == "x86_64" else 1

    def syscall(self, name: str, *args) -> int:
        conv = [a if isinstance(a, (ctypes.Array, ctypes.c_void_p)) else ctypes.c_long(a)
                for a in args]
        r = self.lib.syscall(ctypes.c_long(_SYS[name][self.col]), *conv)
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{name}: {os.strerror(e)}")
        return r

    def prctl(self, *args: int) -> None:
        if self.lib.prctl(*[ctypes.c_ulong(a) for a in args]) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"prctl: {os.strerror(e)}")


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    enc = (lambda x: None if x is None else x.encode())
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype or 'bind'} {source or ''} on {target}: "
                         f"{os.strerror(e)}")


def mount_tmpfs(path: str, size_bytes: int, inodes: int) -> None:
    """A tmpfs of `size_bytes` and `inodes` files over `path` (in this mount namespace only;
    `noexec`, so nothing written there can be mapped as code)."""
    libc = ctypes.CDLL(None, use_errno=True)
    _mount(libc, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"size={size_bytes},nr_inodes={inodes},mode=0700")


def build_view(root: str, view: dict) -> None:
    """Make the tmpfs at `root` this process's whole filesystem, for good.

    Inside it, at their own absolute paths: `view["binds"]` (trees and files, bound read-only
    where the kernel allows; a symlink on the way, such as /lib -> usr/lib, is recreated),
    then an empty read-only tmpfs over each of `view["masks"]` (the stdlib's own
    site-packages), then `view["late_binds"]` (allowed packages, possibly inside a mask), a
    fresh /proc of this pid namespace, and the working directory `root` itself. Then
    `pivot_root` into it and detach the old root: any other host path does not exist here,
    so not even `stat` learns about it (Landlock cannot refuse `stat`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for path in view["binds"]:
        _mirror(libc, root, path)
    for path in view["masks"]:
        if os.path.isdir(root + path):
            _mount(libc, "tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   "size=64k,nr_inodes=64,mode=0555")
    for path in view["late_binds"]:
        _mirror(libc, root, path)
    os.makedirs(root + root, exist_ok=True)
    os.makedirs(root + "/proc", exist_ok=True)
    try:
        _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass  # no pid namespace of our own: no /proc at all
    old = root + "/.old-root"
    os.mkdir(old)
    if libc.syscall(ctypes.c_long(_SYS["pivot_root"][0 if arch() == "x86_64" else 1]),
                    root.encode(), old.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"pivot_root: {os.strerror(e)}")
    os.chdir("/")
    if libc.umount2(b"/.old-root", MNT_DETACH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"detaching the old root: {os.strerror(e)}")
    os.rmdir("/.old-root")


def _mirror(libc, root: str, path: str) -> None:
    """`path` as the host resolves it, inside `root`: symlinks on the way recreated, the
    object it names bound at its real path (read-only where the kernel allows)."""
    if not os.path.lexists(path):
        return
    cur = ""
    for i, part in enumerate(p for p in path.split("/") if p):
        cur += "/" + part
        if os.path.islink(cur):
            if not os.path.lexists(root + cur):
                os.makedirs(os.path.dirname(root + cur), exist_ok=True)
                os.symlink(os.readlink(cur), root + cur)
            rest = "/".join(p for p in path.split("/") if p)[len(cur):]
            return _mirror(libc, root, os.path.realpath(cur) + rest)
    real = os.path.realpath(path)
    target = root + real
    if os.path.ismount(target) or (os.path.isfile(target) and os.path.getsize(target) > 0):
        return  # bound already (as part of a tree, or by an earlier path)
    if os.path.isdir(real):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(libc, real, target, None, MS_BIND | MS_REC)
    kept = 0
    try:
        flags = os.statvfs(target).f_flag
        kept = sum(ms for st, ms in _KEPT_FLAGS if flags & st)
        _mount(libc, None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | kept)
    except OSError:
        pass  # Landlock refuses writes there anyway


def landlock(root: str, policy: dict) -> int:
    """Restrict this process, for good, to: reading the stdlib (not its site-packages) and the
    safe lib-dynload modules, `policy["trees"]`, `policy["files"]` and `policy["packages"]`
    (listing the directories that hold them); executing only
    `policy["exec_files"]` (the interpreter and its loader, for one `exec`); writing only under
    `root`; no TCP (ABI >= 4), no signals or abstract sockets outside (ABI >= 6). Returns the
    Landlock ABI version."""
    libc = _Libc()
    abi = libc.syscall("landlock_create_ruleset", 0, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (
        1 << 15 if abi >= 5 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    # handled: every fs right, TCP bind+connect (ABI 4), abstract UNIX sockets+signals (ABI 6)
    attr = struct.pack("QQQ", fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)[:size]
    ruleset = libc.syscall("landlock_create_ruleset", ctypes.create_string_buffer(attr, size),
                           size, 0)
    try:
        rules = _Rules(libc, ruleset, fs)
        rules.read_tree(policy["stdlib"], lambda n: n in _STDLIB_HOLES)
        if policy["lib_dynload"]:
            rules.read_tree(policy["lib_dynload"], lambda n: n.startswith(_UNSAFE_EXTENSIONS))
        for tree in policy["trees"]:
            rules.read_tree(tree, lambda n: n.startswith("python"))
        for path in policy["files"]:
            rules.allow(path, rules.READ)
        for path in policy["packages"]:
            rules.allow(path, rules.READ)
        for path in policy["package_roots"]:
            rules.allow(path, 1 << 3)  # listed (the view shows only the allowed packages)
        for path in policy["exec_files"]:
            rules.allow(path, rules.READ | 1)
        rules.allow(root, fs & ~1)  # everything but EXECUTE
        rules.allow("/dev/null", 1 << 1 | 1 << 2)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        libc.syscall("landlock_restrict_self", ruleset, 0)
    finally:
        os.close(ruleset)
    return abi


class _Rules:
    READ = 1 << 2 | 1 << 3  # READ_FILE | READ_DIR; EXECUTE (1 << 0) is never granted
    FILE_RIGHTS = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 14 | 1 << 15  # the rights a file can have

    def __init__(self, libc: _Libc, ruleset: int, fs: int) -> None:
        self.libc, self.ruleset, self.fs = libc, ruleset, fs

    def allow(self, path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # not on this system
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                rights &= self.FILE_RIGHTS
            rule = struct.pack("=Qi", rights & self.fs, fd)
            self.libc.syscall("landlock_add_rule", self.ruleset, 1,
                              ctypes.create_string_buffer(rule, len(rule)), 0)
        finally:
            os.close(fd)

    def read_tree(self, path: str, exclude=None) -> None:
        """Read access to `path`; where `exclude` names some entries, to the others one by one
        (Landlock rules only add rights, so a tree with a hole is granted piecewise)."""
        try:
            names = os.listdir(path) if exclude else []
        except OSError:
            return
        if exclude is None or not any(exclude(n) for n in names):
            self.allow(path, self.READ)
            return
        self.allow(path, 1 << 3)  # list the directory itself
        for n in names:
            if not exclude(n):
                self.allow(os.path.join(path, n), self.READ)


def install_seccomp(program: bytes) -> None:
    """Install a BPF filter (see sandbox_seccomp) on every thread of this process."""
    libc = _Libc()
    buf = ctypes.create_string_buffer(program, len(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    ptr = ctypes.c_void_p(ctypes.addressof(prog))
    try:
        libc.syscall("seccomp", SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, ptr)
    except OSError:
        libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ptr.value, 0, 0)
