"""Where every output goes: one `storage` setting, as Ray Train's `storage_path`.

`storage` is a local path or a URI that `pyarrow.fs` opens (`file://`, `s3://`, `gs://`,
...); the default is $RAY_CONDUCTOR_STORAGE, else `~/ray_conductor`. Every output a command
writes (reports, runs, registries, traffic logs, online state) is named by a path, and a
relative one is resolved against `storage`, never against the working directory: inside a
Ray job that is Ray's per-upload cache (`.../runtime_resources/working_dir_files/_ray_pkg_*`),
shared by every job of the same upload and deleted with the session or the pod. A path that
still points into such a cache (or a relative `storage` inside one) is refused in one line.

Output paths may name the command's settings in braces (`traffic/{app_name}`), filled in
here. A relative policy reference (`lite:DIR`, `registry:DIR[@N]`, a run directory) names
what an earlier command wrote under `storage` when it is there, so the references handed to
Serve replicas are absolute and do not depend on a replica's own directory.

Remote storage (a URI whose file system is not local): the command writes to a local staging
directory and uploads it when it ends (`Placement.finish`). Commands that write while others
read (serving's traffic log, the online loop's registry and state) need a file system with
atomic renames and appends, and refuse a remote `storage`: mount the bucket or a shared
volume there and give its path.

Plain Python over pyarrow.fs; no Ray, no torch.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ray_conductor.errors import ConfigError

STORAGE_ENV = "RAY_CONDUCTOR_STORAGE"
DEFAULT_STORAGE = "~/ray_conductor"
JOB_CACHE = "/runtime_resources/"  # every Ray runtime-env cache dir is under one of these
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
PATH_REFS = ("lite:", "registry:", "scripted:", "conductor:")


def default_storage() -> str:
    """$RAY_CONDUCTOR_STORAGE, else ~/ray_conductor."""
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def in_job_cache(path: str | os.PathLike) -> bool:
    """Whether `path` lies in a Ray runtime-env cache (a job's uploaded working directory)."""
    return JOB_CACHE in f"{os.path.abspath(os.fspath(path))}/"


def _cache_error(what: str, path: str) -> ConfigError:
    return ConfigError(f"{what}={path} is inside Ray's working-directory cache of this job "
                       "(deleted with the session, shared by every job of the upload): write "
                       f"under storage instead (storage=/shared/path or ${STORAGE_ENV})")


@dataclass(frozen=True)
class Storage:
    """A resolved `storage`: the pyarrow file system and the root inside it."""

    uri: str  # as printed: an absolute local path, or the URI
    fs: Any = field(repr=False, compare=False)  # pyarrow.fs.FileSystem
    root: str  # the root inside `fs`

    @property
    def local(self) -> bool:
        import pyarrow.fs as pafs

        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, rel: str) -> str:
        """`rel` under the root, as a path (local) or a URI (remote)."""
        rel = rel.strip("/")
        if self.local:
            return os.path.join(self.root, rel)
        return f"{self.uri.rstrip('/')}/{rel}"

    def staging(self) -> Path:
        """Where a command writes before it uploads to remote storage."""
        base = Path(os.environ.get("RAY_CONDUCTOR_CACHE") or Path.home() / ".cache"
                    / "ray_conductor")
        return base / "staging" / hashlib.sha256(self.uri.encode()).hexdigest()[:12]


def resolve_storage(setting: str | None = None) -> Storage:
    """The `storage` setting (None or empty: the default) through pyarrow.fs."""
    text = str(setting).strip() if setting is not None else ""
    text = text or default_storage()
    if "://" not in text:
        path = os.path.expanduser(text)
        if not os.path.isabs(path):
            if in_job_cache(os.getcwd()):
                raise ConfigError(f"storage={text} is relative, and this job's working "
                                  "directory is Ray's upload cache: give an absolute path or a "
                                  f"URI (storage=/shared/ray_conductor, s3://bucket/prefix), or "
                                  f"set ${STORAGE_ENV} on the nodes")
            path = os.path.abspath(path)
        if in_job_cache(path):
            raise _cache_error("storage", path)
        text = os.path.normpath(path)
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(text)
    except (OSError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"storage={text}: pyarrow.fs cannot open it ({first}); give a local "
                          "path or a URI such as s3://bucket/prefix or gs://bucket/prefix") \
            from None
    if isinstance(fs, pafs.LocalFileSystem):
        text = root
    return Storage(text, fs, root)


def fill(template: str, cfg: Any) -> str:
    """`template` with `{name}` replaced by the config's setting `name` (an unknown name is
    left as written)."""
    def value(m: re.Match) -> str:
        v = getattr(cfg, m.group(1), None)
        return m.group(0) if v is None or not isinstance(v, (str, int)) else str(v)

    return _PLACEHOLDER.sub(value, template)


def output_path(storage: Storage, value: str, what: str) -> str:
    """Where output `what=value` goes: `value` as given when absolute (or a URI), else under
    `storage`. A path inside a job's working-directory cache is refused."""
    value = os.path.expanduser(str(value).strip())
    if not value:
        raise ConfigError(f"{what}= is empty: give a path (relative ones go under storage)")
    if "://" in value:
        return value
    if os.path.isabs(value):
        if in_job_cache(value):
            raise _cache_error(what, value)
        return os.path.normpath(value)
    return storage.join(value)


def resolve_reference(ref: str, storage: Storage) -> str:
    """A policy reference with a relative path made absolute: under `storage` when it is
    there (what an earlier command wrote), else against this directory when it is there; a
    `registry:` is always under storage (it may not exist yet); anything else (a model name,
    `knn`, `lite:default`) as given."""
    ref = str(ref).strip()
    prefix = next((p for p in PATH_REFS if ref.startswith(p)), "")
    body = ref[len(prefix):]
    suffix = ""
    if prefix == "registry:" and "@" in body:
        body, suffix = body.rsplit("@", 1)
        suffix = "@" + suffix
    if not body or "://" in body or (prefix == "lite:" and body == "default"):
        return ref
    body = os.path.expanduser(body)
    if os.path.isabs(body):
        return prefix + body + suffix
    if not prefix and "/" not in body:  # knn, cheapest, a model name
        return ref
    if not storage.local:
        return ref
    under = storage.join(body)
    if prefix == "registry:" or os.path.exists(under):
        return prefix + under + suffix
    here = os.path.abspath(body)  # e.g. a plan file shipped with the job's upload: an input
    return prefix + here + suffix if os.path.exists(here) else ref


@dataclass
class Placement:
    """What a command's outputs resolved to: `outputs` maps each key to where it goes
    (a URI for remote storage), `local` to where the command writes it now."""

    storage: Storage
    outputs: dict[str, str] = field(default_factory=dict)
    local: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.outputs.items())
        return f"storage {self.storage.uri}" + (f"; {where}" if where else "")

    def finish(self) -> list[str]:
        """Upload what was staged (remote storage); the URIs written."""
        if self.storage.local:
            return []
        import pyarrow.fs as pafs

        done = []
        for key, target in self.outputs.items():
            src = self.local[key]
            if not os.path.exists(src):
                continue
            dest = target.split("://", 1)[1] if "://" in target else target
            if os.path.isdir(src):
                pafs.copy_files(src, dest, source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.storage.fs)
            else:
                parent = dest.rsplit("/", 1)[0]
                self.storage.fs.create_dir(parent, recursive=True)
                pafs.copy_files(src, dest, source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.storage.fs)
            done.append(target)
        return done


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _set(cfg: Any, key: str, value: Any) -> None:
    *head, last = key.split(".")
    node = cfg
    for part in head:
        node = getattr(node, part)
    setattr(node, last, value)


def place(cfg: Any, outputs: Sequence[str], inputs: Sequence[str] = (), *,
          remote_ok: bool = True, command: str = "this command") -> Placement:
    """Resolve `cfg.storage` and rewrite the output keys of `cfg` (dotted; None left None)
    to where the command writes them, and the reference keys `inputs` (a text, a list or a
    mapping of policy references) to absolute paths. With remote storage and `remote_ok`,
    outputs are written to a staging directory that `Placement.finish` uploads; without it,
    a remote storage is refused."""
    storage = resolve_storage(getattr(cfg, "storage", None))
    if not storage.local and not remote_ok:
        raise ConfigError(f"storage={storage.uri}: {command} writes files that other processes "
                          "read while it runs (atomic renames, appends), which object storage "
                          "does not offer; mount the bucket or a shared volume and give its "
                          "path (storage=/mnt/...)")
    placed = Placement(storage)
    if hasattr(cfg, "storage"):
        cfg.storage = storage.uri
    for key in outputs:
        value = _get(cfg, key)
        if value is None:
            continue
        target = output_path(storage, fill(str(value), cfg), key)
        local = target
        if "://" in target:
            if storage.local or not target.startswith(storage.uri.rstrip("/") + "/"):
                raise ConfigError(f"{key}={target}: a URI output goes under storage (give a "
                                  f"path relative to storage={storage.uri})")
            local = str(storage.staging() / target[len(storage.uri.rstrip('/')) + 1:])
        placed.outputs[key], placed.local[key] = target, local
        _set(cfg, key, local)
    for key in inputs:
        value = _get(cfg, key)
        if isinstance(value, str):
            _set(cfg, key, resolve_reference(value, storage))
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
            _set(cfg, key, [resolve_reference(v, storage) for v in value])
        elif value is not None and hasattr(value, "items"):
            _set(cfg, key, {k: resolve_reference(v, storage) for k, v in value.items()})
    return placed
