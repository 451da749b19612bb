"""`ray-conductor eval`: baselines (and conductors) on a replay pool's split, as a printed table,
a JSON report and a cost-vs-accuracy plot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_conductor.config import RayConfig, default_data_dir, to_dict
from ray_conductor.errors import ConfigError
from ray_conductor.graph import GraphConfig

DEFAULT_POLICIES = ["singles", "cheapest", "random", "knn", "oracle"]


@dataclass
class EvalConfig:
    pool: str = "demo"  # FORMAT:PATH[,PATH...] (mmlu_pro, routerbench, parquet) or "demo"
    split: str = "test"  # train | test | all
    policies: list[str] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    out: str = "reports/eval.json"
    plot: str | None = None  # default: `out` with .png
    backend: str = "local"  # local: in-process replay pool; ray: WorkerProxy actors
    workers: str | None = None  # backend=ray: a worker-pool YAML (live providers); default replay
    limit: int | None = None  # evaluate only the first N queries of the split (by id order)
    seed: int = 0
    knn_k: int = 40
    concurrency: int = 64
    data_dir: str = field(default_factory=default_data_dir)
    progress: bool = True
    ray: RayConfig = field(default_factory=RayConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)


def worker_pool_config(cfg: Any, data: Any) -> Any:
    """The workers a command's proxies run: a worker YAML (live providers), or replay workers
    over the command's pool with the recorded prices."""
    from omegaconf import OmegaConf

    from ray_conductor.config import resolve_config_file
    from ray_conductor.workers.config import WorkerPoolConfig, as_pool_config, replay_workers

    if getattr(cfg, "workers", None):
        return as_pool_config(OmegaConf.load(resolve_config_file(cfg.workers)))
    return WorkerPoolConfig(workers=replay_workers(cfg.pool, data.worker_infos()),
                            replay=cfg.pool)


def make_pool(cfg: Any, data: Any, priority: str = "serve") -> Any:
    """The worker pool a command runs on: in-process replay, or the shared proxies."""
    if cfg.backend == "local":
        from ray_conductor.data.replay import ReplayPool

        return ReplayPool(data)
    if cfg.backend == "ray":
        from ray_conductor.graph import GraphSpec, make_ray_pool
        from ray_conductor.runtime import init_ray

        init_ray(cfg.ray)
        spec = GraphSpec.from_config(cfg.graph, cfg.ray.namespace)
        return make_ray_pool(spec, worker_pool_config(cfg, data), priority=priority)
    raise ConfigError(f"backend={cfg.backend!r}: use local or ray")


def run_eval(cfg: EvalConfig, extra_policies: list | None = None) -> dict[str, Any]:
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.eval.judge import judge_policies
    from ray_conductor.eval.policies import make_policies

    data = load_pool(cfg.pool, data_dir=cfg.data_dir)
    queries = select_queries(data, cfg.split, cfg.limit)
    pool = make_pool(cfg, data)
    policies = make_policies(list(cfg.policies), data, list(pool.workers()), seed=cfg.seed,
                             knn_k=cfg.knn_k)
    policies += list(extra_policies or [])
    meta = {"pool": cfg.pool, "split": cfg.split, "backend": cfg.backend,
            "price_sources": getattr(data, "report", None)
            and data.report.to_dict().get("price_sources"),
            "config": to_dict(cfg)}
    return judge_policies(policies, data, queries, pool, out=cfg.out, plot=cfg.plot,
                          title=f"{cfg.pool} ({cfg.split}, n={len(queries)})",
                          concurrency=cfg.concurrency, progress=cfg.progress, meta=meta)


def load_report(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
