"""Starting or joining Ray, tuned for small machines by default (object store, no dashboard)."""

from __future__ import annotations

import os
from typing import Any

from ray_conductor.config import RayConfig


def init_ray(cfg: RayConfig | Any | None = None, quiet: bool = False) -> None:
    """Join `cfg.address` ("auto", "ray://...") or start a local cluster ("local").

    A local cluster gets token auth off (Ray 2.60 enables it by default, which breaks
    `ray job submit` on a laptop); a remote cluster keeps whatever its operator set. A SIGTERM
    handler set in Python before (the CLI's, the server's: `ray job stop` sends SIGTERM)
    stays: Ray's own crash handler, installed by `ray.init`, would end the process without
    running it. `quiet`: Ray's own start-up lines (INFO) are not printed, so a command that
    then stops on bad input prints its one line only.
    """
    import signal
    import threading

    import ray

    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    kw: dict[str, Any] = {"namespace": cfg.namespace, "ignore_reinit_error": True,
                          "log_to_driver": bool(getattr(cfg, "log_to_driver", True))}
    if quiet:
        import logging

        kw["logging_level"] = logging.WARNING
    if cfg.address in ("local", "", None):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kw.update(address="local", include_dashboard=cfg.include_dashboard,
                  object_store_memory=int(cfg.object_store_memory_mb) * 1024 * 1024)
        if cfg.num_cpus:
            kw["num_cpus"] = int(cfg.num_cpus)
    else:
        kw["address"] = cfg.address
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(**kw)
    if callable(previous):
        signal.signal(signal.SIGTERM, previous)


TORCH_THREADS_ENV = "RAY_CONDUCTOR_TORCH_THREADS"


def limit_torch_threads() -> None:
    """Inside a Ray actor, torch uses the CPUs Ray assigned, not every core of the node
    (oversubscribed threads made generation 4-8x slower on a busy 2-core machine).
    `RAY_CONDUCTOR_TORCH_THREADS` overrides it: the training loop alternates rollouts and
    updates, so on a small machine each phase may use every core (`torch_threads=`)."""
    import ray
    import torch

    n = os.environ.get(TORCH_THREADS_ENV) or (
        ray.get_runtime_context().get_assigned_resources().get("CPU") or 1)
    torch.set_num_threads(max(1, int(float(n))))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
