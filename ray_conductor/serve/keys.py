"""API keys: where they come from (the config's `api_keys`, a keys file, an environment
variable), what the app keeps of them (a SHA-256 digest and a short key id, never the key),
and checking a request's `Authorization: Bearer` header. Pure: no Ray.

A keys file is a text file with one key per line (`#` comments), or a YAML list whose entries
are keys or `{key, name, requests_per_minute, dollars_per_day}` (per-key limits; unset ones
take the config's `limits`). The environment variable holds keys separated by commas.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray_conductor.errors import ConfigError, ServeError

MIN_KEY_CHARS = 8


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str:
    """The name logs and limits use for a key: a hash prefix, from which the key cannot be
    recovered."""
    return "key_" + digest(key)[:16]


@dataclass(frozen=True)
class KeyRecord:
    """What the app knows of one key. Limits: None takes the config's default."""

    key_id: str
    sha256: str
    name: str = ""
    requests_per_minute: float | None = None
    dollars_per_day: float | None = None

    @classmethod
    def of(cls, key: str, **kw: Any) -> KeyRecord:
        if not isinstance(key, str) or len(key.strip()) < MIN_KEY_CHARS or key != key.strip():
            raise ConfigError(f"an API key must be a string of at least {MIN_KEY_CHARS} "
                              "characters without surrounding spaces (one was not; it is not "
                              "shown here)")
        return cls(key_id(key), digest(key), **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _entry(item: Any, where: str) -> KeyRecord:
    if isinstance(item, str):
        return KeyRecord.of(item)
    if isinstance(item, Mapping) and isinstance(item.get("key"), str):
        extra = set(item) - {"key", "name", "requests_per_minute", "dollars_per_day"}
        if extra:
            raise ConfigError(f"{where}: unknown fields {sorted(extra)}; use key, name, "
                              "requests_per_minute, dollars_per_day")
        return KeyRecord.of(item["key"], name=str(item.get("name") or ""),
                            requests_per_minute=item.get("requests_per_minute"),
                            dollars_per_day=item.get("dollars_per_day"))
    raise ConfigError(f"{where}: each entry is a key or {{key, name, requests_per_minute, "
                      "dollars_per_day}")


def read_keys_file(path: str) -> list[KeyRecord]:
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"api_keys_file {str(p)!r} cannot be read ({e.strerror or e}); "
                          "point it at a file with one key per line") from None
    if p.suffix in (".yaml", ".yml", ".json"):
        import yaml
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            items = OmegaConf.to_container(OmegaConf.create(text))
        except (OmegaConfBaseException, yaml.YAMLError, ValueError):  # its message could
            # quote a key: say only where
            raise ConfigError(f"api_keys_file {str(p)!r} is not valid YAML") from None
        if not isinstance(items, list):
            raise ConfigError(f"api_keys_file {str(p)!r}: expected a YAML list of keys")
        return [_entry(x, f"api_keys_file {str(p)!r} entry {i}") for i, x in enumerate(items)]
    lines = [ln.strip() for ln in text.splitlines()]
    return [KeyRecord.of(ln) for ln in lines if ln and not ln.startswith("#")]


def load_keys(api_keys: Iterable[Any] = (), keys_file: str | None = None,
              env_var: str | None = None, environ: Mapping[str, str] | None = None
              ) -> list[KeyRecord]:
    """Every configured key as a record, in order, each key once."""
    environ = os.environ if environ is None else environ
    records = [_entry(k, f"api_keys[{i}]") for i, k in enumerate(api_keys or [])]
    if keys_file:
        records += read_keys_file(keys_file)
    if env_var and environ.get(env_var):
        records += [KeyRecord.of(k.strip()) for k in environ[env_var].split(",") if k.strip()]
    seen: dict[str, KeyRecord] = {}
    for r in records:
        seen.setdefault(r.key_id, r)
    return list(seen.values())


class KeyRing:
    """Checks bearer tokens against the configured digests. With no keys configured every
    request is let in as the anonymous caller (key id None)."""

    def __init__(self, records: Iterable[KeyRecord | Mapping[str, Any]]):
        recs = [r if isinstance(r, KeyRecord) else KeyRecord(**r) for r in records]
        self._by_digest = {r.sha256: r for r in recs}

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def records(self) -> list[KeyRecord]:
        return list(self._by_digest.values())

    def identify(self, authorization: str | None) -> KeyRecord | None:
        """The caller's key record; `ServeError` 401 when keys are configured and the header
        is missing, malformed or carries an unknown key."""
        if not self.enabled:
            return None
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServeError("missing API key: send `Authorization: Bearer <key>`", 401,
                             code="invalid_api_key")
        record = self._by_digest.get(digest(token.strip()))
        if record is None:
            raise ServeError("invalid API key (not one of this server's keys)", 401,
                             code="invalid_api_key")
        return record
