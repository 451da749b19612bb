"""Counterfactual answers: every worker's answer to logged questions, asked again through the
shared worker proxies at `rollout` priority (serving keeps its latency), judged, and laid
out as a `LiteTable` for offline episodes.

Why re-roll instead of reweighting the logged plans: a lite episode may call any worker
after any other, so training needs every worker's answer to the question; the log holds only
the answers of the workers the served (older) policy chose, and importance weights over
multi-step decisions of a near-deterministic served policy have unbounded variance. A replay
worker answers from its recording through its proxy; a live worker makes a real call, so
each round has a call budget. Answers are cached by (question, worker, the worker's config
fingerprint, judgement): a worker whose config changes (a price, a model, a pool) is asked
again. A provider can also change a model under an unchanged name; with an age limit
(`reroll.max_age_hours`) an answer older than that is asked again too, so a worker that
degrades silently shows in the next rounds' tables.

A recorded hole (or another failure a second call would repeat: a 400/404/413/422 from the
worker) is state for the episode, as in serving (`responded` False), and cached; a
transient failure (a timeout, a proxy that went away in a redeploy) says nothing about the
worker, so its question is left out of this round and asked again in the next.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ray_conductor.lite.table import NO_ANSWER, LiteTable, answer_codes
from ray_conductor.online.rewards import LoggedRow, Verifier
from ray_conductor.verify.answers import comparable
from ray_conductor.workers.base import WorkerPool, permanent_failure
from ray_conductor.workflow.executor import StepTrace, call_worker, record_call, step_messages
from ray_conductor.workflow.model import ROUTER_SUBTASK, Step

permanent = permanent_failure  # cache it as no answer, or leave it for the next round


@dataclass(frozen=True)
class Answer:
    """One worker's judged answer to one question."""

    answer: str | None  # comparable extracted answer; None: none (or not comparable)
    correct: bool
    cost: float
    responded: bool


class AnswerCache:
    """In memory, and appended to a JSONL file (`path`) so later processes reuse it. With
    `max_age_s`, an answer older than that (by `clock`) is a miss and is asked again; rows
    written before ages were kept count as old. A file that grew past twice its live rows
    (answers asked again) is compacted on load, atomically."""

    def __init__(self, path: str | os.PathLike | None = None, *, max_age_s: float | None = None,
                 clock=time.time):
        self.path = Path(path) if path else None
        self.max_age_s, self.clock = max_age_s, clock
        self._d: dict[str, tuple[Answer, float]] = {}
        self.expired = 0  # lookups that found an answer too old to use
        lines = 0
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                lines += 1
                try:
                    row = json.loads(line)
                    self._d[row["k"]] = (Answer(**row["a"]), float(row.get("t", 0.0)))
                except (ValueError, KeyError, TypeError):  # a torn last line after a crash
                    continue
        if lines > 2 * max(len(self._d), 1):
            self._rewrite()

    @staticmethod
    def key(row: LoggedRow, worker: str, fingerprint: str) -> str:
        assert row.judge is not None
        return f"{row.key}|{worker}|{fingerprint}|{row.judge.key}"

    def get(self, key: str) -> Answer | None:
        got = self._d.get(key)
        if got is None:
            return None
        if self.max_age_s is not None and self.clock() - got[1] > self.max_age_s:
            self.expired += 1
            return None
        return got[0]

    def put(self, items: Mapping[str, Answer]) -> None:
        now = self.clock()
        self._d.update((k, (a, now)) for k, a in items.items())
        if self.path is not None and items:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write("".join(self._line(k, a, now) for k, a in items.items()))

    @staticmethod
    def _line(k: str, a: Answer, t: float) -> str:
        return json.dumps({"k": k, "a": asdict(a), "t": t}) + "\n"

    def _rewrite(self) -> None:
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(self._line(k, a, t) for k, (a, t) in self._d.items()))
        os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self._d)


@dataclass
class RerollStats:
    rows: int = 0  # questions asked for
    complete: int = 0  # questions with every worker's answer
    calls: int = 0  # worker calls made (cache hits are free)
    cached: int = 0
    failed: int = 0  # calls that failed (transient ones are asked again next round)
    out_of_budget: int = 0  # questions left incomplete by the call budget
    retry: int = 0  # questions left out for a transient failure (asked again next round)
    expired: int = 0  # cached answers too old to use (asked again)


class Reroller:
    """Asks `pool`'s workers (called at the pool's priority: give it a `rollout` pool)."""

    def __init__(self, pool: WorkerPool, fingerprints: Mapping[str, str], cache: AnswerCache,
                 verifier: Verifier | None = None, *, concurrency: int = 32,
                 timeout_s: float | None = 120.0):
        self.pool, self.fingerprints, self.cache = pool, dict(fingerprints), cache
        self.verifier, self.concurrency, self.timeout_s = verifier, concurrency, timeout_s
        self.workers = [w.name for w in pool.workers()]

    def answers(self, rows: Sequence[LoggedRow], budget: int
                ) -> tuple[dict[str, dict[str, Answer]], RerollStats]:
        """Per question key, every worker's answer, for the questions (first first) that
        could be completed within `budget` calls."""
        stats = RerollStats(rows=len(rows))
        expired0 = self.cache.expired
        have: dict[str, dict[str, Answer]] = {}
        todo: list[tuple[LoggedRow, str]] = []
        for row in rows:
            got, missing = {}, []
            for w in self.workers:
                a = self.cache.get(AnswerCache.key(row, w, self.fingerprints[w]))
                (missing.append(w) if a is None else got.__setitem__(w, a))
            stats.cached += len(got)
            if len(todo) + len(missing) > budget:
                stats.out_of_budget += 1
                continue
            todo += [(row, w) for w in missing]
            have[row.key] = got
        if todo:
            fresh = asyncio.run(self._ask(todo))
            keep, retry = {}, set()
            for (row, w), (a, settled) in zip(todo, fresh):
                have[row.key][w] = a
                stats.failed += not a.responded
                if a.responded or settled:
                    keep[AnswerCache.key(row, w, self.fingerprints[w])] = a
                else:  # a transient failure says nothing about the worker: ask next round
                    retry.add(row.key)
            self.cache.put(keep)
            for key in retry:
                del have[key]
            stats.retry = len(retry)
        stats.calls = len(todo)
        stats.complete = len(have)
        stats.expired = self.cache.expired - expired0
        return have, stats

    async def _ask(self, todo: list[tuple[LoggedRow, str]]) -> list[tuple[Answer, bool]]:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(row: LoggedRow, worker: str) -> tuple[Answer, bool]:
            async with sem:
                return await self._call(row, worker)

        return list(await asyncio.gather(*(one(r, w) for r, w in todo)))

    async def _call(self, row: LoggedRow, worker: str) -> tuple[Answer, bool]:
        """The judged answer, and whether it is settled (an answer, or a permanent failure)."""
        assert row.judge is not None
        fmt = row.judge.answer_format
        step = Step(worker, ROUTER_SUBTASK, ())
        params = {"metadata": {"query_id": row.query_id, "question": row.question}}
        c = await call_worker(self.pool, worker, step_messages(row.question, step, []),
                              self.timeout_s, params)
        st = StepTrace(0, worker, ROUTER_SUBTASK, [])
        record_call(st, c, fmt if comparable(fmt) else None)
        ok = c.error is None
        correct = ok and row.judge(c.text, self.verifier)
        return Answer(st.answer, bool(correct), float(c.cost), ok), ok or permanent(c)


def build_table(rows: Sequence[LoggedRow], answers: Mapping[str, Mapping[str, Answer]],
                features: np.ndarray, workers: Sequence[str], strength: Sequence[float]
                ) -> LiteTable:
    """The complete rows as a `LiteTable` (`features`: the rows' raw question embeddings,
    aligned with `rows`); one answer format: the first row's."""
    keep = [i for i, r in enumerate(rows) if r.key in answers]
    fmt = rows[keep[0]].judge.answer_format if keep else "mc"  # type: ignore[union-attr]
    voting = comparable(fmt)
    shape = (len(keep), len(workers))
    codes = np.full(shape, NO_ANSWER, np.int32)
    correct, responded = np.zeros(shape, bool), np.zeros(shape, bool)
    cost = np.zeros(shape, np.float64)
    for j, i in enumerate(keep):
        got = [answers[rows[i].key][w] for w in workers]
        if voting:
            codes[j] = answer_codes([a.answer if a.responded else None for a in got])
        correct[j] = [a.correct for a in got]
        cost[j] = [a.cost for a in got]
        responded[j] = [a.responded for a in got]
    feats = np.asarray(features, np.float32)[np.array(keep, dtype=np.int64)]
    return LiteTable([rows[i].key for i in keep], feats, codes, correct, cost, responded,
                     list(workers), np.asarray(strength, np.float64), voting, fmt)


def judgeable(rows: Sequence[LoggedRow]) -> list[LoggedRow]:
    """The rows whose other answers can be judged (the rest teach nothing)."""
    return [r for r in rows if r.judge is not None]
