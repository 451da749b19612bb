"""The policy registry: numbered, immutable conductor versions on disk and one atomic pointer
to the promoted one. Training publishes checkpoints here, rollout actors and the serving
planner load what it points to, and online retraining promotes and rolls back through it.

Layout of a registry directory::

    versions/v000003/        a published policy (an HF model dir, or a lite policy dir)
    versions/v000003/VERSION.json   kind, source, metrics, created
    PROMOTED                 {"version": 3, ...}, replaced atomically (os.replace)
    history.jsonl            every promotion and rollback, appended

Readers never see a half-written version (it is built under a temporary name and renamed)
or a half-written pointer (written whole, synced, renamed). Every file is validated on read:
a damaged `PROMOTED` is rebuilt from the history (a one-line `ConfigError` naming it where
the history cannot), a damaged `VERSION.json` from its directory (number, kind), and a torn
history line (a crash mid-append) is skipped. Plain Python: no torch, no Ray.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ray_conductor.errors import ConfigError

SCHEME = "registry:"
_META = "VERSION.json"
_ACTIONS = ("promote", "rollback")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyVersion:
    """One published policy: its number, where it lives, what kind it is."""

    version: int
    path: str
    kind: str = "lm"  # "lm" (conductor LM directory) | "lite"
    meta: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0

    @property
    def tag(self) -> str:
        return f"v{self.version}"


class PolicyRegistry:
    """Publish, list, promote and roll back policy versions under `root`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    # -- writing --------------------------------------------------------------------------
    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def publish(self, source: str | os.PathLike, *, kind: str = "lm",
                meta: dict[str, Any] | None = None) -> PolicyVersion:
        """Copy the policy directory `source` in as the next version (not promoted)."""
        src = Path(source)
        if not src.is_dir():
            raise ConfigError(f"cannot publish {str(src)!r}: not a policy directory")
        with self._lock():
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.versions_dir.glob(".tmp-*"):  # an earlier crash mid-copy
                shutil.rmtree(stale, ignore_errors=True)
            n = max((v.version for v in self.versions()), default=0) + 1
            tmp = self.versions_dir / f".tmp-{n}-{os.getpid()}"
            shutil.copytree(src, tmp)
            pv = PolicyVersion(n, str(self.versions_dir / f"v{n:06d}"), kind,
                               dict(meta or {}), time.time())
            (tmp / _META).write_text(json.dumps(asdict(pv), indent=2, default=str))
            os.replace(tmp, pv.path)
        return pv

    def promote(self, version: int, *, reason: str = "",
                figures: dict[str, Any] | None = None) -> PolicyVersion:
        """Point at `version` (atomically) and append the decision to the history."""
        with self._lock():
            pv = self.get(version)
            previous = self.promoted()
            self._write_pointer(pv, previous, "promote", reason, figures)
        return pv

    def rollback(self, *, reason: str = "") -> PolicyVersion:
        """Point back at the version promoted before the current one."""
        with self._lock():
            current = self.promoted()
            if current is None:
                raise ConfigError(f"registry {self.root}: nothing is promoted, so nothing to "
                                  "roll back")
            prev = (self.pointer() or {}).get("previous")
            if prev is None:
                raise ConfigError(f"registry {self.root}: {current.tag} is the first promoted "
                                  "version; there is nothing to roll back to")
            pv = self.get(prev)
            self._write_pointer(pv, current, "rollback", reason, None)
        return pv

    def _write_pointer(self, pv: PolicyVersion, previous: PolicyVersion | None, action: str,
                       reason: str, figures: dict[str, Any] | None) -> None:
        prev_n = previous.version if previous else None
        if action == "rollback":  # the version before the restored one stays reachable
            prev_n = self._promoted_before(pv.version)
        pointer = {"version": pv.version, "previous": prev_n, "time": time.time()}
        tmp = self.root / f".PROMOTED.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(pointer))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / "PROMOTED")
        row = {"time": pointer["time"], "action": action, "version": pv.version,
               "from": previous.version if previous else None, "reason": reason,
               "figures": figures or {}}
        with open(self.root / "history.jsonl", "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _promoted_before(self, version: int) -> int | None:
        """The version that was promoted right before `version` last was."""
        rows = self.history()
        for i in range(len(rows) - 1, -1, -1):
            if rows[i]["action"] == "promote" and rows[i]["version"] == version:
                return rows[i]["from"]
        return None

    # -- reading --------------------------------------------------------------------------
    def versions(self) -> list[PolicyVersion]:
        if not self.versions_dir.is_dir():
            return []
        versions = (version_at(d) for d in sorted(self.versions_dir.glob("v[0-9]*")))
        return [v for v in versions if v is not None]

    def get(self, version: int) -> PolicyVersion:
        for v in self.versions():
            if v.version == int(version):
                return v
        raise ConfigError(f"registry {self.root} has no version {version}; it has "
                          f"{[v.version for v in self.versions()] or 'none'}")

    def latest(self) -> PolicyVersion | None:
        vs = self.versions()
        return vs[-1] if vs else None

    def promoted(self) -> PolicyVersion | None:
        pointer = self.pointer()
        return None if pointer is None else self.get(pointer["version"])

    def pointer(self) -> dict[str, Any] | None:
        """`PROMOTED` as {version, previous}; None when nothing was ever promoted. A damaged
        one is rebuilt from the history; where the history cannot, a `ConfigError`."""
        p = self.root / "PROMOTED"
        if not p.exists() and not self.history():
            return None
        try:
            d = json.loads(p.read_text())
            if not (isinstance(d, dict) and _number(d.get("version"))
                    and (d.get("previous") is None or _number(d.get("previous")))):
                raise ValueError("not a {version, previous} object")
            return d
        except (OSError, ValueError, UnicodeDecodeError) as e:
            rebuilt = self._pointer_from_history()
            if rebuilt is None:
                raise ConfigError(f"{p}: damaged ({type(e).__name__}: {str(e)[:80]}) and "
                                  f"{self.root / 'history.jsonl'} holds no promotion to rebuild "
                                  "it from; promote a version again") from None
            log.warning("registry %s: PROMOTED is damaged (%s); rebuilt from the history: "
                        "version %s", self.root, str(e)[:80], rebuilt["version"])
            return rebuilt

    def _pointer_from_history(self) -> dict[str, Any] | None:
        """The pointer the history's promotions and rollbacks leave, as `_write_pointer`
        writes it."""
        pointer, rows = None, self.history()
        for i, row in enumerate(rows):
            previous = row.get("from")
            if row["action"] == "rollback":  # the version promoted before the restored one
                previous = next((r.get("from") for r in reversed(rows[:i])
                                 if r["action"] == "promote" and r["version"] == row["version"]),
                                None)
            pointer = {"version": row["version"], "previous": previous,
                       "time": row.get("time")}
        return pointer

    def history(self) -> list[dict[str, Any]]:
        """Every promotion and rollback; a torn or foreign line is skipped."""
        p = self.root / "history.jsonl"
        if not p.is_file():
            return []
        out = []
        for line in p.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("action") in _ACTIONS and _number(
                    row.get("version")):
                out.append(row)
        return out


def _number(x: Any) -> bool:
    """A version number: an integer >= 1."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def version_at(path: str | os.PathLike) -> PolicyVersion | None:
    """The published version whose directory is `path` (None: not a published version). A
    damaged `VERSION.json` is rebuilt from the directory: its number from the name, its kind
    from its files (a `lite.json`: lite, else lm)."""
    path = Path(path)
    meta = path / _META
    if not meta.is_file():
        return None
    try:
        d = json.loads(meta.read_text())
        pv = PolicyVersion(**{**d, "path": str(path)})
        if not (_number(pv.version) and isinstance(pv.kind, str) and isinstance(pv.meta, dict)):
            raise ValueError("fields of the wrong type")
        return pv
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as e:
        digits = path.name.lstrip("v")
        if not digits.isdigit() or int(digits) < 1:
            return None
        kind = "lite" if (path / "lite.json").is_file() else "lm"
        log.warning("registry: %s is damaged (%s); read as version %s of kind %s", meta,
                    str(e)[:80], int(digits), kind)
        return PolicyVersion(int(digits), str(path), kind, {"rebuilt": f"{_META} was damaged"},
                             meta.stat().st_mtime)


def resolve_policy(spec: str) -> tuple[str, PolicyVersion | None]:
    """A policy reference -> (path to load, its version or None).

    `registry:DIR` is DIR's promoted version (else its latest); `registry:DIR@N` version N;
    anything else is a path or a model name, returned as it is."""
    if not spec.startswith(SCHEME):
        return spec, None
    root, _, ver = spec[len(SCHEME):].partition("@")
    reg = PolicyRegistry(root)
    if ver:
        if not ver.lstrip("v").isdigit():
            raise ConfigError(f"policy {spec!r}: the version after '@' must be a number")
        pv = reg.get(int(ver.lstrip("v")))
    else:
        pv = reg.promoted() or reg.latest()
        if pv is None:
            raise ConfigError(f"policy {spec!r}: the registry at {root!r} holds no version yet "
                              "(train one, or publish a checkpoint)")
    return pv.path, pv
