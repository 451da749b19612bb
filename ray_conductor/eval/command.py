"""`ray-conductor eval`: baselines (and conductors) on a replay pool's split, as a printed table,
a JSON report and a cost-vs-accuracy plot."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_conductor.config import RayConfig, default_data_dir, to_dict
from ray_conductor.errors import ConfigError

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


def _select(queries: list, limit: int | None) -> list:
    queries = sorted(queries, key=lambda q: q.query_id)
    return queries[:limit] if limit else queries


def make_pool(cfg: Any, data):
    """The worker pool the evaluation runs on: in-process replay, or the Ray proxies."""
    if cfg.backend == "local":
        from ray_conductor.data.replay import ReplayPool

        return ReplayPool(data)
    if cfg.backend == "ray":
        from ray_conductor.runtime import init_ray
        from omegaconf import OmegaConf

        from ray_conductor.config import resolve_config_file
        from ray_conductor.workers.config import WorkerPoolConfig, as_pool_config, replay_workers
        from ray_conductor.workers.ray_pool import make_ray_pool

        init_ray(cfg.ray)
        if cfg.workers:  # live workers, answers judged by the pool's checker
            wcfg = as_pool_config(OmegaConf.load(resolve_config_file(cfg.workers)))
        else:
            wcfg = WorkerPoolConfig(workers=replay_workers(cfg.pool, data.worker_infos()),
                                    replay=cfg.pool, namespace=cfg.ray.namespace)
        return make_ray_pool(wcfg, priority="serve")
    raise ConfigError(f"backend={cfg.backend!r}: use local or ray")


def run_eval(cfg: EvalConfig, extra_policies: list | None = None) -> dict[str, Any]:
    from ray_conductor.data.pools import load_pool
    from ray_conductor.eval.evaluate import evaluate_policies
    from ray_conductor.eval.policies import make_policies
    from ray_conductor.eval.report import format_table, scatter_plot, write_json

    t0 = time.perf_counter()
    data = load_pool(cfg.pool, data_dir=cfg.data_dir)
    queries = _select(data.queries(cfg.split), cfg.limit)
    if not queries:
        raise ConfigError(f"split={cfg.split!r} of pool {cfg.pool!r} has no queries")
    pool = make_pool(cfg, data)
    workers = list(pool.workers())
    policies = make_policies(list(cfg.policies), data, workers, seed=cfg.seed, knn_k=cfg.knn_k)
    policies += list(extra_policies or [])
    reports = asyncio.run(evaluate_policies(policies, queries, pool, data.judge, workers,
                                            concurrency=cfg.concurrency, progress=cfg.progress))
    report = {
        "pool": cfg.pool,
        "split": cfg.split,
        "backend": cfg.backend,
        "n_queries": len(queries),
        "policies": {name: r.to_dict() for name, r in reports.items()},
        "price_sources": getattr(data, "report", None) and data.report.to_dict().get("price_sources"),
        "wall_s": round(time.perf_counter() - t0, 2),
        "config": to_dict(cfg),
    }
    out = write_json(report, cfg.out)
    plot = scatter_plot(report["policies"], cfg.plot or out.with_suffix(".png"),
                        title=f"{cfg.pool} ({cfg.split}, n={len(queries)})")
    print(format_table(report["policies"]))
    print(f"\nreport: {out}\nplot:   {plot}")
    return report


def load_report(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
