"""Fixed turn-by-turn workflows ("programs") over a pool: the supervised selector's menu and
the behaviour-cloning teacher's moves.

`single(a)`: call a, stop. `cascade(a, b, c)`: call a and b; if they agree, stop; else call
c and vote ("gemini-flash and gemini-pro agree, else gpt-4o" is cascade(flash, pro, 4o)).
Each program acts on an `Episode` like the learned policy does, and its outcome on every row
of a `LiteTable` is also computed in bulk with numpy (`outcomes`, checked against `act`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ray_conductor.lite.episode import Episode
from ray_conductor.lite.table import NO_ANSWER, LiteTable


@dataclass(frozen=True)
class Program:
    workers: tuple[int, ...]  # (a,) or (a, b, c)

    def act(self, ep: Episode) -> int:
        n = len(ep.calls)
        if len(self.workers) == 1:
            return self.workers[0] if n == 0 else ep.stop_action
        if n < 2:
            return self.workers[n]
        if n == 2:
            a, b = ep.answers
            return ep.stop_action if a is not None and a == b else self.workers[2]
        return ep.vote_action

    def describe(self, names: list[str]) -> str:
        w = [names[i] for i in self.workers]
        return w[0] if len(w) == 1 else f"{w[0]} and {w[1]} agree, else vote with {w[2]}"


def library(table: LiteTable, max_calls: int,
            among: Sequence[int] | None = None) -> list[Program]:
    """Every single worker; with comparable answers and room for 3 calls, every cascade
    (a, b unordered: the cheaper one is called first; c any other worker) over the workers
    `among` (column indices, in the order given; None: all)."""
    w = len(table.workers)
    progs = [Program((a,)) for a in range(w)]
    if table.comparable and max_calls >= 3:
        price = table.cost.mean(axis=0)
        cols = list(range(w)) if among is None else [int(i) for i in among]
        for a, b in itertools.combinations(cols, 2):
            a, b = sorted((a, b), key=lambda i: price[i])
            progs += [Program((a, b, c)) for c in cols if c not in (a, b)]
    return progs


def vote_rows(codes: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Vectorised `workflow.programs.plurality` over rows of answer codes [Q, k]: the column
    of the winning call per row (-1 when no call answered)."""
    valid = codes != NO_ANSWER
    counts = ((codes[:, :, None] == codes[:, None, :]) & valid[:, None, :]).sum(-1)
    counts = np.where(valid, counts, 0)
    top = counts.max(axis=1, keepdims=True)
    k = codes.shape[1]
    key = np.argsort(np.lexsort((-np.arange(k), strength))).astype(np.float64)  # rank
    key = np.where(valid & (counts == top), key[None, :], -1.0)
    winner = key.argmax(axis=1)
    return np.where(valid.any(axis=1), winner, -1)


def outcomes(table: LiteTable, programs: list[Program]) -> tuple[np.ndarray, np.ndarray]:
    """correct[Q, L] and cost[Q, L] of each program on each row, without stepping episodes."""
    q = np.arange(len(table))
    correct = np.zeros((len(table), len(programs)), dtype=bool)
    cost = np.zeros((len(table), len(programs)), dtype=np.float64)
    A, C, K, R = table.answers, table.correct, table.cost, table.responded
    for j, p in enumerate(programs):
        if len(p.workers) == 1:
            correct[:, j], cost[:, j] = C[:, p.workers[0]], K[:, p.workers[0]]
            continue
        a, b, c = p.workers
        agree = (A[:, a] != NO_ANSWER) & (A[:, a] == A[:, b])
        cols = np.array([a, b, c])
        win = vote_rows(A[:, cols], table.strength[cols])
        last = np.where(R[:, c], 2, np.where(R[:, b], 1, np.where(R[:, a], 0, -1)))
        win = np.where(win >= 0, win, last)  # no comparable answer: the last text there is
        voted = np.where(win >= 0, C[q, cols[np.maximum(win, 0)]], False)
        correct[:, j] = np.where(agree, C[:, b], voted)
        cost[:, j] = K[:, a] + K[:, b] + np.where(agree, 0.0, K[:, c])
    return correct, cost
