"""Every decision of the online loop, with its figures: appended to a JSONL file under the
state directory (`DecisionLog`) and counted in Prometheus through Ray's metrics
(`OnlineMetrics`: exported by the metrics agent of the Ray node the loop runs on).

Kinds: `adopted` (a served `lite:DIR` was published as the registry's first version),
`extended` (the pool is about to gain workers: a version that knows them was promoted),
`trained`, `evaluated`, `promoted`, `rejected`, `skipped` (a trigger fired but there was too
little to train or evaluate on), `kept` (a promotion survived its watch window),
`rolled_back`, `failed` (a round that raised; the loop goes on), `quarantined` (unreadable
traffic log parts moved aside, or posted rewards out of range ignored; the round goes on).

Accounting: every decision carries what learning cost since the decision before it
(`extra_calls`, `extra_dollars`: the loop's own worker calls) beside what the learners'
traffic cost (`traffic_dollars`, summed from the traffic log), and the running
`learning_cost_per_served_dollar`; the same increments go to Prometheus
(`conductor_online_extra_calls`, `conductor_online_extra_dollars`,
`conductor_online_traffic_dollars`) when the decision is written, so the log's sums and the
counters agree by construction.
"""

from __future__ import annotations

import json
import math
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

KV_PREFIX = "conductor_online_cost/"  # + app/model: the running accounting, for /healthz
KINDS = ("adopted", "extended", "trained", "evaluated", "promoted", "rejected", "skipped", "kept",
         "rolled_back", "failed", "quarantined", "drifted")


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
        self.pending = Ledger()  # spending not yet written into a decision
        self.total = Ledger()  # everything written (the running totals)

    def spend(self, calls: int = 0, dollars: float = 0.0, traffic_dollars: float = 0.0
              ) -> None:
        """Note what learning (or the traffic) cost; the next decision carries it."""
        self.pending.add(Ledger(int(calls), float(dollars), float(traffic_dollars)))

    def append(self, kind: str, model: str, **fields: Any) -> dict[str, Any]:
        if kind not in KINDS:
            raise ValueError(f"unknown decision kind {kind!r}; known: {KINDS}")
        now, self.pending = self.pending, Ledger()
        self.total.add(now)
        row = _plain({"time": time.time(), "kind": kind, "model": model, **fields,
                      **now.fields(),
                      "learning_cost_per_served_dollar": self.total.ratio()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        if self.metrics is not None:
            self.metrics.decision(kind, model)
            self.metrics.spent(model, now, self.total.ratio())
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


class Ledger:
    """Calls and dollars of learning, and dollars of traffic."""

    def __init__(self, calls: int = 0, dollars: float = 0.0, traffic: float = 0.0):
        self.calls, self.dollars, self.traffic = calls, dollars, traffic

    def add(self, other: "Ledger") -> None:
        self.calls += other.calls
        self.dollars += other.dollars
        self.traffic += other.traffic

    def ratio(self) -> float | None:
        """Learning dollars per served dollar (None before any traffic was paid for)."""
        return self.dollars / self.traffic if self.traffic > 0 else None

    def fields(self) -> dict[str, Any]:
        return {"extra_calls": self.calls, "extra_dollars": self.dollars,
                "traffic_dollars": self.traffic}


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
        "extra_calls": metrics.Counter("conductor_online_extra_calls",
                                       "worker calls the online loop made to learn",
                                       ("model",)),
        "extra_dollars": metrics.Counter("conductor_online_extra_dollars",
                                         "dollars the online loop's own worker calls cost",
                                         ("model",)),
        "traffic_dollars": metrics.Counter("conductor_online_traffic_dollars",
                                           "dollars the learned models' served traffic cost",
                                           ("model",)),
        "ratio": metrics.Gauge("conductor_online_learning_cost_per_served_dollar",
                               "the online loop's learning dollars per served dollar",
                               ("model",)),
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

    def live_rewards(self, model: str, rows: Any, window: int) -> None:
        """Per served version of `model`, the mean reward of its last `window` rewarded rows
        (`LoggedRow`s, oldest first)."""
        by: dict[str, list[float]] = {}
        for r in rows:
            if r.model == model:
                by.setdefault(r.version, []).append(r.reward)
        for version, rewards in by.items():
            self.live_reward(model, version, float(np.mean(rewards[-window:])))

    def eval_reward(self, model: str, policy: str, value: float) -> None:
        if (s := self._on()) is not None and math.isfinite(value):
            s["eval"].set(value, tags={"model": model, "policy": policy})

    def spent(self, model: str, ledger: Ledger, ratio: float | None) -> None:
        if (s := self._on()) is None:
            return
        tags = {"model": model}
        if ledger.calls:
            s["extra_calls"].inc(ledger.calls, tags=tags)
        if ledger.dollars > 0:
            s["extra_dollars"].inc(ledger.dollars, tags=tags)
        if ledger.traffic > 0:
            s["traffic_dollars"].inc(ledger.traffic, tags=tags)
        if ratio is not None and math.isfinite(ratio):
            s["ratio"].set(ratio, tags=tags)

    def publish(self, app: str, model: str, total: Ledger, pending: Ledger) -> None:
        """The running learning cost where the app's `/healthz` reads it (Ray's internal
        KV, key `KV_PREFIX + app/model`); nothing without Ray."""
        if self._on() is None:
            return
        from ray.experimental.internal_kv import _internal_kv_put

        t = Ledger(total.calls, total.dollars, total.traffic)
        t.add(pending)
        body = {"model": model, "extra_calls": t.calls, "extra_dollars": t.dollars,
                "traffic_dollars": t.traffic,
                "learning_cost_per_served_dollar": t.ratio(), "time": time.time()}
        _internal_kv_put(f"{KV_PREFIX}{app}/{model}", json.dumps(_plain(body)),
                         overwrite=True)

    def served_version(self, model: str, version: int) -> None:
        if (s := self._on()) is not None:
            s["version"].set(float(version), tags={"model": model})
