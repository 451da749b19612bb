"""Typed configuration: OmegaConf structured configs built from dataclasses, a YAML file from
`configs/`, and `key=value` overrides from the command line, merged in that order.

Each command owns one schema dataclass (e.g. `EvalConfig`); one config object is passed down,
there are no globals. Every option declares its help text and its range once, beside its
default (`opt(64, "how many workflows run at once", min=1)`, or `field(metadata=...)` with
the same keys), and `load` checks them all, nested configs included, so a bad value is one
`ConfigError` line naming the key, the value and what is allowed, before any work starts.
`--help` is generated from the same declarations (`describe`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ray_conductor.errors import ConfigError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
RANGE_KEYS = ("min", "gt", "max", "choices", "nonempty", "item_min")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.([A-Za-z_][A-Za-z0-9_-]*|[0-9]+))*$")  # dict keys: model names


def default_data_dir() -> str:
    """`../shared/data` beside the checkout, unless RAY_CONDUCTOR_DATA says otherwise."""
    return os.environ.get("RAY_CONDUCTOR_DATA", str(REPO_ROOT.parent / "shared" / "data"))


STORAGE_HELP = ("where outputs go: a path, or a URI pyarrow.fs opens (s3://, gs://); relative "
                "output paths are under it (null: $RAY_CONDUCTOR_STORAGE, else ~/ray_conductor)")


def storage_opt() -> Any:
    """The `storage` option every command that writes outputs has (see `storage.py`)."""
    return opt(None, STORAGE_HELP)


def opt(default: Any = MISSING, help: str = "", *, factory: Any = None, min: float | None = None,
        gt: float | None = None, max: float | None = None, choices: Sequence[Any] | None = None,
        nonempty: bool = False, item_min: float | None = None) -> Any:
    """A dataclass field that carries its help and range: `min`/`max` inclusive, `gt`
    exclusive, `choices` the allowed values, `nonempty` for lists and texts, `item_min` for
    every number in a list. None (an optional field left unset) is always allowed; a number
    must be finite (nan and inf are refused everywhere). Mutable defaults are copied per
    instance."""
    meta: dict[str, Any] = {"help": help}
    for k, v in (("min", min), ("gt", gt), ("max", max), ("choices", choices),
                 ("item_min", item_min)):
        if v is not None:
            meta[k] = tuple(v) if k == "choices" else v
    if nonempty:
        meta["nonempty"] = True
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RayConfig:
    """How to reach (or start) Ray. `address="local"` starts a fresh local cluster."""

    address: str = opt("local", "local (start a cluster here), auto, or ray://HOST:PORT")
    namespace: str = opt("ray_conductor", "Ray namespace the named actors live in",
                         nonempty=True)
    num_cpus: int | None = opt(None, "CPUs of a local cluster (null: all)", min=1)
    object_store_memory_mb: int = opt(512, "object store of a local cluster, MB", min=75)
    include_dashboard: bool = opt(False, "start Ray's dashboard with a local cluster")
    log_to_driver: bool = opt(True, "print the actors' and replicas' logs here")


# -- schema walking ----------------------------------------------------------------------------


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type without Optional, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(tp))
    return tp, tp is Any


@functools.lru_cache(maxsize=None)
def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _is_group(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _kind(tp: Any) -> str:
    """How the type reads in help and in error messages."""
    base, optional = _unwrap(tp)
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        args = typing.get_args(base)
        name = f"list[{_kind(args[0]) if args else 'any'}]"
    elif origin is dict:
        name = "mapping"
    else:
        name = {int: "int", float: "float", bool: "bool", str: "text"}.get(
            base, getattr(base, "__name__", str(base)))
    return f"{name}|null" if optional and base is not Any else name


_WANTS = {"int": "an integer", "float": "a number", "bool": "true or false", "text": "a text",
          "mapping": "a mapping like {a: 1}"}


def _wants(tp: Any) -> str:
    kind = _kind(tp)
    base = kind.removesuffix("|null")
    words = _WANTS.get(base, "a list like [a,b]" if base.startswith("list") else base)
    return f"{words} or null" if kind.endswith("|null") else words


@dataclass(frozen=True)
class Key:
    """One option as `--help` shows it."""

    name: str  # dotted
    kind: str
    default: Any
    help: str
    range: str


def _range_text(meta: typing.Mapping[str, Any]) -> str:
    parts = []
    if "choices" in meta:
        parts.append("one of " + ", ".join(map(str, meta["choices"])))
    if "min" in meta:
        parts.append(f">= {meta['min']}")
    if "gt" in meta:
        parts.append(f"> {meta['gt']}")
    if "max" in meta:
        parts.append(f"<= {meta['max']}")
    if "item_min" in meta:
        parts.append(f"items >= {meta['item_min']}")
    if meta.get("nonempty"):
        parts.append("not empty")
    return ", ".join(parts)


def describe(schema: type, cfg: Any = None, prefix: str = "") -> list[Key]:
    """Every option of `schema`, nested groups flattened to dotted keys, with the value it
    has in `cfg` (default: the schema's defaults)."""
    if cfg is None:
        cfg = OmegaConf.structured(schema)
    hints, out = _hints(schema), []
    for f in dataclasses.fields(schema):
        tp, value = hints[f.name], _get(cfg, f.name)
        base, _ = _unwrap(tp)
        if _is_group(base) and value is not None:
            out += describe(base, value, f"{prefix}{f.name}.")
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        out.append(Key(prefix + f.name, _kind(tp), value, f.metadata.get("help", ""),
                       _range_text(f.metadata)))
    return out


def _get(cfg: Any, name: str) -> Any:
    try:
        return cfg[name] if isinstance(cfg, DictConfig) else getattr(cfg, name)
    except OmegaConfBaseException:  # a mandatory value left missing ("???")
        return "???"


def _field_at(schema: type, key: str) -> tuple[Any, typing.Mapping[str, Any]] | None:
    """(type, metadata) of a dotted key; None where the key is inside a mapping or list (free
    form). Unknown keys raise `ConfigError` with the nearest known names."""
    tp: Any = schema
    meta: typing.Mapping[str, Any] = {}
    done: list[str] = []
    for part in key.split("."):
        base, _ = _unwrap(tp)
        if not _is_group(base):
            if typing.get_origin(base) in (dict, list, tuple) or base is Any:
                return None
            raise ConfigError(f"{'.'.join(done)} is a single value, not a group of keys: "
                              f"{key!r} does not exist")
        fields = {f.name: f for f in dataclasses.fields(base)}
        if part not in fields:
            raise ConfigError(_unknown(part, done, list(fields)))
        tp, meta = _hints(base)[part], fields[part].metadata
        done.append(part)
    return tp, meta


def _unknown(part: str, done: list[str], names: list[str]) -> str:
    where = ".".join(done)
    full = f"{where}.{part}" if where else part
    close = difflib.get_close_matches(part, names, n=3, cutoff=0.6) or [
        n for n in names if n.startswith(part[:3])][:3]
    hint = f"did you mean {', '.join(repr(f'{where}.{c}' if where else c) for c in close)}? " \
        if close else ""
    return f"unknown key {full!r}: {hint}(`--help` lists every key)"


# -- reading ---------------------------------------------------------------------------------


def resolve_config_file(name: str) -> Path:
    p = Path(name)
    for cand in (p, CONFIG_DIR / p, CONFIG_DIR / f"{name}.yaml"):
        try:
            if cand.is_file():
                return cand
        except (OSError, ValueError):  # a name too long, or with a NUL byte
            break
    raise ConfigError(f"config file {name!r} not found (looked in . and {CONFIG_DIR})")


def read_yaml(name: str, what: str = "config") -> DictConfig:
    """A YAML mapping from a file (a path or a name under `configs/`); anything else, or a
    file that cannot be read or parsed, is a one-line `ConfigError`."""
    if not str(name).strip():
        raise ConfigError(f"{what}= is empty: give a YAML file (a path or a name under "
                          f"{CONFIG_DIR})")
    path = resolve_config_file(name)
    try:
        loaded = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError, OSError, OmegaConfBaseException,
            ValueError, RecursionError) as e:
        raise ConfigError(f"{what}={_esc(name)}: not a readable YAML file ({_first_line(e)}); fix "
                          "the file or name another one") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{what}={_esc(name)}: the file must be a mapping of keys to values, not "
                          f"a {type(loaded).__name__.replace('Config', '').lower()}")
    return loaded


def _split(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    files, overrides = [], []
    for a in argv:
        if "=" not in a:
            raise ConfigError(f"argument {a!r} is not key=value (e.g. split=test)")
        key, value = a.split("=", 1)
        key = key.strip()
        if key == "config":
            files.append(value)
        elif not _KEY.match(key):
            raise ConfigError(f"argument {a!r}: {key!r} is not a key (keys are names joined by "
                              "dots, e.g. ray.namespace=x)")
        else:
            overrides.append((key, value))
    return files, overrides


def _flat_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """The dotted keys a YAML mapping sets (groups are descended, values are leaves)."""
    for k in node.keys() if isinstance(node, DictConfig) else []:
        full = f"{prefix}{k}"
        child = node._get_node(k)
        if isinstance(child, DictConfig) and not child._is_none():
            yield full
            yield from _flat_keys(child, full + ".")
        else:
            yield full


def _check_yaml_keys(schema: type, loaded: DictConfig, source: str) -> None:
    for key in _flat_keys(loaded):
        if not isinstance(key, str) or not _KEY.match(key):
            raise ConfigError(f"{source}: {key!r} is not a key")
        try:
            _field_at(schema, key)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


def _merge(cfg: Any, other: Any, schema: type, what: str, key: str | None = None) -> Any:
    """`OmegaConf.merge`; a failure names `what` was being merged (an override or a file)."""
    try:
        return OmegaConf.merge(cfg, other)
    except (OmegaConfBaseException, ValueError, TypeError, RecursionError) as e:
        raise ConfigError(_merge_error(e, schema, what, key)) from None


def _merge_error(e: Exception, schema: type, what: str, key: str | None) -> str:
    """`what: KEY must be ...` (for an override, `KEY=VALUE: must be ...`)."""
    key = key or getattr(e, "full_key", None) or ""
    found = _field_at(schema, key) if key else None
    if not found:
        return f"{what}: {_first_line(e)}"
    tp, meta = found
    subject = f"{what}:" if what.startswith(f"{key}=") else f"{what}: {key}"
    base = _unwrap(tp)[0]
    if _is_group(base):
        names = [f.name for f in dataclasses.fields(base)][:4]
        return (f"{subject} {key} is a group of settings; set its keys one by one, e.g. "
                f"{key}.{names[0]}=... (keys: {', '.join(names)}, ...)")
    help_ = _paren(meta)
    return f"{subject} must be {_wants(tp)}{help_}"


def _override(cfg: Any, schema: type, key: str, raw: str) -> Any:
    """Merge one `key=value` override into `cfg`."""
    found = _field_at(schema, key)
    what = f"{key}={_esc(raw)}" if len(raw) <= 60 else f"{key}={_esc(raw[:57])}..."
    if raw.strip() == "???":  # OmegaConf would keep the old value without a word
        raise ConfigError(f"{key}=???: give it a value (??? marks a required key in a YAML file)")
    if found and not raw.strip() and not _unwrap(found[0])[1]:
        tp, meta = found
        help_ = _paren(meta)
        raise ConfigError(f"{key}= has no value: give {_wants(tp)}{help_}")
    try:
        dot = OmegaConf.from_dotlist([f"{key}={raw}"])
    except (OmegaConfBaseException, ValueError, yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"{what}: cannot read the value ({_first_line(e)})") from None
    return _merge(cfg, dot, schema, what, key)


def load(schema: type[T], argv: Sequence[str] = (), *, defaults: str | None = None) -> T:
    """Build a `schema` config from an optional YAML file and `key=value` overrides.

    `config=NAME` in `argv` names a YAML file (a path, or a name under `configs/`);
    `defaults` is the file used when none is named. Every range is checked (`check`).
    Returns a DictConfig typed as `schema`."""
    files, overrides = _split(argv)
    cfg = OmegaConf.structured(schema)
    for f in ([defaults] if defaults and not files else []) + files:
        loaded = read_yaml(f)
        _check_yaml_keys(schema, loaded, f"config={_esc(f)}")
        cfg = _merge(cfg, loaded, schema, f"config={_esc(f)}")
    for key, raw in overrides:  # one at a time, so an error names the override at fault
        cfg = _override(cfg, schema, key, raw)
    try:
        OmegaConf.resolve(cfg)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except (OmegaConfBaseException, ValueError, TypeError, RecursionError) as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{key}: cannot resolve its value ({_first_line(e)})") from None
    if missing:
        raise ConfigError(f"{missing[0]}=??? : this key needs a value")
    check(cfg, schema)
    return cfg  # type: ignore[return-value]


# -- ranges ----------------------------------------------------------------------------------


def check(cfg: Any, schema: type | None = None, prefix: str = "") -> None:
    """Every declared range of `cfg` (a DictConfig or a dataclass instance), nested configs
    included; the first violation is a `ConfigError` like
    "concurrency=0: must be >= 1 (how many workflows run at once)"."""
    schema = schema or type(cfg)
    if isinstance(cfg, DictConfig):
        schema = OmegaConf.get_type(cfg) or schema
    if not _is_group(schema):
        return
    hints = _hints(schema)
    for f in dataclasses.fields(schema):
        value, tp = _get(cfg, f.name), hints[f.name]
        base, _ = _unwrap(tp)
        key = prefix + f.name
        if _is_group(base) and value is not None:
            check(value, base, key + ".")
        elif typing.get_origin(base) is list and value is not None:
            inner = typing.get_args(base)[0] if typing.get_args(base) else Any
            if _is_group(inner):
                for i, item in enumerate(value):
                    check(item, inner, f"{key}.{i}.")
        why = _violation(value, f.metadata)
        if why:
            help_ = _paren(f.metadata)
            raise ConfigError(f"{key}={_show(value)}: must {why}{help_}")


def _violation(value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    if meta.get("nonempty") and hasattr(value, "__len__") and len(value) == 0:
        return "not be empty"
    if "choices" in meta and value not in meta["choices"]:
        return "be one of " + ", ".join(map(str, meta["choices"]))
    if "item_min" in meta and isinstance(value, (list, tuple, ListConfig)):
        bad = [x for x in value if isinstance(x, bool) or not isinstance(x, (int, float))
               or not x >= meta["item_min"]]
        if bad:
            return f"hold numbers >= {meta['item_min']} only (found {_show(bad[0])})"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "be a finite number, not inf"
    if "min" in meta and not value >= meta["min"]:
        return f"be >= {meta['min']}"
    if "gt" in meta and not value > meta["gt"]:
        return f"be > {meta['gt']}"
    if "max" in meta and not value <= meta["max"]:
        return f"be <= {meta['max']}"
    if isinstance(value, float) and math.isnan(value):  # NaN fails no comparison above
        return "be a number, not nan"
    return None


def _paren(meta: typing.Mapping[str, Any]) -> str:
    """ (the option's help), its own brackets flattened so they do not nest."""
    text = re.sub(r"\s*\(([^()]*)\)", r", \1", str(meta.get("help") or ""))
    return f" ({text})" if text else ""


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    text = _esc("null" if value is None else str(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _esc(text: str) -> str:
    """A value as typed, with control characters escaped: an error stays one line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return _esc(text.splitlines()[0].strip()) if text else type(e).__name__


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict copy of a config (for reports and checkpoints)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)  # type: ignore[arg-type]
    return dict(cfg)


__all__ = ["RayConfig", "ConfigError", "Key", "load", "check", "describe", "opt", "read_yaml",
           "to_dict", "default_data_dir", "field", "dataclass", "storage_opt"]
