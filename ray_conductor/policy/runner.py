"""Running the LM conductor end to end, the same way everywhere: plan a batch of questions,
then execute each workflow over the pool (with the conductor itself as a worker while
recursion is on). Rollout actors (evaluation in training), `ray-conductor eval
policies=[conductor:PATH]` and the checkpoint benchmark all call `run_conductor`.

Also: where a conductor comes from (`load_conductor`): a model name or directory, a policy
registry (`registry:DIR[@N]`), or a training run directory (its registry's promoted version,
with the conductor settings the run trained with); and a pinned workflow as a conductor
(`scripted_conductor`: a plan script, judged by the same machinery as learned policies).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from ray_conductor.errors import ConfigError, WorkflowError
from ray_conductor.policy.conductor import Conductor, ConductorConfig, PlanResult
from ray_conductor.workers.base import WorkerInfo, WorkerPool
from ray_conductor.workflow import Trace, execute, parse

SCRIPTED_MAX_STEPS = 10  # a pinned pipeline may be longer than a learned plan
SETTINGS = frozenset(f.name for f in fields(ConductorConfig))  # what a policy may set


def with_recursion(pool: WorkerPool, conductor: Conductor) -> WorkerPool:
    """The pool the conductor's plans run on: itself as a worker while recursion is on."""
    if conductor.cfg.recursion_depth <= 0:
        return pool
    from ray_conductor.policy.recursion import RecursivePool

    if isinstance(pool, RecursivePool):
        return pool
    return RecursivePool(pool, conductor)


async def run_conductor(conductor: Conductor, questions: Sequence[Any], pool: WorkerPool, *,
                        temperature: float = 0.0, params: dict[str, Any] | None = None,
                        concurrency: int = 64) -> list[tuple[PlanResult, Trace | None]]:
    """(plan, trace) per question (`query_id`, `query` attributes): one batched planning
    call, then the workflows concurrently. Plans keep their `Workflow` and errors, not their
    token ids; the trace is None when there was nothing to run."""
    pool = with_recursion(pool, conductor)
    plans = await asyncio.to_thread(
        conductor.plan_many, [q.query for q in questions], list(pool.workers()),
        temperature=temperature,
        formats=[getattr(q, "answer_format", None) for q in questions])
    sem = asyncio.Semaphore(concurrency)

    async def one(q: Any, p: PlanResult) -> tuple[PlanResult, Trace | None]:
        p.samples, p.prompt = [], []
        if not len(p.workflow):
            return p, None
        async with sem:
            return p, await execute(p.workflow, q.query, pool, query_id=q.query_id,
                                    params=params,
                                    answer_format=getattr(q, "answer_format", None))

    return list(await asyncio.gather(*(one(q, p) for q, p in zip(questions, plans))))


def settings_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The `ConductorConfig` fields a policy's meta (`config.conductor` or `conductor`) sets."""
    cfg = (meta.get("config") or {}).get("conductor") or meta.get("conductor") or {}
    return {k: v for k, v in cfg.items() if k in SETTINGS}


def locate_conductor(ref: str) -> tuple[str, dict[str, Any], str]:
    """(model path, the conductor settings it was trained with, a version tag) for a model
    name or directory, `registry:DIR[@N]`, or a training run directory."""
    from ray_conductor.policy.registry import SCHEME, resolve_policy

    path = Path(ref)
    if not ref.startswith(SCHEME) and (path / "registry").is_dir():
        ref = f"{SCHEME}{path / 'registry'}"
    if ref.startswith(SCHEME):
        model, pv = resolve_policy(ref)
        if pv is not None and pv.kind != "lm":
            raise ConfigError(f"{ref!r} is a {pv.kind} policy, not an LM conductor")
        return model, settings_from_meta(pv.meta if pv else {}), pv.tag if pv else "?"
    state = path / "trainer_state.json"
    if state.is_file() and (path / "model").is_dir():  # a checkpoint directory
        return str(path / "model"), settings_from_meta(json.loads(state.read_text())), path.name
    if path.exists() and not (path / "config.json").is_file():
        raise ConfigError(f"{ref!r} is neither a model directory (config.json), a checkpoint "
                          "(model/ + trainer_state.json), a run directory (registry/) nor "
                          "registry:DIR")
    return ref, {}, path.name or ref


def check_overrides(overrides: dict[str, Any], where: str = "conductor") -> dict[str, Any]:
    """`overrides` as `ConductorConfig` fields, checked before anything loads: an unknown key,
    or a program head (`head`) that cannot be read, is a one-line error."""
    bad = sorted(set(overrides) - SETTINGS)
    if bad:
        raise ConfigError(f"{where}.{bad[0]}: not a conductor setting; known: "
                          f"{', '.join(sorted(SETTINGS))}")
    if overrides.get("head"):
        from ray_conductor.policy.program_head import ProgramHead

        ProgramHead.load(overrides["head"])
    return dict(overrides)


def load_conductor(ref: str, **overrides: Any) -> tuple[Conductor, str]:
    """A ready `Conductor` (engine loaded) and its version tag; `overrides` set
    `ConductorConfig` fields over the trained settings."""
    from ray_conductor.policy.conductor import build_engine

    model, settings, tag = locate_conductor(ref)
    cfg = ConductorConfig(**{**settings, **overrides, "model": model})
    conductor = Conductor(build_engine(cfg), cfg)
    if conductor.head is not None:  # another head is another policy (traffic logs, registry)
        tag = f"{tag}+head-{conductor.head.digest()}"
    return conductor, tag


def scripted_conductor(path: str, **overrides: Any) -> Conductor:
    """A conductor that writes the fixed plans of a script (`policy.scripted_engine`): a
    team's pinned workflow (a vote, a cascade). It is offered the vote worker and never calls
    itself, unless `overrides` (`ConductorConfig` fields) say otherwise."""
    from ray_conductor.policy.conductor import build_engine

    if not Path(path).is_file():
        raise ConfigError(f"scripted policy {path!r}: no such file (a plan script: one plan, "
                          "or JSON, see policy/scripted_engine.py)")
    cfg = ConductorConfig(**{"programs": True, "recursion_depth": 0, "max_resamples": 0,
                             "max_steps": SCRIPTED_MAX_STEPS, **overrides,
                             "engine": "scripted", "model": str(path)})
    return Conductor(build_engine(cfg), cfg)


def check_script(conductor: Conductor, workers: Sequence[WorkerInfo]) -> None:
    """Every plan of a scripted conductor parses over `workers`, else a `ConfigError` naming
    the plan: a pinned workflow with a typo must not quietly become the fallback plan."""
    names = [w.name for w in conductor.offered(workers)]
    plans = conductor.engine.plans()  # type: ignore[attr-defined]
    for i, text in enumerate(plans, 1):
        try:
            parse(text, names, max_steps=conductor.cfg.max_steps, allow_empty=i < len(plans))
        except WorkflowError as e:
            raise ConfigError(f"scripted policy {conductor.cfg.model}: plan {i} of {len(plans)}"
                              f" does not parse over this pool's workers {names}: {e}") from None
