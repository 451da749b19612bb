"""Which questions replay workers can answer: the recorded questions of the replay pool, by
exact text and by query id, and the one error a caller gets for any other question. Pure: no
Ray. Reads only the question columns of the pool's stored table, not every recorded answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ray_conductor.errors import ServeError

UNRECORDED = (
    "replay workers answer only the questions recorded in pool {pool!r} ({n} questions; this "
    "one is not among them, send one of them word for word or name it with "
    "metadata.query_id). To answer any question, configure live workers: `ray-conductor serve "
    "workers=FILE` (see configs/workers_example.yaml; offline, the local SmolLM2 server "
    "`python -m ray_conductor.localllm.server --port 8001` with a worker `model: "
    "openai/smollm2, api_base: http://127.0.0.1:8001/v1`)")


class QuestionIndex:
    """Recorded questions: exact text -> (query id, answer format), and query id -> format."""

    def __init__(self, pool: str, rows: Iterable[tuple[str, str, str]]):
        self.pool = pool
        self._by_text: dict[str, tuple[str, str]] = {}
        self._by_id: dict[str, str] = {}
        for qid, text, fmt in rows:
            if qid not in self._by_id:
                self._by_id[qid] = fmt
                self._by_text.setdefault(text, (qid, fmt))
                self._by_text.setdefault(text.strip(), (qid, fmt))

    def __len__(self) -> int:
        return len(self._by_id)

    @classmethod
    def from_data(cls, pool: str, data: Any) -> QuestionIndex:
        """From a loaded `ReplayData`."""
        return cls(pool, ((q.query_id, q.query, q.answer_format) for q in data.queries("all")))

    @classmethod
    def from_pool(cls, pool: str, data_dir: str | None = None) -> QuestionIndex:
        """From the pool's stored Parquet table (three columns only); the whole pool when it
        has not been imported yet."""
        import pyarrow.parquet as pq

        from ray_conductor.data.pools import load_pool, stored_path

        path = stored_path(pool, data_dir)
        if path is None or not path.is_file():
            return cls.from_data(pool, load_pool(pool, data_dir))
        cols = ["query_id", "query", "answer_format"]
        t = pq.read_table(path, columns=cols)
        return cls(pool, zip(*(t.column(c).to_pylist() for c in cols)))

    def find(self, query_id: str | None, question: str) -> tuple[str, str] | None:
        """(query id, answer format) of a recorded question, by id first, else by text."""
        if query_id is not None and query_id in self._by_id:
            return query_id, self._by_id[query_id]
        return self._by_text.get(question) or self._by_text.get(question.strip())

    def unrecorded(self) -> ServeError:
        return ServeError(UNRECORDED.format(pool=self.pool, n=len(self)), 400,
                          code="unrecorded_question", param="messages")
