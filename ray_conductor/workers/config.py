"""Typed config of the worker proxies: one `WorkerConfig` per worker, gathered in a
`WorkerPoolConfig` that serving, evaluation and training all build their proxies from.

`rpm` and `tpm` are always per minute, as providers state them. `window_s` is the length of the
sliding window over which the limiter enforces the same rate (`rpm * window_s / 60` requests
per window): the default 60 s matches the providers; a short window smooths bursts and keeps
tests fast.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ray_conductor.errors import ConfigError
from ray_conductor.workers.base import WorkerInfo


@dataclass
class WorkerConfig:
    """One worker: which litellm model answers, how fast we may call it, what to do when it
    fails, and what the conductor's prompt says about it."""

    name: str = "???"
    model: str = "???"  # litellm model string: openai/gpt-4o-mini, hosted_vllm/..., replay/...
    api_base: str | None = None  # for replay/ models: the pool spec
    api_key_env: str | None = None  # the *name* of the env var holding the key, never the key
    rpm: float | None = None
    tpm: float | None = None
    max_concurrency: int = 16
    timeout_s: float = 60.0  # per attempt
    retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    fallbacks: list[str] = field(default_factory=list)
    input_price_per_mtok: float | None = None  # overrides litellm's cost map when set
    output_price_per_mtok: float | None = None
    description: str = ""
    cache: bool = False  # cache temperature-0 answers
    cache_ttl_s: float = 3600.0
    cache_size: int = 1024
    circuit_failures: int = 5  # consecutive failed attempts that open the breaker
    circuit_cooldown_s: float = 30.0
    window_s: float = 60.0


@dataclass
class WorkerPoolConfig:
    """All workers, the default replay pool spec for `replay/` workers without an `api_base`,
    and the default deadline of a call. Where their proxies run (namespace, processes,
    restarts) is the actor graph's business (`ray_conductor.graph`)."""

    workers: list[WorkerConfig] = field(default_factory=list)
    replay: str | None = None
    queue_timeout_s: float = 300.0


def _hash(d: Any) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(cfg: WorkerConfig, replay: str | None = None,
                queue_timeout_s: float | None = None) -> str:
    """A short hash of everything a proxy was built from for this worker, so a running proxy
    is reused only by callers with the same config (its answers and its prices: the
    `answer_fingerprint` and the `price_fingerprint` together, and how it is called)."""
    return _hash({"worker": asdict(cfg), "replay": replay, "queue_timeout_s": queue_timeout_s})


# What a worker's config says about *how* it is called or *what it costs*, not what it
# answers: a change to these leaves every recorded answer valid. Every other field (the
# provider model, its endpoint and key, fallbacks, and any field added later) counts as
# changing answers, so a new field errs on the side of asking again.
PRICE_FIELDS = ("input_price_per_mtok", "output_price_per_mtok")
CALL_FIELDS = ("rpm", "tpm", "max_concurrency", "timeout_s", "retries", "backoff_base_s",
               "backoff_max_s", "description", "cache", "cache_ttl_s", "cache_size",
               "circuit_failures", "circuit_cooldown_s", "window_s")


def answer_fingerprint(cfg: WorkerConfig, replay: str | None = None,
                       recording: str | None = None) -> str:
    """What changes this worker's answers: provider model, parameters, endpoint, pool (the
    replay pool a `replay/` worker without an `api_base` answers from). A price change keeps
    it: the online loop re-prices cached answers from their tokens and asks nothing. For a
    `replay/` worker, `recording` (a digest of its recorded answers, `ReplayData.
    answer_digests`) stands for the pool: a pool file rewritten with only another worker's
    answers changed (or a worker added) keeps this worker's fingerprint."""
    d = {k: v for k, v in asdict(cfg).items() if k not in PRICE_FIELDS + CALL_FIELDS}
    if recording is not None and cfg.model.startswith("replay/"):
        d["api_base"] = None
        return _hash({"worker": d, "recording": recording})
    return _hash({"worker": d, "replay": None if cfg.api_base else replay})


def price_fingerprint(input_price_per_mtok: float | None,
                      output_price_per_mtok: float | None) -> str:
    """What changes only this worker's cost: its $/1M input and output tokens (a config's
    overrides, or the cost map's list price as a `WorkerInfo` quotes it)."""
    return _hash({"in": input_price_per_mtok, "out": output_price_per_mtok})


def replay_workers(pool_spec: str | None, models: Iterable[str | WorkerInfo], **overrides: Any
                   ) -> list[WorkerConfig]:
    """`replay/<model>` workers answering from the recorded pool `pool_spec` (None: the
    pool config's `replay`); `overrides` set other `WorkerConfig` fields on all of them.
    Given `WorkerInfo`s (a replay pool's `worker_infos()`), their prices become the workers'
    price overrides, so the proxies quote what the recorded answers cost."""
    out = []
    for m in models:
        kw: dict[str, Any] = {}
        if isinstance(m, WorkerInfo):
            kw = {"input_price_per_mtok": m.input_price_per_mtok,
                  "output_price_per_mtok": m.output_price_per_mtok}
            m = m.name
        out.append(WorkerConfig(**{**kw, **overrides,
                                   "name": m, "model": f"replay/{m}", "api_base": pool_spec}))
    return out


def as_pool_config(cfg: Any) -> WorkerPoolConfig:
    """A validated `WorkerPoolConfig` from a dataclass, a DictConfig or a plain dict."""
    if isinstance(cfg, WorkerPoolConfig):
        out = cfg
    else:
        try:
            merged = OmegaConf.merge(OmegaConf.structured(WorkerPoolConfig),
                                     cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg))
            out = OmegaConf.to_object(merged)  # type: ignore[assignment]
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"bad worker pool config at {key!r}: {first}") from None
    validate(out.workers)
    return out


def validate(workers: Sequence[WorkerConfig]) -> None:
    """Raise `ConfigError` for a config that would fail later, naming the worker and key."""
    names = [w.name for w in workers]
    for w in workers:
        where = f"worker {w.name!r}"
        if w.name in ("???", "") or w.model in ("???", ""):
            raise ConfigError(f"{where}: every worker needs a name and a litellm model string")
        if any(c in w.name for c in "+/") or w.name != w.name.strip():
            raise ConfigError(f"{where}: a worker name may not contain '+' or '/' or start or "
                              "end with spaces (proxy processes are named after their workers)")
        if names.count(w.name) > 1:
            raise ConfigError(f"{where} is defined twice; worker names must be unique")
        for fb in w.fallbacks:
            if fb not in names or fb == w.name:
                raise ConfigError(f"{where}: fallback {fb!r} is not another configured worker")
        if w.rpm is not None and w.rpm * w.window_s / 60.0 < 1.0:
            raise ConfigError(f"{where}: rpm={w.rpm} allows less than one request per "
                              f"window_s={w.window_s}; raise rpm or window_s")
        if w.max_concurrency < 1 or w.retries < 0 or w.window_s <= 0 or w.timeout_s <= 0:
            raise ConfigError(f"{where}: max_concurrency >= 1, retries >= 0, window_s > 0 and "
                              "timeout_s > 0 are required")
