"""Which questions a command works on: a split, in query-id order, optionally the first N.
The one helper training, evaluation, benchmarks and serving demos share, so the same
arguments always mean the same questions."""

from __future__ import annotations

from typing import Any

from ray_conductor.errors import ConfigError


def select_queries(data: Any, split: str = "all", limit: int | None = None) -> list[Any]:
    """The `split` of `data` (a `ReplayData`) sorted by query id; the first `limit` when set.
    An empty selection is a `ConfigError` naming the pool's split sizes."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit}: use a positive number of questions, or null for all")
    qs = sorted(data.queries(split), key=lambda q: q.query_id)
    if not qs:
        sizes = {s: len(data.queries(s)) for s in ("train", "test")}
        raise ConfigError(f"split={split!r} of this pool has no questions (train: "
                          f"{sizes['train']}, test: {sizes['test']}); pick another split")
    return qs[:limit] if limit else qs
