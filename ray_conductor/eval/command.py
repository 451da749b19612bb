"""`ray-conductor eval`: baselines (and conductors) on a replay pool's split, as a printed table,
a JSON report and a cost-vs-accuracy plot.

Everything that can be wrong with the command is checked before any work starts (ranges at
load; then the report and plot paths, the pool, the split, the worker YAML and what each
policy needs), so a bad `out=` never costs a whole evaluation and a bad policy never starts
Ray."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

from ray_conductor.config import (
    RayConfig,
    check,
    default_data_dir,
    opt,
    storage_opt,
    to_dict,
)
from ray_conductor.data.splits import SPLITS
from ray_conductor.errors import ConfigError
from ray_conductor.graph import GraphConfig
from ray_conductor.workers.base import WorkerInfo

DEFAULT_POLICIES = ["singles", "cheapest", "random", "knn", "oracle"]
POLICY_FORMS = ("singles, single:NAME, cheapest, random, oracle, knn, lite:DIR (a policy or "
                "train-lite run dir; lite:default), scripted:FILE (a pinned workflow), "
                "conductor:PATH")
_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class EvalConfig:
    """Evaluate policies on a replay pool's split: a table, a JSON report and a plot."""

    pool: str = opt("demo", "demo | mmlu_pro:PATH[,PATH] | routerbench:CSV[,CSV] | "
                    "records:PATH[,PATH] | parquet:PATH", nonempty=True)
    split: str = opt("test", "which questions (by hashed query id)", choices=SPLITS)
    policies: list[str] = opt(DEFAULT_POLICIES, POLICY_FORMS + " (a model dir, run dir or "
                              "registry:DIR)", nonempty=True)
    conductor: dict[str, Any] = opt(factory=dict, help="settings over conductor:PATH policies' "
                                    "own (e.g. conductor.head=DIR conductor.programs=true)")
    storage: str | None = storage_opt()
    out: str = opt("reports/eval.json", "the JSON report; an earlier report there is replaced",
                   nonempty=True)
    plot: str | None = opt(None, "the cost-vs-accuracy plot (null: out with .png)")
    overwrite: bool = opt(False, "replace an existing out=/plot= file that is not an earlier "
                          "report or plot")
    backend: str = opt("local", "local: in-process replay pool; ray: the WorkerProxy actors",
                       choices=("local", "ray"))
    workers: str | None = opt(None, "backend=ray: a worker-pool YAML of live providers (null: "
                              "replay workers over the pool)")
    limit: int | None = opt(None, "only the first N questions of the split, by id (null: all)",
                            min=1)
    seed: int = opt(0, "seed of the random policy")
    knn_k: int = opt(40, "how many nearest training questions the knn router reads", min=1)
    concurrency: int = opt(64, "how many workflows run at once", min=1)
    data_dir: str = opt(factory=default_data_dir,
                        help="where bare pool names (mmlu_pro, routerbench) are found")
    progress: bool = opt(True, "progress bars on stderr")
    ray: RayConfig = opt(factory=RayConfig, help="how to reach or start Ray (backend=ray)")
    graph: GraphConfig = opt(factory=GraphConfig, help="the actors (backend=ray)")


def make_pool(cfg: Any, data: Any, priority: str = "serve", pool_cfg: Any = None) -> Any:
    """The worker pool a command runs on (`graph.worker_pool`): in-process replay, or the
    shared proxies (Ray started or joined first)."""
    from ray_conductor.graph import GraphSpec, worker_pool

    spec = None
    if cfg.backend == "ray":
        from ray_conductor.runtime import init_ray

        spec = GraphSpec.from_config(cfg.graph, cfg.ray.namespace)  # ranges, before Ray
        init_ray(cfg.ray)
    return worker_pool(cfg, data, priority, spec=spec, pool_cfg=pool_cfg)


# -- checks before any work ----------------------------------------------------------------


def _earlier_report(path: Path) -> bool:
    """An eval report this command wrote before: replacing it is what a re-run is for."""
    try:
        if not path.is_file() or path.stat().st_size > 64 * 2**20:
            return False
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("policies"), dict)


def _earlier_plot(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return path.is_file() and f.read(8) == _PNG
    except OSError:
        return False


def check_outputs(cfg: Any) -> tuple[Path, Path]:
    """(report, plot) paths, refused before any work when writing them would lose data or
    fail: an input of the pool or the worker YAML, a directory, an unwritable place, the
    same file twice, or an existing file that is neither an earlier report (plot) nor
    allowed by `overwrite=true`. Also checks the pool spec and that its files are readable."""
    from ray_conductor.data.commands import check_import
    from ray_conductor.eval.report import check_writable

    out = Path(cfg.out).expanduser()
    plot = Path(cfg.plot).expanduser() if cfg.plot else out.with_suffix(".png")
    if out.resolve() == plot.resolve():
        raise ConfigError(f"out={cfg.out}: the plot would be written over the report; give out= "
                          "a .json name or name the plot with plot=")
    for key, path, ours in (("out", out, _earlier_report), ("plot", plot, _earlier_plot)):
        if path.is_dir():
            raise ConfigError(f"{key}={path} is a directory: give a file path, e.g. "
                              f"{key}={path / ('eval' + ('.png' if key == 'plot' else '.json'))}")
        check_import(SimpleNamespace(pool=cfg.pool, data_dir=cfg.data_dir, out=str(path),
                                     overwrite=bool(cfg.overwrite) or ours(path)))
        check_writable(key, path)
    if getattr(cfg, "workers", None):
        from ray_conductor.config import resolve_config_file

        src = resolve_config_file(cfg.workers).resolve()
        if src in (out.resolve(), plot.resolve()):
            raise ConfigError(f"out={cfg.out} / plot: would write over the worker YAML {src}; "
                              "choose another out=")
    return out, plot


def check_policies(names: Sequence[str], data: Any, workers: Sequence[str],
                   conductor: dict[str, Any] | None = None) -> None:
    """Each policy name, and what the policy needs, before any is built: kNN fits on the
    pool's train split, `single:NAME` needs that worker, `conductor:PATH` a loadable model
    (and a readable program head, with `conductor.head`); `conductor` settings are known."""
    if conductor:
        from ray_conductor.policy.runner import check_overrides

        check_overrides(conductor)
    for name in names:
        kind, _, arg = str(name).partition(":")
        if name in ("singles", "cheapest", "random", "oracle"):
            continue
        if name == "knn":
            if not data.queries("train"):
                raise ConfigError(
                    f"policy knn fits on the pool's train split, and this pool has none (test: "
                    f"{len(data.queries('test'))} questions): drop knn from policies= or use a "
                    "pool with a train split")
        elif kind == "single" and arg:
            if arg not in workers:
                raise ConfigError(f"policy {name!r}: unknown worker {arg!r}; known: "
                                  f"{sorted(workers)}")
        elif kind == "conductor" and arg:
            from ray_conductor.policy.loading import check_model
            from ray_conductor.policy.runner import locate_conductor

            model, settings, _ = locate_conductor(arg)
            check_model(model, engine=settings.get("engine", "hf"))
        elif kind == "lite" and arg:
            from ray_conductor.lite import LiteConductor, default_policy_dir

            LiteConductor.load(default_policy_dir() if arg == "default" else arg, workers)
        elif kind == "scripted" and arg:
            from ray_conductor.policy.runner import check_script, scripted_conductor

            check_script(scripted_conductor(arg), [WorkerInfo(w) for w in workers])
        else:
            raise ConfigError(f"unknown policy {name!r}; use {POLICY_FORMS} (a model dir, run "
                              "dir or registry:DIR)")


# -- the command -----------------------------------------------------------------------------


def run_eval(cfg: EvalConfig, extra_policies: list | None = None) -> dict[str, Any]:
    from ray_conductor.data.pools import load_pool
    from ray_conductor.data.selection import select_queries
    from ray_conductor.eval.judge import judge_policies
    from ray_conductor.eval.policies import make_policies
    from ray_conductor.graph import worker_pool_config

    check(cfg, EvalConfig)
    if cfg.workers and cfg.backend != "ray":
        raise ConfigError(f"workers={cfg.workers} needs backend=ray (live providers are called "
                          "through the worker proxies): add backend=ray or drop workers=")
    out, plot = check_outputs(cfg)
    data = load_pool(cfg.pool, data_dir=cfg.data_dir)
    queries = select_queries(data, cfg.split, cfg.limit)
    pool_cfg = worker_pool_config(cfg, data) if cfg.backend == "ray" else None
    names = [w.name for w in pool_cfg.workers] if pool_cfg else list(data.models)
    check_policies(list(cfg.policies), data, names, dict(cfg.conductor))
    pool = make_pool(cfg, data, pool_cfg=pool_cfg)
    policies = make_policies(list(cfg.policies), data, list(pool.workers()), seed=cfg.seed,
                             knn_k=cfg.knn_k, conductor=dict(cfg.conductor))
    policies += list(extra_policies or [])
    meta = {"pool": cfg.pool, "split": cfg.split, "backend": cfg.backend,
            "price_sources": getattr(data, "report", None)
            and data.report.to_dict().get("price_sources"),
            "config": to_dict(cfg)}
    return judge_policies(policies, data, queries, pool, out=out, plot=plot,
                          title=f"{cfg.pool} ({cfg.split}, n={len(queries)})",
                          concurrency=cfg.concurrency, progress=cfg.progress, meta=meta)


def load_report(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
