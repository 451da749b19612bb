"""The app's two named actors, thin shells over the pure cores: `KeyLimitsActor` (one
`KeyLimiter`, so per-key limits and budget reservations hold across every ingress replica;
its budget state is saved to a file, so a restarted actor carries on) and `TrafficWriter`
(one `TrafficLog` per app: a buffer flushed every few seconds, when full, and on close; rows
it cannot write go to the dead-letter file, counted in its metrics). Both are detached and
named after the app and the fingerprint of the config they were built from
(`serve/<app>/traffic@<fingerprint>`) in the graph's namespace, so every replica, and a
replica that restarts, finds the same ones (calls made while one restarts are retried), and
a new app never adopts a stale actor of the same name built for another config (e.g. an
earlier app's traffic log path, left behind by a job that was killed before it cleaned up):
that one is flushed and removed instead. `close_app_actors` flushes and removes every named
actor of an app when it goes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import ray

from ray_conductor.serve.limits import KeyLimiter, KeyLimits
from ray_conductor.serve.traffic import TrafficLog

log = logging.getLogger(__name__)
FEEDBACK_REFUSAL_S = 1.0  # every refused feedback answers after this: unknown ids and other
# keys' ids are told apart by nothing, their timing included


ROLES = ("key_limits", "traffic")


def actor_name(app: str, role: str, fingerprint: str) -> str:
    return f"serve/{app}/{role}@{fingerprint}"


def config_fingerprint(*args: Any) -> str:
    """What an actor was built from, in 12 hex digits."""
    text = json.dumps(args, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def app_actors(app: str, namespace: str) -> dict[str, list[str]]:
    """role -> the names of the app's named actors alive in `namespace`."""
    pattern = re.compile(rf"serve/{re.escape(app)}/({'|'.join(ROLES)})@[0-9a-f]+")
    out: dict[str, list[str]] = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        m = pattern.fullmatch(a["name"])
        if m and a["namespace"] == namespace:
            out.setdefault(m.group(1), []).append(a["name"])
    return out


def app_actor(app: str, role: str, namespace: str) -> Any:
    """The handle of the app's live actor of `role` (ValueError: none)."""
    names = app_actors(app, namespace).get(role) or []
    if len(names) != 1:
        raise ValueError(f"app {app!r} has {len(names)} {role} actors in {namespace!r}")
    return ray.get_actor(names[0], namespace=namespace)


@ray.remote
class KeyLimitsActor:
    def __init__(self, per_key: Mapping[str, Mapping[str, Any]], default: Mapping[str, Any],
                 state_path: str | None = None):
        self.core = KeyLimiter({k: KeyLimits(**v) for k, v in per_key.items()}, KeyLimits(**default),
                               state_path=state_path)

    def reserve(self, key_id: str, dollars: float) -> tuple[str | None, str | None, float]:
        """(ticket, None, 0) when admitted; (None, why not, retry after s) when refused."""
        ticket, refused = self.core.reserve(key_id, dollars)
        return (ticket, None, 0.0) if refused is None else (None, refused.message,
                                                             refused.retry_after_s)

    def check(self, key_id: str) -> tuple[str | None, float]:
        refused = self.core.check(key_id)
        return (None, 0.0) if refused is None else (refused.message, refused.retry_after_s)

    def settle(self, key_id: str, ticket: str | None, dollars: float) -> None:
        self.core.settle(key_id, ticket, dollars)

    def usage(self, key_id: str) -> dict[str, float]:
        return self.core.usage(key_id)


@ray.remote
class TrafficWriter:
    """Async actor: appends never wait for the disk; a background task flushes."""

    def __init__(self, root: str, max_rows: int = 2000, flush_s: float = 5.0):
        self.core = TrafficLog(root, max_rows)
        self.flush_s = flush_s
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self.errors = 0
        self._metrics: dict[str, Any] | None = None

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
        """None when attached; else why not. A refusal (an unknown id, or another key's)
        takes the same time and the same path whichever it is."""
        self._start()
        t0 = time.monotonic()
        if await self._owned(request_id, key_id):
            if self.core.add_feedback(request_id, key_id, reward, label):
                await self.flush()
            return None
        await asyncio.sleep(max(0.0, t0 + FEEDBACK_REFUSAL_S - time.monotonic()))
        return (f"no logged request {request_id!r} of this API key: send the `id` of a "
                "response this key received")

    async def _owned(self, request_id: str, key_id: str | None) -> bool:
        def mine(known: bool, owner: str | None) -> bool:
            return known and (key_id is None or owner == key_id)

        if mine(*self.core.owner_recent(request_id)):
            return True
        for _ in range(5):  # another ingress replica may still hold the row (0.1 s batches)
            await asyncio.sleep(0.1)
            if mine(*self.core.owner_recent(request_id)):
                return True
        return mine(*await asyncio.to_thread(self.core.owner_on_disk, request_id))

    async def flush(self) -> int:
        """Write what is buffered now (one flush at a time); rows whose write failed stay
        buffered and are retried by the next flush."""
        self._start()
        assert self._lock is not None
        async with self._lock:
            before = dict(self.core.dead_letter)
            try:
                n = await asyncio.to_thread(self.core.flush)
            except Exception:
                self.errors += 1
                self._count("flush_errors", 1)
                log.exception("traffic log flush failed; %d rows stay buffered",
                              self.core.pending())
                n = 0
            self._count("rows_written", n)
            self._count("dead_letter_rows",
                        sum(self.core.dead_letter.values()) - sum(before.values()))
            return n

    async def close(self) -> dict[str, Any]:
        """Write everything pending (the app is going); what could not be written even to
        the dead-letter file is counted as lost. Returns `stats`."""
        await self.flush()
        if self.core.pending():
            await asyncio.sleep(0.5)  # one more try, then give up loudly
            await self.flush()
        lost = self.core.pending()
        if lost:
            log.error("traffic log: %d rows could not be written at shutdown", lost)
        return {**self.stats(), "lost": lost}

    def _count(self, name: str, n: int) -> None:
        if n <= 0:
            return
        if self._metrics is None:
            from ray.util import metrics

            self._metrics = {k: metrics.Counter(f"conductor_traffic_{k}", f"traffic log {k}")
                             for k in ("rows_written", "dead_letter_rows", "flush_errors")}
        self._metrics[name].inc(float(n))

    def stats(self) -> dict[str, Any]:
        return {"pending": self.core.pending(), "written": dict(self.core.written),
                "dead_letter": dict(self.core.dead_letter), "errors": self.errors,
                "root": str(self.core.root)}


GRAPH_ROLES = {"key_limits": "key_limits", "traffic": "traffic_writer"}  # name -> graph role


def _get_or_create(graph: Any, app: str, role: str, *args: Any) -> Any:
    """The app's `role` actor built by the graph from exactly `args` (created, or found by
    its fingerprinted name); a live one of the same role built from other args is retired."""
    namespace = graph.namespace
    name = actor_name(app, role, config_fingerprint(role, args))
    for stale in app_actors(app, namespace).get(role, []):
        if stale != name:
            log.warning("retiring %s: built for another config of app %r", stale, app)
            _retire(stale, namespace, role, timeout_s=30.0)
    return graph.build(GRAPH_ROLES[role], *args, name=name)


def limits_actor(graph: Any, app: str, per_key: Mapping[str, Mapping[str, Any]],
                 default: Mapping[str, Any], state_path: str | None = None) -> Any:
    """The app's `KeyLimitsActor`, from the graph (`GraphSpec`) of its `key_limits` role."""
    return _get_or_create(graph, app, "key_limits", dict(per_key), dict(default), state_path)


def traffic_actor(graph: Any, app: str, root: str, max_rows: int, flush_s: float) -> Any:
    """The app's `TrafficWriter`, from the graph's `traffic_writer` role."""
    return _get_or_create(graph, app, "traffic", root, max_rows, flush_s)


def _retire(name: str, namespace: str, role: str, timeout_s: float) -> dict[str, Any]:
    """Close (a traffic writer: write what it holds), then kill one named actor; the
    writer's last stats."""
    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:  # already gone
        return {}
    stats: dict[str, Any] = {}
    if role == "traffic":
        try:
            stats = ray.get(handle.close.remote(), timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 - it is removed all the same
            log.warning("traffic writer %s did not flush (%s); rows it buffered are lost",
                        name, type(e).__name__)
    ray.kill(handle, no_restart=True)
    return stats


def flush_app_traffic(app: str, namespace: str, timeout_s: float) -> dict[str, Any]:
    """Flush the app's traffic writer now (it stays); its stats, {} when it did not answer."""
    for name in app_actors(app, namespace).get("traffic", []):
        try:
            handle = ray.get_actor(name, namespace=namespace)
            ray.get(handle.flush.remote(), timeout=timeout_s)
            return ray.get(handle.stats.remote(), timeout=max(0.2, timeout_s / 4))
        except Exception as e:  # noqa: BLE001 - the stop goes on
            log.warning("traffic writer %s did not flush (%s)", name, type(e).__name__)
    return {}


def close_app_actors(app: str, namespace: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Flush the app's traffic log, then remove every named actor of the app (stale ones
    included), within about `timeout_s`; returns the traffic writer's last stats."""
    end = time.monotonic() + timeout_s
    out: dict[str, Any] = {}
    found = app_actors(app, namespace)
    for role in sorted(found, key=lambda r: r != "traffic"):  # flush first
        for name in found[role]:
            stats = _retire(name, namespace, role, max(0.2, end - time.monotonic()))
            out = stats or out
    return out
