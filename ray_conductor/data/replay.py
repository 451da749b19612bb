"""Recorded answers as data (`ReplayData`) and as an in-process `WorkerPool` (`ReplayPool`).

Replay is how the conductor trains and is evaluated offline: a step given to model M for query
q returns what M really answered to q, with its tokens and cost. The step's subtask and the
other agents' outputs cannot change a recording, so replay measures routing, not collaboration.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa

from ray_conductor.data.pricing import fit_prices
from ray_conductor.data.splits import select
from ray_conductor.data.table import COLUMNS, ImportReport, conform
from ray_conductor.errors import DataError, PoolError
from ray_conductor.verify.answers import (
    answers_match, comparable, extract_answer, reference_answer)
from ray_conductor.verify.checkers import extract_choice
from ray_conductor.workers.base import Completion, Message, WorkerInfo, failed


@dataclass(frozen=True)
class Query:
    """One question, as every layer sees it: rollouts, evaluation, serving, retraining."""

    query_id: str
    query: str
    task: str = ""
    reference: str = ""  # the gold answer (the most common among the rows); "" for labels
    answer_format: str = "mc"  # "mc" | "number" | "math" | "code" | "label"

    @property
    def question(self) -> str:
        """The executor's word for the same text."""
        return self.query


@dataclass(frozen=True)
class Record:
    model: str
    response: str | None  # None: a hole, the model never answered
    correct: bool | None
    input_tokens: int
    output_tokens: int
    cost: float
    cost_source: str
    answer: str | None = None  # the extracted answer (MMLU-Pro: the publisher's letter)


class Matrix(NamedTuple):
    """correct[q, m] (holes and unlabeled = False) and cost[q, m] for baselines."""

    correct: np.ndarray
    cost: np.ndarray


def _canonical(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Batches with the canonical columns, whatever older or foreign batches lack."""
    for batch in batches:
        if batch.schema.names == COLUMNS:
            yield batch
        else:
            yield from conform(batch).to_batches()


class ReplayData:
    """A canonical table indexed for O(1) lookups by query id, (query, model) and query text."""

    def __init__(self, table: pa.Table | Iterable[pa.RecordBatch],
                 report: ImportReport | None = None, test_fraction: float = 0.2):
        self.report = report
        self.test_fraction = test_fraction
        self._queries: dict[str, Query] = {}
        self._records: dict[tuple[str, str], Record] = {}
        self._labels: dict[str, dict[str, bool]] = {}  # label, code: response text -> correct
        self._recorded: dict[str, dict[str, str | None]] = {}  # number, math: text -> answer
        self._gold: dict[str, str | None] = {}  # comparable formats: the canonical reference
        self._by_text: dict[str, str] = {}
        self._splits: dict[str, list[Query]] = {}
        if isinstance(table, pa.Table):
            table = conform(table).to_batches(max_chunksize=32768)
        self.models = self._index(table)
        self._infos, self._coverage = self._fit_workers()

    def _index(self, batches: Iterable[pa.RecordBatch]) -> list[str]:
        models: dict[str, None] = {}
        refs: dict[str, Counter[str]] = {}
        first: dict[str, tuple[str, str, str]] = {}
        for batch in _canonical(batches):
            cols = [batch.column(c).to_pylist() for c in COLUMNS]
            for qid, query, task, fmt, ref, model, resp, ans, ok, tin, tout, cost, src in zip(
                    *cols):
                models.setdefault(model, None)
                first.setdefault(qid, (query, task, fmt))
                refs.setdefault(qid, Counter())[ref] += resp is not None
                self._records[(qid, model)] = Record(model, resp, ok, tin, tout, cost, src, ans)
                if resp is not None:
                    self._remember(qid, fmt, resp, ok, ans)
        for qid, (query, task, fmt) in first.items():
            ref = refs[qid].most_common(1)[0][0]
            self._queries[qid] = Query(qid, query, task, ref, fmt)
            self._by_text.setdefault(query, qid)
            if comparable(fmt):
                self._gold[qid] = reference_answer(ref, fmt)
        return list(models)

    def answer_digests(self) -> dict[str, str]:
        """model -> a digest of its recording here (each question's id, response and
        extracted answer): equal for two pools holding the same recording of it, whatever
        else they hold or their files are called. One pass over the rows."""
        import hashlib

        rows: dict[str, list[tuple[str, str, str]]] = {}
        for (qid, model), r in self._records.items():
            rows.setdefault(model, []).append((qid, r.response or "", r.answer or ""))
        out = {}
        for model, got in rows.items():
            h = hashlib.sha256()
            for row in sorted(got):
                h.update("\x1f".join(row).encode("utf-8", "replace") + b"\x1e")
            out[model] = h.hexdigest()[:16]
        return out

    def _remember(self, qid: str, fmt: str, resp: str, ok: bool | None, ans: str | None) -> None:
        """What the judge needs of a recorded answer: its verdict (label, code: nothing else
        can judge the text) or its recorded extracted answer (number, math)."""
        if fmt in ("label", "code"):
            seen = self._labels.setdefault(qid, {})
            seen[resp.strip()] = seen.get(resp.strip(), False) or bool(ok)
        elif fmt in ("number", "math"):
            self._recorded.setdefault(qid, {}).setdefault(resp.strip(), ans)

    def queries(self, split: str = "all") -> list[Query]:
        """The split's queries in table order (the split is a hash of the query id)."""
        if split not in self._splits:
            keep = select(split, self.test_fraction)
            self._splits[split] = [q for q in self._queries.values() if keep(q.query_id)]
        return self._splits[split]

    def query(self, query_id: str) -> Query | None:
        return self._queries.get(query_id)

    def find(self, query_id: str | None, question: str | None = None) -> Query | None:
        """By id, else by the exact query text (for callers that only have the question)."""
        q = self._queries.get(query_id) if query_id is not None else None
        if q is None and question is not None and question in self._by_text:
            q = self._queries[self._by_text[question]]
        return q

    def record(self, query_id: str, model: str) -> Record | None:
        """The (query, model) row, holes included (`response is None`); None if no such row."""
        return self._records.get((query_id, model))

    def judge(self, query_id: str, text: str) -> bool:
        """MC: the letter MMLU-Pro's extractor finds equals the reference. Number, math: the
        answer (the recorded one when `text` is a recorded response, else extracted from it)
        equals the reference in canonical form (`verify.answers`: 0.5 and \\frac{1}{2} agree).
        Label, code: the text is a recorded response to this query whose recording was
        judged correct (code was judged in the sandbox when it was recorded)."""
        q = self._queries.get(query_id)
        if q is None:
            raise DataError(f"cannot judge unknown query {query_id!r}: not in this pool")
        fmt, text = q.answer_format, text or ""
        if fmt == "mc":
            got = extract_choice(text)
            return got is not None and got == self._gold.get(query_id)
        if fmt in ("label", "code"):
            return self._labels.get(query_id, {}).get(text.strip(), False)
        if fmt in ("number", "math"):
            known = self._recorded.get(query_id, {})
            key = text.strip()
            answer = known[key] if key in known else extract_answer(text, fmt)
            return answers_match(answer, self._gold.get(query_id), fmt)
        return False

    def matrix(self, split: str = "all") -> Matrix:
        """correct[q, m] and cost[q, m], rows in `queries(split)` order, columns in `models`."""
        qs = self.queries(split)
        correct = np.zeros((len(qs), len(self.models)), dtype=bool)
        cost = np.zeros((len(qs), len(self.models)), dtype=np.float64)
        for i, q in enumerate(qs):
            for j, m in enumerate(self.models):
                r = self._records.get((q.query_id, m))
                if r is not None:
                    correct[i, j], cost[i, j] = bool(r.correct), r.cost
        return Matrix(correct, cost)

    def answers(self, split: str = "all") -> np.ndarray:
        """answer[q, m], aligned with `matrix(split)`: each recorded answer's extracted form
        (an MMLU-Pro letter, a canonical number or MATH answer), None for holes, unextracted
        answers and label or code sources. For votes and agreement computed from the data
        rather than re-parsed from the texts."""
        qs = self.queries(split)
        out = np.full((len(qs), len(self.models)), None, dtype=object)
        for i, q in enumerate(qs):
            for j, m in enumerate(self.models):
                r = self._records.get((q.query_id, m))
                if r is not None:
                    out[i, j] = r.answer
        return out

    def worker_infos(self) -> list[WorkerInfo]:
        """The workers as the conductor sees them: name and fitted prices. No description:
        provenance ("recorded answers") tells the conductor nothing and costs prompt tokens."""
        return list(self._infos)

    def coverage(self) -> dict[str, dict[str, Any]]:
        """Per model: how many queries have a recorded answer, of how many, and where the
        costs came from (recorded, litellm, price_table)."""
        return dict(self._coverage)

    def _fit_workers(self) -> tuple[list[WorkerInfo], dict[str, dict[str, Any]]]:
        """Per model: mean $/1M in/out, fitted to its rows' tokens and costs (exact where the
        costs were priced per token; an estimate where they were recorded), and coverage."""
        n = len(self._queries)
        answered: dict[str, list[Record]] = {m: [] for m in self.models}
        for r in self._records.values():
            if r.response is not None:
                answered[r.model].append(r)
        infos, coverage = [], {}
        for m, rows in answered.items():
            pin, pout = fit_prices(np.array([r.input_tokens for r in rows]),
                                   np.array([r.output_tokens for r in rows]),
                                   np.array([r.cost for r in rows]))
            src = rows[0].cost_source if rows else "none"
            infos.append(WorkerInfo(m, "", round(pin, 6), round(pout, 6)))
            coverage[m] = {"answered": len(rows), "queries": n, "cost_source": src}
        return infos, coverage


class ReplayPool:
    """A `WorkerPool` that answers each call with the recorded answer to the call's query.

    The query comes from `params["metadata"]["query_id"]` (the executor sends it), else from an
    exact match of `metadata["question"]`. Unknown queries and holes are failed completions."""

    def __init__(self, data: ReplayData, latency_s: float = 0.0):
        self.data = data
        self.latency_s = latency_s
        self._names = set(data.models)

    def workers(self) -> list[WorkerInfo]:
        return self.data.worker_infos()

    async def complete(self, worker: str, messages: list[Message], **params: Any) -> Completion:
        if worker not in self._names:
            raise PoolError(f"unknown worker {worker!r}: this replay pool has {self.data.models}")
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        meta = params.get("metadata") or {}
        q = self.data.find(meta.get("query_id"), meta.get("question"))
        if q is None:
            what = meta.get("query_id") or repr(str(meta.get("question") or "")[:60])
            return failed(worker, f"{worker} has no recording for query {what}: not in this pool",
                          "unknown_query", latency_s=self.latency_s)
        r = self.data.record(q.query_id, worker)
        if r is None or r.response is None:
            return failed(worker, f"{worker} has no recorded answer to query {q.query_id}",
                          "missing_answer", latency_s=self.latency_s,
                          meta={"query_id": q.query_id})
        return Completion(worker=worker, text=r.response, input_tokens=r.input_tokens,
                          output_tokens=r.output_tokens, cost=r.cost, latency_s=self.latency_s,
                          meta={"query_id": q.query_id, "replay": True, "answer": r.answer})
