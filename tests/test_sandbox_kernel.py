"""Attacks on the machine from inside the sandbox (issue 12, defect 2), and the refusal to run
at all where a required layer is missing.

Each attack is tried against the full sandbox and its effect checked from outside (the test
process's own limits, a sibling process's limits and priority, files, the disk); the tests
that switch all but one layer off show that layer holds alone (skipped where this machine
lacks it).
"""

import os
import resource
import subprocess

import pytest

from ray_conductor.errors import SandboxError
from ray_conductor.verify import sandbox_seccomp as sc
from ray_conductor.verify.sandbox import REQUIRED, UNSAFE_ENV, run_untrusted

SECRET = "sk-rc-fake-secret-4242"


def _layers():
    try:
        return run_untrusted("pass").layers
    except SandboxError:
        return ()


FULL = _layers()
needs_full = pytest.mark.skipif(not FULL, reason="this machine lacks a required layer")


def has(prefix):
    return any(x.startswith(prefix) for x in FULL)


@pytest.fixture
def sibling():
    """Another process of this user, started with a secret in its environment."""
    proc = subprocess.Popen(["sleep", "60"], env={"PATH": "/usr/bin:/bin",
                                                  "RC_FAKE_SECRET": SECRET})
    yield proc
    proc.kill()
    proc.wait()


def tries(*calls):
    """Code that runs each call and prints `name: ok` or `name: ErrorType`."""
    lines = ["import os, resource"]
    for name, call in calls:
        lines.append(f"try:\n    {call}\n    print({name!r} + ': ok')\n"
                     f"except Exception as e:\n    print({name!r} + ': ' + type(e).__name__)")
    return "\n".join(lines)


# -- other processes ------------------------------------------------------------------------------


@needs_full
def test_prlimit_and_setpriority_on_the_parent_change_nothing():
    me = os.getpid()
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    nice = os.getpriority(os.PRIO_PROCESS, me)
    lowered = (before[0] - 1, before[1])  # gentle: restorable should the attack get through
    try:
        r = run_untrusted(tries(
            ("parent", f"resource.prlimit({me}, resource.RLIMIT_NOFILE, {lowered})"),
            ("ppid", f"resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, {lowered})"),
            ("nice", f"os.setpriority(os.PRIO_PROCESS, {me}, {min(nice + 1, 19)})")))
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == before
        assert os.getpriority(os.PRIO_PROCESS, me) == nice
        assert "parent: ok" not in r.stdout and "nice: ok" not in r.stdout, r.stdout + r.stderr
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
        try:
            os.setpriority(os.PRIO_PROCESS, me, nice)
        except OSError:
            pass  # lowering nice again needs CAP_SYS_NICE


@needs_full
def test_prlimit_and_setpriority_on_a_sibling_change_nothing(sibling):
    pid = sibling.pid
    cpu, nice = resource.prlimit(pid, resource.RLIMIT_CPU), os.getpriority(os.PRIO_PROCESS, pid)
    r = run_untrusted(tries(
        ("cpu", f"resource.prlimit({pid}, resource.RLIMIT_CPU, (1, 1))"),
        ("nice", f"os.setpriority(os.PRIO_PROCESS, {pid}, 19)"),
        ("user", "os.setpriority(os.PRIO_USER, 0, 19)"),
        ("affinity", f"os.sched_setaffinity({pid}, {{0}})")))
    assert resource.prlimit(pid, resource.RLIMIT_CPU) == cpu
    assert os.getpriority(os.PRIO_PROCESS, pid) == nice
    assert sibling.poll() is None
    for name in ("cpu", "nice", "user", "affinity"):
        assert f"{name}: ok" not in r.stdout, r.stdout


@pytest.mark.parametrize("guard", ["seccomp", "namespaces"])
def test_each_guard_alone_stops_prlimit_on_a_sibling(guard, sibling):
    if not has("seccomp" if guard == "seccomp" else "pidns"):
        pytest.skip(f"no {guard} here")
    alone = {"use_audit_hook": False, "use_landlock": False, "allow_unsafe": True,
             "use_seccomp": guard == "seccomp", "use_namespaces": guard == "namespaces"}
    cpu = resource.prlimit(sibling.pid, resource.RLIMIT_CPU)
    call = f"resource.prlimit({sibling.pid}, resource.RLIMIT_CPU, (1, 1))"
    r = run_untrusted(tries(("cpu", call)), **alone)
    want = "PermissionError" if guard == "seccomp" else "ProcessLookupError"
    assert r.stdout.strip() == f"cpu: {want}", r.stdout + r.stderr
    assert resource.prlimit(sibling.pid, resource.RLIMIT_CPU) == cpu


@needs_full
def test_own_hard_limits_cannot_be_raised():
    """Even when the caller is root: the sandbox has no capability outside its namespace."""
    unlimited = "(resource.RLIM_INFINITY, resource.RLIM_INFINITY)"
    r = run_untrusted(tries(("as", f"resource.setrlimit(resource.RLIMIT_AS, {unlimited})")))
    assert r.stdout.strip() == "as: ValueError", r.stdout + r.stderr


@needs_full
def test_no_new_processes_session_or_anonymous_executables_without_the_audit_hook():
    r = run_untrusted(tries(("fork", "os.fork()"), ("setsid", "os.setsid()"),
                            ("spawn", "os.posix_spawn('/bin/true', ['true'], {})"),
                            ("memfd", "os.memfd_create('elf')")),  # Landlock lets it be exec'd
                      use_audit_hook=False)
    assert r.stdout.split("\n")[:4] == ["fork: PermissionError", "setsid: PermissionError",
                                        "spawn: PermissionError", "memfd: PermissionError"], (
        r.stdout + r.stderr)


# -- secrets --------------------------------------------------------------------------------------


@needs_full
def test_cannot_read_passwd_or_any_environment_with_a_secret(sibling, monkeypatch):
    monkeypatch.setenv("RC_FAKE_SECRET", SECRET)
    code = tries(("passwd", "print(open('/etc/passwd').read())"),
                 ("sibling", f"print(open('/proc/{sibling.pid}/environ').read())"),
                 ("parent", f"print(open('/proc/{os.getpid()}/environ').read())"),
                 ("ppid", "print(open('/proc/%d/environ' % os.getppid()).read())"),
                 ("own", "print(dict(os.environ))"))
    r = run_untrusted(code)
    assert SECRET not in r.stdout + r.stderr
    assert "root:" not in r.stdout
    assert "own: ok" in r.stdout  # its own (minimal) environment is no secret


# -- the disk -------------------------------------------------------------------------------------


@needs_full
def test_total_disk_is_capped_not_just_each_file():
    small_files = ("n = 0\nfor i in range(2000):\n    open('f%d' % i, 'wb').write(b'x' * 16384)\n"
                   "    n += 1\nprint('WROTE', n)")  # 32 MiB in 16 KiB files: each one is small
    r = run_untrusted(small_files)
    assert not r.ok and r.killed_reason == "disk_limit", r.stderr
    assert "WROTE" not in r.stdout
    r = run_untrusted("import os\nfor i in range(5000):\n    os.mkdir('d%d' % i)\nprint('MADE')")
    assert not r.ok and r.killed_reason == "disk_limit" and "MADE" not in r.stdout
    r = run_untrusted("import os\nos.makedirs('a/b/c')\nfor i in range(10):\n"
                      "    open('a/b/c/%d' % i, 'wb').write(b'x' * 200_000)",
                      max_disk_bytes=1 << 20)
    assert not r.ok and r.killed_reason == "disk_limit"


# -- refusing to run without a required layer -----------------------------------------------------


@needs_full
@pytest.mark.parametrize("layer", REQUIRED)
def test_refuses_to_run_without_a_required_layer(layer, tmp_path, monkeypatch):
    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    marker = tmp_path / "ran.txt"
    code = f"open({str(marker)!r}, 'w').write('x')\nprint('RAN')"
    with pytest.raises(SandboxError) as err:
        run_untrusted(code, simulate_missing=(layer,))
    message = str(err.value)
    assert "\n" not in message and UNSAFE_ENV in message and layer in message
    assert err.value.code == "sandbox_unsafe"
    assert not marker.exists()
    monkeypatch.setenv(UNSAFE_ENV, "1")
    r = run_untrusted("print('RAN')", simulate_missing=(layer,))
    assert r.ok and r.stdout == "RAN\n"
    gone = {"namespaces": "userns", "tmpfs": "tmpfs", "view": "view", "landlock": "landlock",
            "seccomp": "seccomp"}[layer]
    assert not any(x.startswith(gone) for x in r.layers)


@needs_full
def test_switching_a_layer_off_is_refused_too(monkeypatch):
    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    with pytest.raises(SandboxError, match="landlock"):
        run_untrusted("print(open('/etc/passwd').read())", use_landlock=False)
    r = run_untrusted("print(open('/etc/passwd').read())", use_landlock=False, use_view=False,
                      allow_unsafe=True)
    assert "root:" in r.stdout  # what the message warns about: without Landlock, files leak


# -- the seccomp filter, decision by decision (pure: runs on any machine) ------------------------


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_filter_decisions(arch):
    prog = sc.build_filter(arch, pid=1)
    eperm, allow = sc.RET_ERRNO | sc.EPERM, sc.RET_ALLOW

    def decide(name, *args):
        return sc.run_filter(prog, arch, sc.syscall_number(name, arch), args)

    assert decide("prlimit64", 0) == allow and decide("prlimit64", 1) == allow
    assert decide("prlimit64", 4242) == eperm
    assert decide("setpriority", 0, 0) == allow and decide("setpriority", 0, 1) == allow
    assert decide("setpriority", 0, 4242) == eperm and decide("setpriority", 2, 0) == eperm
    assert decide("kill", 1, 9) == allow and decide("kill", 0, 9) == eperm
    assert decide("kill", 0xFFFFFFFF, 9) == eperm and decide("tgkill", 4242, 4242, 9) == eperm
    assert decide("sched_setaffinity", 4242) == eperm and decide("ioprio_set", 1, 0) == allow
    assert decide("clone", sc.CLONE_THREAD | 0x100) == allow
    assert decide("clone", 17) == eperm  # fork(): SIGCHLD, no CLONE_THREAD
    assert decide("clone3") == sc.RET_ERRNO | sc.ENOSYS  # glibc then falls back to clone
    for name in ("ptrace", "process_vm_readv", "mount", "unshare", "bpf", "socket",
                 "io_uring_setup", "pidfd_open", "setsid", "keyctl"):
        assert decide(name) == eperm, name
    assert sc.run_filter(prog, arch, 0, ()) == allow  # read / io_setup: untouched
    assert sc.run_filter(prog, "i386", 0, ()) == sc.RET_KILL  # another ABI
    if arch == "x86_64":
        assert sc.run_filter(prog, arch, 0x40000000 | 39, ()) == sc.RET_KILL  # x32


@needs_full
def test_the_layers_this_machine_has_are_reported():
    for name in ("userns", "pidns", "netns", "mountns", "tmpfs", "view", "landlock-abi",
                 "seccomp", "audit"):
        assert has(name), (name, FULL)
