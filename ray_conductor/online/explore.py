"""Explore on a budget: how many extra calls the loop may make (`allowance`), and which
(question, worker) cells are worth them (`rank_cells`). Pure numpy.

The budget (`reroll.calls_per_row`) is per rewarded traffic row: the loop earns
`calls_per_row` calls with each rewarded row it reads and spends them on every extra call
(exploration, the cells a paired test needs, anchors, the watch's replay); what a round does
not spend carries over, never more than was earned.

Which cells: per row, the workers' estimated rewards `p - penalty * cost` (the serving
policy's prior: its neighbours' observed outcomes, and how many there were) name the
current choice; an unobserved cell is worth asking when the worker could beat that choice,
ranked by z = (estimate - best) / se, se = sqrt(p (1 - p) / (n + 1)) (the chosen worker
itself first, at z = 0, when it is unobserved: the choice is checked before alternatives),
most uncertain first among ties.
"""

from __future__ import annotations

import math

import numpy as np


def allowance(rewarded_rows: int, calls_per_row: float | None, spent: int,
              cap: int | None = None) -> int:
    """Calls the loop may still make: `calls_per_row` per rewarded row so far, less those
    spent, at most `cap` (one round's `calls_per_round`). None: no per-row budget (the full
    re-roll), only the cap."""
    if calls_per_row is None:
        return int(cap) if cap is not None else 1 << 62
    left = max(0, math.floor(calls_per_row * rewarded_rows + 1e-9) - int(spent))
    return left if cap is None else min(left, int(cap))


def rank_cells(p: np.ndarray, n: np.ndarray, cost: np.ndarray, penalty: float,
               observed: np.ndarray) -> list[tuple[int, int]]:
    """The unobserved (row, worker) cells, most valuable first. `p`, `n`: [R, W] estimated
    correctness and the observed neighbours behind it; `cost`: [W] mean $ per call;
    `observed`: [R, W] cells already known (never ranked)."""
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    value = p - penalty * np.asarray(cost, np.float64)[None, :]
    best = value.max(axis=1, keepdims=True)
    se = np.sqrt(p * (1 - p) / (np.asarray(n, np.float64) + 1.0)) + 1e-6
    z = (value - best) / se
    rows, cols = np.nonzero(~np.asarray(observed, bool))
    order = np.lexsort((-se[rows, cols], -z[rows, cols]))  # z first, then uncertainty
    return [(int(rows[i]), int(cols[i])) for i in order]


def spread(ranked: list[tuple[int, int]], per_row: int) -> list[tuple[int, int]]:
    """`ranked` with at most `per_row` cells of any one row taken in a first pass (the rest
    after): a small budget reaches many questions before it completes a few."""
    first, later, count = [], [], {}
    for r, w in ranked:
        count[r] = count.get(r, 0) + 1
        (first if count[r] <= per_row else later).append((r, w))
    return first + later


def changed_first(ranked: list[tuple[int, int]], names: list[str], changed: set[str]
                  ) -> list[tuple[int, int]]:
    """`ranked` (row, worker) cells spread one per row (`spread`), those of the `changed`
    workers first: a worker whose answers changed (or that is new) has estimates that are
    another config's (or none), so its cells are worth the most whatever they are ranked
    at; in their own order (most valuable first) among themselves."""
    first = [c for c in ranked if names[c[1]] in changed]
    return spread(first, 1) + spread([c for c in ranked if names[c[1]] not in changed], 1)
