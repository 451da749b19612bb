"""The app's two named actors, thin shells over the pure cores: `KeyLimitsActor` (one
`KeyLimiter`, so per-key limits hold across every ingress replica) and `TrafficWriter` (one
`TrafficLog` per app: a bounded buffer flushed every few seconds, when full, and on close).
Both are detached and named after the app (`serve/<app>/key_limits`, `serve/<app>/traffic`)
in the graph's namespace, so every replica, and a replica that restarts, finds the same ones;
`close_app_actors` flushes and stops them when the app goes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import ray

from ray_conductor.serve.limits import KeyLimiter, Limits
from ray_conductor.serve.traffic import TrafficLog

log = logging.getLogger(__name__)


def actor_names(app: str) -> dict[str, str]:
    return {"limits": f"serve/{app}/key_limits", "traffic": f"serve/{app}/traffic"}


@ray.remote(num_cpus=0)
class KeyLimitsActor:
    def __init__(self, per_key: Mapping[str, Mapping[str, Any]], default: Mapping[str, Any]):
        self.core = KeyLimiter({k: Limits(**v) for k, v in per_key.items()}, Limits(**default))

    def admit(self, key_id: str) -> str | None:
        return self.core.admit(key_id)

    def charge(self, key_id: str, dollars: float) -> None:
        self.core.charge(key_id, dollars)

    def usage(self, key_id: str) -> dict[str, float]:
        return self.core.usage(key_id)


@ray.remote(num_cpus=0)
class TrafficWriter:
    """Async actor: appends never wait for the disk; a background task flushes."""

    def __init__(self, root: str, max_rows: int = 2000, flush_s: float = 5.0):
        self.core = TrafficLog(root, max_rows)
        self.flush_s = flush_s
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self.errors = 0

    def _start(self) -> None:
        if self._task is None:
            self._lock = asyncio.Lock()
            self._task = asyncio.get_running_loop().create_task(self._every())

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    async def append(self, rows: list[dict[str, Any]]) -> None:
        self._start()
        full = False
        for row in rows:
            full = self.core.append(row) or full
        if full:
            await self.flush()

    async def feedback(self, request_id: str, key_id: str | None, reward: float | None,
                       label: str | None) -> str | None:
        """None when attached; else why not (unknown id, or another key's request)."""
        self._start()
        known, owner = await asyncio.to_thread(self.core.owner, request_id)
        for _ in range(5):  # another ingress replica may still hold the row (0.1 s batches)
            if known:
                break
            await asyncio.sleep(0.1)
            known, owner = self.core.owner_recent(request_id)
        if not known or (key_id is not None and owner != key_id):
            return (f"no logged request {request_id!r} of this API key: send the `id` of a "
                    "response this key received")
        if self.core.add_feedback(request_id, key_id, reward, label):
            await self.flush()
        return None

    async def flush(self) -> int:
        """Write what is buffered now (one flush at a time); rows whose write failed stay
        buffered and are retried by the next flush."""
        self._start()
        assert self._lock is not None
        async with self._lock:
            try:
                return await asyncio.to_thread(self.core.flush)
            except Exception:
                self.errors += 1
                log.exception("traffic log flush failed; %d rows stay buffered",
                              self.core.pending())
                return 0

    def stats(self) -> dict[str, Any]:
        return {"pending": self.core.pending(), "written": dict(self.core.written),
                "errors": self.errors, "root": str(self.core.root)}


def _get_or_create(cls: Any, name: str, namespace: str, *args: Any) -> Any:
    return cls.options(name=name, namespace=namespace, get_if_exists=True,
                       lifetime="detached", max_restarts=-1).remote(*args)


def limits_actor(app: str, namespace: str, per_key: Mapping[str, Mapping[str, Any]],
                 default: Mapping[str, Any]) -> Any:
    return _get_or_create(KeyLimitsActor, actor_names(app)["limits"], namespace, dict(per_key),
                          dict(default))


def traffic_actor(app: str, namespace: str, root: str, max_rows: int, flush_s: float) -> Any:
    return _get_or_create(TrafficWriter, actor_names(app)["traffic"], namespace, root,
                          max_rows, flush_s)


def close_app_actors(app: str, namespace: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Flush the traffic log, then stop both actors; returns the writer's last stats."""
    out: dict[str, Any] = {}
    for role, name in actor_names(app).items():
        try:
            handle = ray.get_actor(name, namespace=namespace)
        except ValueError:  # never created, or already gone
            continue
        if role == "traffic":
            ray.get(handle.flush.remote(), timeout=timeout_s)
            out = ray.get(handle.stats.remote(), timeout=timeout_s)
        ray.kill(handle, no_restart=True)
    return out
