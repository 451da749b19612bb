"""The sandbox's first stage: lock the process down with the kernel, then `exec` the harness.

Run by `sandbox.run_untrusted` as `python -I -S -B sandbox_setup.py <config JSON>`, inside the
namespaces. In order: resource limits; a size- and inode-capped tmpfs over the working
directory (only in a private mount namespace), which then becomes the root of a filesystem
view of only the allowed trees; Landlock; the seccomp filter. A layer that is
switched off, simulated missing or refused by the kernel is recorded as missing; if a required
one is missing, this stage writes its report and exits with `REFUSED` before any untrusted
code exists in the process. Otherwise it `exec`s `sandbox_child.py` in a fresh interpreter
that never loaded `ctypes` (see sandbox_kernel for why that matters). Limits, Landlock and
seccomp survive the `exec`. Untrusted code never runs here and stdin is left unread for the
child. Stdlib only and no package imports: run as a script.
"""

from __future__ import annotations

import json
import os
import resource
import sys

REFUSED = 97  # exit status: a required layer is missing and nothing was run
HERE = os.path.dirname(os.path.abspath(__file__))


def load(name: str):
    """A sibling module of this file, by path (the package itself is not importable here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_rc_" + name, os.path.join(HERE, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mapped_files(lib_dynload: str | None) -> list[str]:
    """Files mapped into this interpreter (itself, libpython, libc, the ELF loader), which the
    `exec`ed one needs again; lib-dynload's modules are left to its own filtered rule."""
    paths = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/") and "(deleted)" not in parts[5]:
                paths.add(parts[5].strip())
    skip = (lib_dynload.rstrip("/") + "/") if lib_dynload else None
    return sorted(p for p in paths if not (skip and p.startswith(skip)))


def view_of(policy: dict) -> dict:
    """What the filesystem view holds (see `sandbox_kernel.build_view`)."""
    stdlib = policy["stdlib"].rstrip("/")
    binds = [stdlib, *([policy["lib_dynload"]] if policy["lib_dynload"] else []),
             *policy["trees"], *policy["files"], *policy["exec_files"]]
    masks = [f"{stdlib}/site-packages", f"{stdlib}/dist-packages"]
    return {"binds": binds, "masks": masks, "late_binds": policy["packages"]}


def set_up(cfg: dict) -> tuple[list[str], dict[str, str]]:
    """Apply the kernel layers; returns the active ones and {missing layer: why}."""
    layers, why = list(cfg["layers"]), dict(cfg["why"])
    kernel, seccomp = load("sandbox_kernel"), load("sandbox_seccomp")  # before Landlock

    def attempt(name: str, apply) -> None:
        if name in cfg["simulate_missing"]:
            why[name] = "simulated missing"
        elif not cfg["use"][name]:
            why[name] = "switched off"
        else:
            try:
                layers.append(apply())
            except (OSError, ValueError) as e:
                why[name] = str(e) or type(e).__name__

    root, policy = cfg["root"], cfg["policy"]
    # what the exec'ed interpreter maps again; read before the view hides /proc/self/maps' paths
    policy["exec_files"] = [os.path.realpath(sys.executable),
                            *mapped_files(policy["lib_dynload"])]
    if cfg["mountns"]:  # never mount anything in the caller's own mount namespace
        attempt("tmpfs", lambda: kernel.mount_tmpfs(root, cfg["disk_bytes"], cfg["files"])
                or "tmpfs")
    else:
        why.setdefault("tmpfs", "no private mount namespace")
    if "tmpfs" in layers:
        attempt("view", lambda: kernel.build_view(root, view_of(policy)) or "view")
    else:
        why.setdefault("view", "needs the tmpfs working directory")
    os.chdir(root)
    attempt("landlock", lambda: f"landlock-abi{kernel.landlock(root, policy)}")
    attempt("seccomp", lambda: kernel.install_seccomp(
        seccomp.build_filter(kernel.arch(), os.getpid())) or "seccomp")
    return layers, why


def main() -> None:
    cfg = json.loads(sys.argv[1])
    for name, value in cfg["limits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    layers, why = set_up(cfg)
    refused = sorted(set(why) & set(cfg["required"]))
    if refused:
        report = {"layers": layers, "why": why, "refused": refused}
        os.write(cfg["report_fd"], (json.dumps(report) + "\n").encode())
        os._exit(REFUSED)
    child = {k: cfg[k] for k in ("root", "report_fd", "audit", "stdlib")}
    child["package_roots"] = cfg["policy"]["package_roots"]
    child["packages"] = cfg["policy"]["packages"]
    child.update(layers=layers, why=why)
    python = os.path.realpath(sys.executable)
    sys.stdout.flush()
    os.execv(python, [python, "-I", "-S", "-B", "-u", "-X", "utf8",
                      os.path.join(HERE, "sandbox_child.py"), json.dumps(child)])


if __name__ == "__main__":
    main()
