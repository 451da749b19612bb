"""`ServeConfig`: the serving app as typed config (OmegaConf structured dataclasses), with
`configs/serve.yaml` and `key=value` overrides on top. The embedded default serves the demo
replay pool through the kNN router as model `conductor`, on 127.0.0.1:8000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ray_conductor.config import RayConfig, default_data_dir, opt, storage_opt
from ray_conductor.graph import GraphConfig, IngressConfig


DEFAULT_POLICIES = {"conductor": "lite:default", "conductor-lite": "lite:default"}


@dataclass
class KeyLimitsConfig:
    """Each API key's default limits (a keys file may set its own); null: none. A budget is
    held by reserving each request's worst case before it runs (its calls at their prompt
    and `output_tokens_cap` output tokens, when the request sets no max) and settling the
    real cost after; the state survives the limits actor's restart (`state_file`)."""

    requests_per_minute: float | None = opt(600.0, "requests per minute per key", gt=0)
    dollars_per_day: float | None = opt(25.0, "dollars per day per key", gt=0)
    output_tokens_cap: int = opt(4096, "a call's output tokens when a budgeted request "
                                       "sets no max_tokens (its worst case)", min=1)
    state_file: str | None = opt(None, "where the budgets are saved (null: "
                                       "<log_dir>/key_limits.json)")


@dataclass
class DemoConfig:
    """`make demo`: how many recorded test questions to send, and the evaluation's report."""

    questions: int = opt(5, "recorded test questions the demo asks", min=1)
    eval_out: str = opt("reports/demo_eval.json", "the demo evaluation's JSON report")


@dataclass
class ServeConfig:
    app_name: str = opt("conductor", "the Serve application's name")
    host: str = opt("127.0.0.1", "address to bind; without API keys always 127.0.0.1")
    port: int = opt(8000, "HTTP port", min=1, max=65535)
    route_prefix: str = opt("/", "URL prefix of the app")
    pool: str | None = opt("demo", "replay pool: the replay workers' answers, knn's train split")
    workers: str | None = opt(None, "a worker-pool YAML (live workers); default: replay workers")
    policy: str | None = opt(None, "shortcut for policies.conductor (knn, lite:DIR, registry:DIR,"
                                   " a conductor model or run dir)")
    policies: dict[str, str] = opt(
        factory=lambda: dict(DEFAULT_POLICIES),
        help="served model name -> policy reference (lite:default: the shipped demo policy)")
    seed: dict[str, str] = opt(
        factory=dict, help="served model name -> a policy published and promoted into the "
                           "registry that model serves (registry:DIR) while it holds no "
                           "version; the model then follows the registry: its promoted "
                           "version is served, so promotions survive a redeploy")
    conductor: dict[str, Any] = opt(factory=dict, help="LM ConductorConfig overrides")
    plan_temperature: float = opt(0.0, "sampling temperature of planning (0: greedy)", min=0)
    plan_batch_size: int = opt(16, "planning requests batched into one engine call", min=1)
    plan_batch_wait_s: float = opt(0.005, "how long a planning batch waits to fill", min=0)
    knn_k: int = opt(40, "neighbours of the kNN router", min=1)
    api_keys: list[str] = opt(factory=list, help="bearer API keys clients must send")
    api_keys_file: str | None = opt(None, "file of API keys (one a line, or YAML entries)")
    api_keys_env: str | None = opt("RAY_CONDUCTOR_API_KEYS",
                                   "environment variable holding API keys (comma-separated)")
    limits: KeyLimitsConfig = opt(factory=KeyLimitsConfig, help="per-key limits, all replicas")
    max_body_bytes: int = opt(2_000_000, "largest request body (413 above)", min=1)
    body_timeout_s: float = opt(15.0, "time a request body may take to arrive (408 after)",
                                gt=0)
    feedback_reward_range: list[float] = opt(
        factory=lambda: [-1.0, 1.0], help="[min, max] of a /v1/feedback reward (400 outside)")
    max_prompt_chars: int = opt(200_000, "longest prompt (413 above)", min=1)
    call_timeout_s: float | None = opt(None, "one worker call's deadline; null: the pool's",
                                       gt=0)
    storage: str | None = storage_opt()
    log_dir: str = opt("traffic/{app_name}", "traffic log (Parquet, partitioned by date)")
    log_flush_s: float = opt(5.0, "seconds between traffic-log flushes", gt=0)
    log_buffer_rows: int = opt(2000, "rows the traffic writer buffers at most", min=1)
    orchestration_input_price_per_mtok: float = opt(
        0.0, "$ per 1M conductor input tokens (self-hosted: 0)", min=0)
    orchestration_output_price_per_mtok: float = opt(
        0.0, "$ per 1M conductor output tokens", min=0)
    data_dir: str = opt(factory=default_data_dir, help="where bare pool names are looked up")
    blocking: bool = opt(True, "serve until Ctrl-C (false: return the running app)")
    ray: RayConfig = opt(factory=RayConfig, help="how to reach or start Ray")
    graph: GraphConfig = opt(factory=GraphConfig, help="the actors (one declaration)")
    ingress: IngressConfig = opt(factory=IngressConfig, help="the HTTP ingress deployment")
    demo: DemoConfig = opt(factory=DemoConfig, help="`ray-conductor demo` settings")


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
        out: ServeConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"bad serve config at {key!r}: {str(e).strip().splitlines()[0]}") \
            from None
    rr = out.feedback_reward_range
    if len(rr) != 2 or not all(math.isfinite(x) for x in rr) or rr[0] >= rr[1]:
        raise ConfigError(f"feedback_reward_range={list(rr)}: give [min, max] with min < max, "
                          "e.g. [-1, 1]")
    return out


def limits_state_path(cfg: ServeConfig) -> str:
    """Where the key limits actor saves its budgets."""
    import os

    return cfg.limits.state_file or os.path.join(cfg.log_dir, "key_limits.json")


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
