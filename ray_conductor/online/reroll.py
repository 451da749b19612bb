"""Counterfactual answers: workers' answers to logged questions, read from what serving
already paid for, from the cache, or asked again through the shared worker proxies at
`rollout` priority (serving keeps its latency), judged, and laid out as a `LiteTable` for
offline episodes.

A (question, worker) *cell* comes, cheapest first, from: the served trace (a workflow that
called three workers in a vote carries three judged cells: `rewards.served_cells`); the
answer cache; a call. Calls are extra spending, so the loop asks only for the cells it
chose within its budget (`cells`, `reroll.calls_per_row`); the full re-roll (`answers`:
every worker's answer to every question, within a round's call budget) stays available.
Why cells rather than reweighting the logged plans: a lite episode may call any worker
after any other, and importance weights over multi-step decisions of a near-deterministic
served policy have unbounded variance; a policy is scored only on questions whose every
step it takes is an observed cell (`trainer.needed`), and trained on the observed cells
(`LiteTable.observed`).

Answers are cached by (question, worker, the worker's *answer* fingerprint, judgement):
a worker whose model, parameters, endpoint or pool changes is asked again; a worker whose
price changes is not: its cached answers are re-priced from their recorded tokens
(`reroll.reprice`; off, a price change asks again, counted as `price_change_reasks`). A
provider can also change a model under an unchanged name; with an age limit
(`reroll.max_age_hours`) an answer older than that is asked again too. A served cell counts
only if it was served after the worker's current answer fingerprint was first seen.

For a trainer (the LM tier): `Reroller.cells(wanted, budget, have)` is the primitive (the
cells of `wanted` (question, worker) pairs, most valuable first, cached ones free, at most
`budget` calls); inside a round the loop hands a trainer that has a `cells` attribute its
`cells.CellBroker`, whose `fetch(wanted, have)` spends from the round's allowance and
accounts every call; a trainer that offers `needed(policy_dir, data)` gets its scoring
cells asked by the loop (`CellBroker.scorable`), one without it gets every worker's answer
to the held-back questions within the budget.

A recorded hole (or another failure a second call would repeat: a 400/404/413/422 from the
worker) is state for the episode, as in serving (`responded` False), and cached; a
transient failure (a timeout, a proxy that went away in a redeploy) says nothing about the
worker, so its cell is left out of this round and asked again in the next.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ray_conductor.lite.table import NO_ANSWER, LiteTable, answer_codes
from ray_conductor.online.anchor import ANCHOR
from ray_conductor.online.rewards import LoggedRow, ServedCell, Verifier
from ray_conductor.verify.answers import comparable, extract_answer
from ray_conductor.workers.base import WorkerPool, permanent_failure
from ray_conductor.workers.config import price_fingerprint
from ray_conductor.workflow.executor import StepTrace, call_worker, record_call, step_messages
from ray_conductor.workflow.model import ROUTER_SUBTASK, Step

permanent = permanent_failure  # cache it as no answer, or leave it for the next round
Cells = dict[str, dict[str, "RerollAnswer"]]  # question key -> worker -> its judged answer


@dataclass(frozen=True)
class RerollAnswer:
    """One worker's judged answer to one question, with the tokens it was priced from and
    the price (`price_fingerprint`) its cost is in."""

    answer: str | None  # comparable extracted answer; None: none (or not comparable)
    correct: bool
    cost: float
    responded: bool
    input_tokens: int | None = None  # None: not recorded (asked again on a price change)
    output_tokens: int | None = None
    price: str | None = None


def repriced(a: RerollAnswer, prices: tuple[float, float], tag: str) -> RerollAnswer | None:
    """`a` at `prices` ($/1M input, output tokens) from its recorded tokens; None when it has
    no tokens to price (a failed call costs nothing at any price)."""
    if not a.responded:
        return replace(a, price=tag)
    if a.input_tokens is None or a.output_tokens is None:
        return None
    cost = (a.input_tokens * prices[0] + a.output_tokens * prices[1]) / 1e6
    return replace(a, cost=cost, price=tag)


class AnswerCache:
    """In memory, and appended to a JSONL file (`path`) so later processes reuse it. With
    `max_age_s`, an answer older than that (by `clock`) is a miss and is asked again; rows
    written before ages were kept count as old. A file that grew past twice its live rows
    (answers asked again) is compacted on load, atomically. It also remembers when each
    worker's answer fingerprint was first seen (`since`)."""

    def __init__(self, path: str | os.PathLike | None = None, *, max_age_s: float | None = None,
                 clock=time.time):
        self.path = Path(path) if path else None
        self.max_age_s, self.clock = max_age_s, clock
        self._d: dict[str, tuple[RerollAnswer, float]] = {}
        self._since: dict[str, float] = {}  # "worker|fingerprint" -> first seen
        self.expired = 0  # lookups that found an answer too old to use
        lines = 0
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                lines += 1
                try:
                    row = json.loads(line)
                    if "since" in row:
                        self._since.setdefault(row["since"], float(row["t"]))
                    else:
                        self._d[row["k"]] = (RerollAnswer(**row["a"]), float(row.get("t", 0.0)))
                except (ValueError, KeyError, TypeError):  # a torn last line after a crash
                    continue
        if lines > 2 * max(len(self._d) + len(self._since), 1):
            self._rewrite()

    @staticmethod
    def key(row: LoggedRow, worker: str, fingerprint: str) -> str:
        assert row.judge is not None
        return f"{row.key}|{worker}|{fingerprint}|{row.judge.key}"

    def get(self, key: str) -> RerollAnswer | None:
        got = self._d.get(key)
        if got is None:
            return None
        if self.max_age_s is not None and self.clock() - got[1] > self.max_age_s:
            self.expired += 1
            return None
        return got[0]

    def put(self, items: Mapping[str, RerollAnswer]) -> None:
        now = self.clock()
        self._d.update((k, (a, now)) for k, a in items.items())
        self._append("".join(self._line(k, a, now) for k, a in items.items()))

    def mark(self, worker: str, fingerprint: str, t: float) -> None:
        """Date a worker's new answer fingerprint `t` (a change found after the fact, e.g. a
        drift seen in rows served from `t` on) unless it is already dated."""
        tag = f"{worker}|{fingerprint}"
        if tag not in self._since:
            self._since[tag] = float(t)
            self._append(json.dumps({"since": tag, "t": self._since[tag]}) + "\n")

    def since(self, worker: str, fingerprint: str) -> float:
        """When this worker's answer fingerprint was first seen: 0.0 for the first one a
        worker ever had (every earlier answer of it is its own), else the time of the change
        (served answers from before it are another config's)."""
        tag = f"{worker}|{fingerprint}"
        if tag not in self._since:
            known = any(k.split("|", 1)[0] == worker for k in self._since)
            self._since[tag] = self.clock() if known else 0.0
            self._append(json.dumps({"since": tag, "t": self._since[tag]}) + "\n")
        return self._since[tag]

    def _append(self, text: str) -> None:
        if self.path is not None and text:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(text)

    @staticmethod
    def _line(k: str, a: RerollAnswer, t: float) -> str:
        return json.dumps({"k": k, "a": asdict(a), "t": t}) + "\n"

    def _rewrite(self) -> None:
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(self._line(k, a, t) for k, (a, t) in self._d.items())
                       + "".join(json.dumps({"since": k, "t": t}) + "\n"
                                 for k, t in self._since.items()))
        os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self._d)


@dataclass
class RerollStats:
    rows: int = 0  # questions asked for
    complete: int = 0  # questions with every wanted cell
    calls: int = 0  # worker calls made (cache hits and served cells are free)
    dollars: float = 0.0  # what those calls cost
    cached: int = 0
    served: int = 0  # cells read from served traces
    recorded: int = 0  # anchors' cells read from their pool's recording (`anchor.recorded`)
    repriced: int = 0  # cached answers re-priced after a price-only change (no call)
    price_change_reasks: int = 0  # calls made only because a worker's price changed
    failed: int = 0  # calls that failed (transient ones are asked again next round)
    out_of_budget: int = 0  # wanted cells (full re-roll: questions) left out by the budget
    retry: int = 0  # questions left out for a transient failure (asked again next round)
    expired: int = 0  # cached answers too old to use (asked again)

    def add(self, other: "RerollStats", *only: str) -> None:
        """Add `other`'s counts (`only` these fields where given)."""
        for k in only or vars(other):
            setattr(self, k, getattr(self, k) + getattr(other, k))


def prices_of(infos: Iterable[Any]) -> dict[str, tuple[float, float]]:
    """Worker -> (input, output) dollars per 1M tokens, as the pool's `WorkerInfo`s say."""
    return {w.name: (float(w.input_price_per_mtok or 0.0), float(w.output_price_per_mtok or 0.0))
            for w in infos}


def price_tags(prices: Mapping[str, tuple[float, float]]) -> dict[str, str]:
    """Worker -> its price fingerprint (what a price-only change alters), from `prices_of`."""
    return {w: price_fingerprint(*p) for w, p in prices.items()}


def price_changed(now: Mapping[str, str], was: Mapping[str, str]) -> list[str]:
    """The workers whose price fingerprint `now` differs from `was`: a worker that joined or
    left is not a price change."""
    return sorted(w for w in now if w in was and was[w] != now[w])


class Reroller:
    """Asks `pool`'s workers (called at the pool's priority: give it a `rollout` pool).
    `fingerprints`: each worker's answer fingerprint (`workers.config.answer_fingerprint`);
    prices are the pool's (`WorkerInfo`), so a price change shows without one."""

    def __init__(self, pool: WorkerPool, fingerprints: Mapping[str, str], cache: AnswerCache,
                 verifier: Verifier | None = None, *, concurrency: int = 32,
                 timeout_s: float | None = 120.0, reprice: bool = True):
        self.pool, self.fingerprints, self.cache = pool, dict(fingerprints), cache
        self.verifier, self.concurrency, self.timeout_s = verifier, concurrency, timeout_s
        self.reprice = reprice
        infos = list(pool.workers())
        self.workers = [w.name for w in infos]
        self.prices = {w.name: (float(w.input_price_per_mtok or 0.0),
                                float(w.output_price_per_mtok or 0.0)) for w in infos}
        self.price_tags = price_tags(self.prices)

    # -- what is known without a call -----------------------------------------------------
    def _key(self, row: LoggedRow, worker: str) -> str:
        return AnswerCache.key(row, worker, self.fingerprints[worker])

    def known(self, row: LoggedRow, worker: str, stats: RerollStats) -> RerollAnswer | None:
        """The cached answer, at today's price (re-priced from its tokens); None: a call is
        needed (counted as a price-change re-ask when only the price moved)."""
        a = self.cache.get(self._key(row, worker))
        if a is None:
            return None
        tag = self.price_tags[worker]
        if a.price in (None, tag):  # an answer cached before prices were kept: as it was
            stats.cached += 1
            return a
        if self.reprice and (b := repriced(a, self.prices[worker], tag)) is not None:
            stats.repriced += 1
            return b
        stats.price_change_reasks += 1
        return None

    def served(self, rows: Iterable[LoggedRow], stats: RerollStats | None = None) -> Cells:
        """The judged cells of the rows' served traces (free), at today's prices; a cell
        served before its worker's current answer fingerprint was first seen is left out.
        An anchor row's cells are its pool's recording, dated 0 (`anchor.recorded_cells`):
        they count for a worker's first answer fingerprint only."""
        out: Cells = {}
        for row in rows:
            if row.judge is None:
                continue
            for c in row.served:
                if c.worker not in self.price_tags or \
                        row.time < self.cache.since(c.worker, self.fingerprints[c.worker]):
                    continue
                a = self._from_served(row, c)
                out.setdefault(row.key, {})[c.worker] = a
                if stats is not None:
                    if row.source == ANCHOR:
                        stats.recorded += 1
                    else:
                        stats.served += 1
        return out

    def _from_served(self, row: LoggedRow, c: ServedCell) -> RerollAnswer:
        assert row.judge is not None
        fmt = row.judge.answer_format
        answer = c.answer
        if answer is None and c.ok and comparable(fmt):
            answer = extract_answer(c.text, fmt)
        correct = c.ok and bool(row.judge(c.text, self.verifier))
        a = RerollAnswer(answer if c.ok and comparable(fmt) else None, correct, c.cost, c.ok,
                         c.input_tokens, c.output_tokens, None)
        return repriced(a, self.prices[c.worker], self.price_tags[c.worker]) or a

    # -- budgeted cells -------------------------------------------------------------------
    def cells(self, wanted: Sequence[tuple[LoggedRow, str]], budget: int,
              have: Cells | None = None) -> tuple[Cells, RerollStats]:
        """The budgeted-cells API: the answers to `wanted` (question, worker) cells, in that
        order (most valuable first), cached ones free, at most `budget` calls; cells already
        in `have` are skipped. Returns only the new cells obtained (a transient failure's
        cell is left out) and the stats (`out_of_budget`: wanted cells left unasked)."""
        stats = RerollStats(rows=len({r.key for r, _ in wanted}))
        expired0 = self.cache.expired
        got: Cells = {}
        todo: list[tuple[LoggedRow, str]] = []
        seen: set[tuple[str, str]] = set()
        for row, w in wanted:
            if (row.key, w) in seen or w in (have or {}).get(row.key, {}) or row.judge is None:
                continue
            seen.add((row.key, w))
            a = self.known(row, w, stats)
            if a is not None:
                got.setdefault(row.key, {})[w] = a
            elif len(todo) < budget:
                todo.append((row, w))
            else:
                stats.out_of_budget += 1
        for (row, w), a in self._asked(todo, stats).items():
            got.setdefault(row.key, {})[w] = a
        stats.complete = len(got)
        stats.expired = self.cache.expired - expired0
        return got, stats

    def answers(self, rows: Sequence[LoggedRow], budget: int) -> tuple[Cells, RerollStats]:
        """The full re-roll: per question key, every worker's answer, for the questions
        (first first) that could be completed within `budget` calls."""
        stats = RerollStats(rows=len(rows))
        expired0 = self.cache.expired
        have: Cells = {}
        todo: list[tuple[LoggedRow, str]] = []
        for row in rows:
            got, missing = {}, []
            for w in self.workers:
                a = self.known(row, w, stats)
                (missing.append(w) if a is None else got.__setitem__(w, a))
            if len(todo) + len(missing) > budget:
                stats.out_of_budget += 1
                continue
            todo += [(row, w) for w in missing]
            have[row.key] = got
        asked = self._asked(todo, stats)
        retry = {row.key for row, w in todo if (row, w) not in asked}
        for (row, w), a in asked.items():
            if row.key not in retry:
                have[row.key][w] = a
        for key in retry:
            have.pop(key, None)
        stats.retry = len(retry)
        stats.complete = len(have)
        stats.expired = self.cache.expired - expired0
        return have, stats

    def _asked(self, todo: list[tuple[LoggedRow, str]], stats: RerollStats
               ) -> dict[tuple[LoggedRow, str], RerollAnswer]:
        """Ask `todo`; the settled answers (cached), keyed by cell; transient failures are
        left out (asked again next round)."""
        if not todo:
            return {}
        fresh = asyncio.run(self._ask(todo))
        keep, out = {}, {}
        for (row, w), (a, settled) in zip(todo, fresh):
            stats.failed += not a.responded
            stats.dollars += a.cost
            if a.responded or settled:
                keep[self._key(row, w)] = a
                out[(row, w)] = a
        self.cache.put(keep)
        stats.calls += len(todo)
        return out

    async def _ask(self, todo: list[tuple[LoggedRow, str]]) -> list[tuple[RerollAnswer, bool]]:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(row: LoggedRow, worker: str) -> tuple[RerollAnswer, bool]:
            async with sem:
                return await self._call(row, worker)

        return list(await asyncio.gather(*(one(r, w) for r, w in todo)))

    async def _call(self, row: LoggedRow, worker: str) -> tuple[RerollAnswer, bool]:
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
        return (RerollAnswer(st.answer, bool(correct), float(c.cost), ok,
                             int(c.input_tokens or 0), int(c.output_tokens or 0),
                             self.price_tags.get(worker)), ok or permanent(c))


def merge(into: Cells, more: Mapping[str, Mapping[str, RerollAnswer]]) -> Cells:
    """`into` with `more`'s cells added (in place; a cell already there stays)."""
    for key, cells in more.items():
        mine = into.setdefault(key, {})
        for w, a in cells.items():
            mine.setdefault(w, a)
    return into


def build_table(rows: Sequence[LoggedRow], answers: Mapping[str, Mapping[str, RerollAnswer]],
                features: np.ndarray, workers: Sequence[str], strength: Sequence[float],
                keep_empty: bool = False) -> LiteTable:
    """The rows with at least one observed cell (`keep_empty`: every row, for scoring: a
    policy's first call needs no cell to be chosen) as a `LiteTable` (`features`: the rows'
    raw question embeddings, aligned with `rows`); unobserved cells are no answer, free, and
    marked in `observed` (none missing: `observed` None). One answer format: the first
    row's."""
    keep = [i for i, r in enumerate(rows)
            if keep_empty or any(w in answers.get(r.key, {}) for w in workers)]
    fmt = next((rows[i].judge.answer_format for i in keep if rows[i].judge is not None), "mc")
    voting = comparable(fmt)
    shape = (len(keep), len(workers))
    codes = np.full(shape, NO_ANSWER, np.int32)
    correct, responded = np.zeros(shape, bool), np.zeros(shape, bool)
    observed = np.zeros(shape, bool)
    cost = np.zeros(shape, np.float64)
    none = RerollAnswer(None, False, 0.0, False)
    for j, i in enumerate(keep):
        mine = answers.get(rows[i].key, {})
        got = [mine.get(w, none) for w in workers]
        observed[j] = [w in mine for w in workers]
        if voting:
            codes[j] = answer_codes([a.answer if a.responded else None for a in got])
        correct[j] = [a.correct for a in got]
        cost[j] = [a.cost for a in got]
        responded[j] = [a.responded for a in got]
    feats = np.asarray(features, np.float32)[np.array(keep, dtype=np.int64)]
    return LiteTable([rows[i].key for i in keep], feats, codes, correct, cost, responded,
                     list(workers), np.asarray(strength, np.float64), voting, fmt,
                     observed=None if observed.all() else observed)


def judgeable(rows: Sequence[LoggedRow]) -> list[LoggedRow]:
    """The rows whose other answers can be judged (the rest teach nothing)."""
    return [r for r in rows if r.judge is not None]
