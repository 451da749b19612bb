"""Every decision of the online loop, with its figures: appended to a JSONL file under the
state directory (`DecisionLog`) and counted in Prometheus through Ray's metrics
(`OnlineMetrics`: exported by the metrics agent of the Ray node the loop runs on).

Kinds: `adopted` (a served `lite:DIR` was published as the registry's first version),
`extended` (the pool is about to gain workers: a version that knows them was promoted),
`trained`, `evaluated`, `promoted`, `rejected`, `skipped` (a trigger fired but there was too
little to train or evaluate on), `kept` (a promotion survived its watch window),
`rolled_back`, `failed` (a round that raised; the loop goes on), `quarantined` (unreadable
traffic log parts moved aside, or posted rewards out of range ignored; the round goes on).
"""

from __future__ import annotations

import json
import math
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

KINDS = ("adopted", "extended", "trained", "evaluated", "promoted", "rejected", "skipped", "kept",
         "rolled_back", "failed", "quarantined")


def _plain(x: Any) -> Any:
    """JSON-safe figures: numpy scalars as numbers, non-finite floats as null."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class DecisionLog:
    """Append-only JSONL; one line per decision, written whole (one `write` of one line)."""

    def __init__(self, path: str | os.PathLike, metrics: "OnlineMetrics | None" = None):
        self.path = Path(path)
        self.metrics = metrics

    def append(self, kind: str, model: str, **fields: Any) -> dict[str, Any]:
        if kind not in KINDS:
            raise ValueError(f"unknown decision kind {kind!r}; known: {KINDS}")
        row = _plain({"time": time.time(), "kind": kind, "model": model, **fields})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        if self.metrics is not None:
            self.metrics.decision(kind, model)
        return row

    def read(self) -> list[dict[str, Any]]:
        """Every decision; a damaged line (a crash mid-write) is skipped."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                out.append(row)
        return out


@lru_cache(maxsize=1)
def _series() -> dict[str, Any]:
    """Created once per process (Ray refuses two series of one name)."""
    from ray.util import metrics

    return {
        "decisions": metrics.Counter("conductor_online_decisions",
                                     "online retraining decisions, by kind",
                                     ("model", "kind")),
        "live": metrics.Gauge("conductor_online_live_reward",
                              "mean live reward of the served version's recent rewarded rows",
                              ("model", "version")),
        "eval": metrics.Gauge("conductor_online_eval_reward",
                              "mean reward on the held-back slice at the last evaluation",
                              ("model", "policy")),
        "version": metrics.Gauge("conductor_online_served_version",
                                 "registry version the online loop last served", ("model",)),
    }


class OnlineMetrics:
    """The loop's Prometheus series; a no-op where Ray is not initialised (pure tests)."""

    def _on(self) -> dict[str, Any] | None:
        import sys

        if "ray" not in sys.modules:
            return None
        import ray

        return _series() if ray.is_initialized() else None

    def decision(self, kind: str, model: str) -> None:
        if (s := self._on()) is not None:
            s["decisions"].inc(1, tags={"model": model, "kind": kind})

    def live_reward(self, model: str, version: str, value: float) -> None:
        if (s := self._on()) is not None and math.isfinite(value):
            s["live"].set(value, tags={"model": model, "version": version})

    def eval_reward(self, model: str, policy: str, value: float) -> None:
        if (s := self._on()) is not None and math.isfinite(value):
            s["eval"].set(value, tags={"model": model, "policy": policy})

    def served_version(self, model: str, version: int) -> None:
        if (s := self._on()) is not None:
            s["version"].set(float(version), tags={"model": model})
