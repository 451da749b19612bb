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
    """Recorded questions: exact text -> (query id, answer format), and query id -> (text,
    format)."""

    def __init__(self, pool: str, rows: Iterable[tuple[str, str, str]]):
        self.pool = pool
        self._by_text: dict[str, tuple[str, str]] = {}
        self._by_id: dict[str, tuple[str, str]] = {}
        for qid, text, fmt in rows:
            if qid not in self._by_id:
                self._by_id[qid] = (text, fmt)
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
        """(query id, answer format) of a recorded question, by id (whose recorded text must
        be the text sent: an id lends its recorded answers, and the log its question, to
        that text only), else by text."""
        if query_id is None:
            return self._by_text.get(question) or self._by_text.get(question.strip())
        from ray_conductor.serve.protocol import clip

        if query_id not in self._by_id:
            raise ServeError(f"metadata.query_id {clip(query_id, 100)!r} is not a recorded "
                             f"question of pool {self.pool!r}; leave it out, or name one",
                             code="unknown_query_id", param="metadata.query_id")
        text, fmt = self._by_id[query_id]
        if question != text and question.strip() != text.strip():
            raise ServeError(f"metadata.query_id {clip(query_id, 100)!r} names a recorded "
                             "question whose text is not the last user message; send that "
                             "question's text, or leave query_id out",
                             code="query_id_mismatch", param="metadata.query_id")
        return query_id, fmt

    def unrecorded(self) -> ServeError:
        return ServeError(UNRECORDED.format(pool=self.pool, n=len(self)), 400,
                          code="unrecorded_question", param="messages")
