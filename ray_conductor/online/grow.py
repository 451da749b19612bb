"""The pool is about to gain workers: the served lite policy grown to know them
(`extend.prepare_for_pool`), published and promoted in its registry, so the app can be
redeployed with the bigger pool without retraining from scratch (`Retrainer.grow`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from ray_conductor.errors import ConfigError


def publish_grown(reg: Any, pv: Any, workers: Sequence[Any]) -> tuple[Any, list[str], str]:
    """(the promoted grown version, the new workers' names, the reason) for the served
    version `pv` of registry `reg` and the pool's coming `workers` (`WorkerInfo`s); the
    grown policy calls a new worker only once a round has trained on it."""
    from ray_conductor.lite.conductor import LiteConductor
    from ray_conductor.lite.table import worker_strength
    from ray_conductor.online.extend import prepare_for_pool

    if pv.kind != "lite":
        raise ConfigError(f"the served {pv.tag} is an LM conductor: it reads the pool from its "
                          "prompt, so a new worker needs no growing; redeploy the app with the "
                          "bigger pool")
    conductor = LiteConductor.load(pv.path)
    new = [w for w in workers if w.name not in conductor.workers]
    if not new:
        raise ConfigError(f"the served policy {pv.tag} already knows "
                          f"{[w.name for w in workers]}")
    names = [w.name for w in new]
    grown = prepare_for_pool(conductor, list(zip(names, worker_strength(new))))
    with tempfile.TemporaryDirectory() as tmp:
        out = reg.publish(grown.save(Path(tmp) / "policy"), kind="lite",
                          meta={"parent": pv.version, "grown": names})
    reason = f"the pool gains {names}"
    reg.promote(out.version, reason=reason)
    return out, names, reason
