"""Drift: a worker whose answers changed with no config change to show it (a provider serving
another model under the same name), found from what serving already paid for. Pure: the
loop (`Retrainer._drift`) hands in the round's new rows, their judged served cells and the
serving policy's estimates for those questions, and acts on what this returns.

Per worker, over the rows where it was the plan's *first* call: the sum of its served
outcomes against the sum of the estimated probabilities, in standard errors,
z = (sum y - sum p) / sqrt(sum p (1 - p)). The estimates read each question, so a new
question mix alone does not move z. Only a first call counts: it was chosen from the
question alone, as the estimate is; a later call was often made because the first answers
disagreed, on harder questions than its estimate assumes (a cascade's third worker would
look degraded on every busy round).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def first_call_z(rows: Sequence[Any], served: Mapping[str, Mapping[str, Any]],
                 p: np.ndarray, n: np.ndarray, names: Sequence[str], min_cells: int
                 ) -> dict[str, dict[str, float]]:
    """worker -> {z, cells, right, estimated} for every worker with at least `min_cells`
    first-call served cells that have an estimate behind them (`n` > 0). `rows`: `LoggedRow`s
    (their `served` cells in trace order); `served`: row key -> worker -> judged answer (a
    `correct` attribute); `p`, `n`: per row and worker (`names`), the estimate and the
    observed neighbours behind it."""
    p, n = np.asarray(p, float), np.asarray(n, float)
    out: dict[str, dict[str, float]] = {}
    for j, w in enumerate(names):
        idx = [i for i, row in enumerate(rows) if row.served and row.served[0].worker == w
               and w in served.get(row.key, {}) and n[i, j] > 0]
        if len(idx) < min_cells:
            continue
        y = np.array([served[rows[i].key][w].correct for i in idx], float)
        est = np.clip(p[idx, j], 0.01, 0.99)
        z = float((y.sum() - est.sum()) / np.sqrt((est * (1 - est)).sum()))
        out[w] = {"z": round(z, 2), "cells": len(idx), "right": round(float(y.mean()), 4),
                  "estimated": round(float(est.mean()), 4)}
    return out


def drifted_print(fingerprint: str, epoch: int) -> str:
    """A worker's answer fingerprint in drift epoch `epoch`."""
    return f"{fingerprint.split('#drift', 1)[0]}#drift{epoch}"


def with_epochs(prints: dict[str, str], drift: Mapping[str, list], cache: Any
                ) -> dict[str, str]:
    """The answer fingerprints with each drifted worker's epoch (`LoopState.drift`: worker ->
    [epoch, since, version]), each epoch dated in the answer `cache` at its `since`."""
    out = dict(prints)
    for w, (epoch, since, _) in drift.items():
        if w in out:
            out[w] = drifted_print(out[w], epoch)
            cache.mark(w, out[w], since)
    return out


def detect(tested: Mapping[str, Mapping[str, float]], drift: Mapping[str, list], version: int,
           known: Any, z: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(worker -> z of every worker tested, the drifted ones with their figures), leaving out
    workers not in `known` and those already drifted since the serving `version` (tested
    again once a policy trained after their drift serves)."""
    kept = {w: t for w, t in tested.items()
            if w in known and not (w in drift and version <= drift[w][2])}
    return ({w: t["z"] for w, t in kept.items()},
            [{"worker": w, **t} for w, t in kept.items() if abs(t["z"]) >= z])


def start_epochs(found: Sequence[Mapping[str, Any]], drift: dict[str, list],
                 fingerprints: dict[str, str], cache: Any, since: float, version: int) -> None:
    """Each drifted worker's next epoch from `since`: recorded in `drift` (the loop's state),
    its fingerprint in `fingerprints` (the round's reroller) and dated in the `cache`."""
    for f in found:
        w = f["worker"]
        epoch = drift.get(w, [0])[0] + 1
        drift[w] = [epoch, since, int(version)]
        fingerprints[w] = drifted_print(fingerprints[w], epoch)
        cache.mark(w, fingerprints[w], since)


def reason(found: Sequence[Mapping[str, Any]]) -> str:
    return "answers changed without a config change: " + ", ".join(
        f"{f['worker']} right {f['right']:.2f} where {f['estimated']:.2f} was expected on "
        f"{f['cells']} served questions (z {f['z']:+.1f})" for f in found)
