"""`ServeConfig`: the serving app as typed config (OmegaConf structured dataclasses), with
`configs/serve.yaml` and `key=value` overrides on top. The embedded default serves the demo
replay pool through the kNN router as model `conductor`, on 127.0.0.1:8000.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray_conductor.config import RayConfig, default_data_dir
from ray_conductor.graph import GraphConfig


@dataclass
class IngressConfig:
    """The HTTP ingress waits on worker APIs, not on its CPU: it takes many requests at once
    (Serve's default of 5 would queue them in front of an idle replica) and scales on how many
    are ongoing."""

    max_ongoing_requests: int = 256
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: int = 64
    num_cpus: float = 0.1


@dataclass
class KeyLimitsConfig:
    """Each API key's default limits (a keys file may set its own); null: none."""

    requests_per_minute: float | None = 600.0
    dollars_per_day: float | None = 25.0


@dataclass
class DemoConfig:
    """`make demo`: how many recorded test questions to send, and the evaluation's report."""

    questions: int = 5
    eval_out: str = "reports/demo_eval.json"


@dataclass
class ServeConfig:
    app_name: str = "conductor"
    host: str = "127.0.0.1"  # without API keys the server binds to 127.0.0.1 whatever this says
    port: int = 8000
    route_prefix: str = "/"
    pool: str | None = "demo"  # replay pool: the replay workers' answers, knn's train split
    workers: str | None = None  # a worker-pool YAML (live workers); default: replay workers
    policy: str | None = None  # shortcut for policies.conductor
    policies: dict[str, str] = field(default_factory=lambda: {"conductor": "knn"})
    conductor: dict[str, Any] = field(default_factory=dict)  # LM ConductorConfig overrides
    plan_temperature: float = 0.0
    plan_batch_size: int = 16
    plan_batch_wait_s: float = 0.005
    knn_k: int = 40
    api_keys: list[str] = field(default_factory=list)
    api_keys_file: str | None = None
    api_keys_env: str | None = "RAY_CONDUCTOR_API_KEYS"
    limits: KeyLimitsConfig = field(default_factory=KeyLimitsConfig)
    max_body_bytes: int = 2_000_000
    max_prompt_chars: int = 200_000
    call_timeout_s: float | None = None  # one worker call's deadline; null: the pool's
    log_dir: str = "reports/traffic"
    log_flush_s: float = 5.0
    log_buffer_rows: int = 2000
    orchestration_input_price_per_mtok: float = 0.0  # a self-hosted conductor costs nothing
    orchestration_output_price_per_mtok: float = 0.0
    data_dir: str = field(default_factory=default_data_dir)
    blocking: bool = True  # run_serve: keep serving until Ctrl-C
    ray: RayConfig = field(default_factory=RayConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


def as_serve_config(cfg: Any = None) -> ServeConfig:
    """A validated `ServeConfig` from a dataclass, a DictConfig, a plain dict or None."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ray_conductor.errors import ConfigError

    if isinstance(cfg, ServeConfig):
        return cfg
    try:
        given = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg or {})
        merged = OmegaConf.merge(OmegaConf.structured(ServeConfig), given)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"bad serve config at {key!r}: {str(e).strip().splitlines()[0]}") \
            from None


def served_policies(cfg: ServeConfig) -> dict[str, str]:
    """Served model name -> policy reference (`policy=` sets the `conductor` model's)."""
    out = dict(cfg.policies or {})
    if cfg.policy:
        out["conductor"] = cfg.policy
    return out


def to_plain(cfg: ServeConfig) -> dict[str, Any]:
    """The config as plain data (what a Serve deploy config carries), API keys left out."""
    from dataclasses import asdict

    d = asdict(cfg)
    d["api_keys"] = []
    return d
