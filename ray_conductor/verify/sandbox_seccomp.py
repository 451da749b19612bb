"""The sandbox's seccomp filter: a hand-assembled classic-BPF program, built as bytes.

Why a filter: Landlock confines files and (ABI >= 6) signals, namespaces hide other processes,
but a few system calls still act on other processes by pid (`prlimit64`, `setpriority`,
`sched_setaffinity`, `ptrace`, `process_vm_readv`, `pidfd_*`) or widen the kernel surface
(`mount`, `bpf`, `io_uring`, `keyctl`, `socket`, ...). The filter makes every such call fail
with EPERM unless it targets the calling process itself, and allows only threads to be
created (a `clone` without CLONE_THREAD is a new process). `execve` stays allowed: the
sandbox installs this filter and then `exec`s its interpreter, and Landlock lets nothing else
be executed. Nothing here decides on argument values the kernel reads from memory (BPF cannot
see them), only on register arguments.

Stdlib only and no package imports: the sandbox child loads this file by path.
"""

from __future__ import annotations

import struct

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT = 0x40000000  # x86_64 syscall numbers with this bit are the x32 ABI: refused

# (x86_64, aarch64) numbers; None where the architecture has no such call
_NR = {
    "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131),
    "rt_sigqueueinfo": (129, 138), "rt_tgsigqueueinfo": (297, 240),
    "prlimit64": (302, 261), "setpriority": (141, 140), "ioprio_set": (251, 30),
    "sched_setparam": (142, 118), "sched_setscheduler": (144, 119),
    "sched_setaffinity": (203, 122), "sched_setattr": (314, 274),
    "clone": (56, 220), "clone3": (435, 435),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "kcmp": (312, 272), "pidfd_send_signal": (424, 424), "pidfd_open": (434, 434),
    "pidfd_getfd": (438, 438), "process_madvise": (440, 440), "process_mrelease": (448, 448),
    "migrate_pages": (256, 238), "move_pages": (279, 239), "get_robust_list": (274, 100),
    "fork": (57, None), "vfork": (58, None), "execve": (59, 221), "execveat": (322, 281),
    "setsid": (112, 157), "setpgid": (109, 154),
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "socket": (41, 198),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "reboot": (169, 142),
    "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89), "quotactl": (179, 60),
    "quotactl_fd": (443, 443), "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265), "syslog": (103, 116), "settimeofday": (164, 170),
    "clock_settime": (227, 112), "clock_adjtime": (305, 266), "adjtimex": (159, 171),
    "sethostname": (170, 161), "setdomainname": (171, 162), "iopl": (172, None),
    "ioperm": (173, None), "fanotify_init": (300, 262), "lookup_dcookie": (212, 18),
    "vhangup": (153, 58), "memfd_create": (319, 279), "memfd_secret": (447, 447),
}

DENIED = (
    "tkill", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_send_signal",
    "pidfd_open", "pidfd_getfd", "process_madvise", "process_mrelease", "migrate_pages",
    "move_pages", "get_robust_list", "fork", "vfork", "setsid",
    "setpgid", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "keyctl",
    "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "socket", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
    "quotactl", "quotactl_fd", "name_to_handle_at", "open_by_handle_at", "syslog",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname",
    "setdomainname", "iopl", "ioperm", "fanotify_init", "lookup_dcookie", "vhangup",
    "memfd_create", "memfd_secret",
)
# first argument must be 0 ("myself") or the caller's own pid
SELF_OR_ZERO = ("prlimit64", "sched_setparam", "sched_setscheduler", "sched_setaffinity",
                "sched_setattr")
# first argument must be the caller's own pid (kill(0) would reach its process group)
SELF_PID = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
# (which, who): which must be this value, who 0 or the caller's pid
WHICH_WHO = {"setpriority": 0, "ioprio_set": 1}  # PRIO_PROCESS, IOPRIO_WHO_PROCESS

CLONE_THREAD = 0x00010000
EPERM, ENOSYS = 1, 38
RET_ALLOW, RET_ERRNO, RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000

_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_OFF_NR, _OFF_ARCH = 0, 4


def _arg(i: int) -> int:
    """Offset of the low 32 bits of argument i in `struct seccomp_data` (little-endian)."""
    return 16 + 8 * i


class _Asm:
    """Classic BPF with forward jumps to labels, resolved when the program is packed."""

    def __init__(self) -> None:
        self.ops: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0, jt: object = 0, jf: object = 0) -> None:
        self.ops.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.ops)

    def pack(self) -> bytes:
        out = []
        for i, (code, jt, jf, k) in enumerate(self.ops):
            out.append(struct.pack("=HBBI", code, self._rel(i, jt), self._rel(i, jf), k))
        return b"".join(out)

    def _rel(self, i: int, target: object) -> int:
        if isinstance(target, int):
            return target
        rel = self.labels[str(target)] - i - 1
        if not 0 <= rel <= 255:
            raise ValueError(f"seccomp: jump to {target} out of range ({rel})")
        return rel


def build_filter(arch: str, pid: int) -> bytes:
    """The filter program for `arch` ("x86_64" or "aarch64") in a process whose pid is `pid`.

    Returns the packed `struct sock_filter` array; raises ValueError for another arch.
    """
    if arch not in AUDIT_ARCH:
        raise ValueError(f"seccomp: no syscall table for {arch}")
    col = 0 if arch == "x86_64" else 1
    nr = {name: nums[col] for name, nums in _NR.items() if nums[col] is not None}
    a = _Asm()
    a.op(_LD_W_ABS, _OFF_ARCH)
    a.op(_JEQ, AUDIT_ARCH[arch], 0, "kill")  # another ABI (i386 on x86_64): no table for it
    a.op(_LD_W_ABS, _OFF_NR)
    if arch == "x86_64":
        a.op(_JGE, _X32_BIT, "kill", 0)
    rules = ([(n, "deny") for n in DENIED] + [(n, "self0:" + n) for n in SELF_OR_ZERO]
             + [(n, "self:" + n) for n in SELF_PID] + [(n, "ww:" + n) for n in WHICH_WHO]
             + [("clone", "clone"), ("clone3", "enosys")])
    for name, target in rules:
        if name in nr:
            a.op(_JEQ, nr[name], target, 0)
    a.op(_RET, RET_ALLOW)
    for name in SELF_OR_ZERO:
        a.label("self0:" + name)
        a.op(_LD_W_ABS, _arg(0))
        a.op(_JEQ, 0, "allow", 0)
        a.op(_JEQ, pid, "allow", "deny")
    for name in SELF_PID:
        a.label("self:" + name)
        a.op(_LD_W_ABS, _arg(0))
        a.op(_JEQ, pid, "allow", "deny")
    for name, which in WHICH_WHO.items():
        a.label("ww:" + name)
        a.op(_LD_W_ABS, _arg(0))
        a.op(_JEQ, which, 0, "deny")
        a.op(_LD_W_ABS, _arg(1))
        a.op(_JEQ, 0, "allow", 0)
        a.op(_JEQ, pid, "allow", "deny")
    a.label("clone")
    a.op(_LD_W_ABS, _arg(0))
    a.op(_JSET, CLONE_THREAD, "allow", "deny")
    for name, ret in (("allow", RET_ALLOW), ("deny", RET_ERRNO | EPERM),
                      ("enosys", RET_ERRNO | ENOSYS), ("kill", RET_KILL)):
        a.label(name)
        a.op(_RET, ret)
    return a.pack()


def run_filter(program: bytes, arch: str, nr: int, args: tuple[int, ...] = ()) -> int:
    """Interpret `program` on one system call, as the kernel would: its SECCOMP_RET value.

    Only the instructions `build_filter` emits are understood; this lets tests check the
    filter's decisions on any machine, without installing it.
    """
    data = struct.pack("=iIQ6Q", nr, AUDIT_ARCH.get(arch, 0), 0,
                       *(list(args) + [0] * 6)[:6])
    ops = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = ops[pc]
        if code == _RET:
            return k
        if code == _LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
            continue
        hit = {_JEQ: acc == k, _JGE: acc >= k, _JSET: bool(acc & k)}[code]
        pc += 1 + (jt if hit else jf)


def syscall_number(name: str, arch: str) -> int | None:
    """The number of a call this module knows, for tests."""
    nums = _NR.get(name)
    return None if nums is None else nums[0 if arch == "x86_64" else 1]
