"""Typed configuration: OmegaConf structured configs built from dataclasses, a YAML file from
`configs/`, and `key=value` overrides from the command line, merged in that order.

Each command owns one schema dataclass (e.g. `EvalConfig`); one config object is passed down,
there are no globals. Unknown keys and badly typed values raise `ConfigError` naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ray_conductor.errors import ConfigError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


def default_data_dir() -> str:
    """`../shared/data` beside the checkout, unless RAY_CONDUCTOR_DATA says otherwise."""
    return os.environ.get("RAY_CONDUCTOR_DATA", str(REPO_ROOT.parent / "shared" / "data"))


@dataclass
class RayConfig:
    """How to reach (or start) Ray. `address="local"` starts a fresh local cluster."""

    address: str = "local"
    namespace: str = "ray_conductor"
    num_cpus: int | None = None
    object_store_memory_mb: int = 512
    include_dashboard: bool = False


def resolve_config_file(name: str) -> Path:
    p = Path(name)
    for cand in (p, CONFIG_DIR / p, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config file {name!r} not found (looked in . and {CONFIG_DIR})")


def load(schema: type[T], argv: Sequence[str] = (), *, defaults: str | None = None) -> T:
    """Build a `schema` config from an optional YAML file and `key=value` overrides.

    `config=NAME` in `argv` names a YAML file (a path, or a name under `configs/`);
    `defaults` is the file used when none is named. Returns a DictConfig typed as `schema`.
    """
    argv = list(argv)
    for a in argv:
        if "=" not in a:
            raise ConfigError(f"argument {a!r} is not key=value (e.g. split=test)")
    files = [a.split("=", 1)[1] for a in argv if a.startswith("config=")]
    overrides = [a for a in argv if not a.startswith("config=")]
    cfg = OmegaConf.structured(schema)
    try:
        for f in ([defaults] if defaults and not files else []) + files:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(resolve_config_file(f)))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        raise ConfigError(f"bad config{f' key {key!r}' if key else ''}: {_first_line(e)}") from None
    return cfg  # type: ignore[return-value]


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict copy of a config (for reports and checkpoints)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


__all__ = ["RayConfig", "ConfigError", "load", "to_dict", "default_data_dir", "field", "dataclass"]
