"""A replay pool as plain arrays: what every lite-conductor episode looks up.

Per query: its question features; per (query, worker): the recorded extracted answer (an int
code, -1 for none), whether it was correct, and what it cost. The environment, the supervised
selector and offline evaluation all read this table and nothing else, so none of them needs
Ray, a pool object or a text model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from ray_conductor.data.splits import unit_hash
from ray_conductor.errors import DataError
from ray_conductor.verify.answers import comparable as comparable_format
from ray_conductor.verify.answers import extract_answer

NO_ANSWER = -1


@dataclass
class LiteTable:
    """Rows are queries, columns workers (in the pool's order)."""

    query_ids: list[str]
    features: np.ndarray  # [Q, F] float32
    answers: np.ndarray  # [Q, W] int32 answer code, NO_ANSWER where none was extracted
    correct: np.ndarray  # [Q, W] bool, as the evaluation judges the worker's text
    cost: np.ndarray  # [Q, W] float64, dollars
    responded: np.ndarray  # [Q, W] bool: a recorded text exists (False: a hole, a failed call)
    workers: list[str]
    strength: np.ndarray  # [W] plurality tie-break (the worker's list price)
    comparable: bool  # answers can be voted on (mc, number, math); False for label, code
    answer_format: str = "mc"
    # [Q, W] bool: which cells are known (partial-information rows: a served trace holds the
    # answers of the workers its workflow called, a budgeted re-roll a few more); None: all.
    # An unobserved cell reads as no answer, free; episodes never call it (`LiteEnv`), the
    # selector's estimates count only observed cells (`selector`).
    observed: np.ndarray | None = None

    def __post_init__(self) -> None:
        q, w = self.answers.shape
        parts = (self.correct, self.cost, self.responded) + (
            (self.observed,) if self.observed is not None else ())
        if self.features.shape[0] != q or any(a.shape != (q, w) for a in parts):
            raise DataError(f"lite table shapes disagree: features {self.features.shape}, "
                            f"answers {self.answers.shape}, correct {self.correct.shape}, "
                            f"cost {self.cost.shape}")

    def __len__(self) -> int:
        return len(self.query_ids)

    @property
    def seen(self) -> np.ndarray:
        """[Q, W] bool: the observed cells (every one where `observed` is None)."""
        if self.observed is None:
            return np.ones(self.answers.shape, bool)
        return np.asarray(self.observed, bool)

    def take(self, rows: np.ndarray | Sequence[int]) -> "LiteTable":
        rows = np.asarray(rows, dtype=np.int64)
        return LiteTable([self.query_ids[i] for i in rows], self.features[rows],
                         self.answers[rows], self.correct[rows], self.cost[rows],
                         self.responded[rows], list(self.workers), self.strength,
                         self.comparable, self.answer_format,
                         None if self.observed is None else self.observed[rows])

    def with_features(self, features: np.ndarray) -> "LiteTable":
        return replace(self, features=np.asarray(features, np.float32))

    def reorder(self, workers: Sequence[str]) -> "LiteTable":
        """The same table with its worker columns in `workers` order."""
        if list(workers) == self.workers:
            return self
        cols = np.array([self.workers.index(w) for w in workers])
        return replace(self, answers=self.answers[:, cols], correct=self.correct[:, cols],
                       cost=self.cost[:, cols], responded=self.responded[:, cols],
                       workers=list(workers), strength=self.strength[cols],
                       observed=None if self.observed is None else self.observed[:, cols])

    def split_validation(self, fraction: float, salt: str = "lite-val"
                         ) -> tuple["LiteTable", "LiteTable"]:
        """(fit, validation): a deterministic slice of these (train) rows by hashed query id,
        for tuning and early stopping without touching the test split."""
        val = np.array([unit_hash(f"{salt}/{q}") < fraction for q in self.query_ids], bool)
        return self.take(np.flatnonzero(~val)), self.take(np.flatnonzero(val))


def worker_strength(workers) -> np.ndarray:
    """Ties in a vote go to the pricier worker (the same rule the executor's vote uses)."""
    return np.array([w.input_price_per_mtok + w.output_price_per_mtok for w in workers],
                    dtype=np.float64)


def recorded_answer(record, answer_format: str) -> str | None:
    """The record's extracted answer: `Record.answer` where the data has it, else the one
    `verify.answers` finds in the response (None for formats without comparable answers)."""
    if record is None or record.response is None:
        return None
    answer = getattr(record, "answer", None)
    if answer is not None:
        return answer or None
    return extract_answer(record.response, answer_format)


def answer_codes(answers: Sequence[str | None]) -> np.ndarray:
    """Per-query integer codes: equal answers get equal codes, None gets NO_ANSWER."""
    seen: dict[str, int] = {}
    return np.array([NO_ANSWER if a is None else seen.setdefault(a, len(seen))
                     for a in answers], dtype=np.int32)


def build_table(data, split: str, featurize: Callable[[list[str]], np.ndarray],
                workers=None) -> LiteTable:
    """The `split` of a `ReplayData` as a `LiteTable`; `featurize` maps question texts to
    feature rows. A pool mixing answer formats is refused (one policy, one kind of answer)."""
    queries = data.queries(split)
    if not queries:
        raise DataError(f"split={split!r} of this pool has no queries")
    formats = {q.answer_format for q in queries}
    if len(formats) != 1:
        raise DataError(f"the lite conductor needs one answer format per pool, got {formats}")
    fmt = formats.pop()
    workers = list(workers or data.worker_infos())
    names = [w.name for w in workers]
    correct, cost, responded = _matrix(data, queries, names)
    answers = np.full(correct.shape, NO_ANSWER, dtype=np.int32)
    voting = comparable_format(fmt)  # label, code: answers are not comparable, no votes
    if voting:
        for i, q in enumerate(queries):
            answers[i] = answer_codes([recorded_answer(data.record(q.query_id, m), fmt)
                                       for m in names])
    feats = np.asarray(featurize([q.query for q in queries]), dtype=np.float32)
    return LiteTable([q.query_id for q in queries], feats, answers, correct, cost, responded,
                     names, worker_strength(workers), voting, fmt)


def _matrix(data, queries, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correctness as the evaluation judges a returned text (`data.judge`), so that what the
    policy is trained on is what `eval` scores; holes are wrong, free and not responded."""
    shape = (len(queries), len(names))
    correct, responded = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    cost = np.zeros(shape, dtype=np.float64)
    for i, q in enumerate(queries):
        for j, m in enumerate(names):
            r = data.record(q.query_id, m)
            if r is not None and r.response is not None:
                correct[i, j], cost[i, j] = data.judge(q.query_id, r.response), r.cost
                responded[i, j] = True
    return correct, cost, responded
