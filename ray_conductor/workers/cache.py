"""An LRU response cache with a time-to-live, for temperature-0 calls: the same model, messages
and sampling parameters give the same answer, so a repeat need not be paid for again. Pure.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from typing import Any, Callable, Generic, TypeVar

V = TypeVar("V")


def cache_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """A stable digest of what determines a deterministic answer."""
    blob = json.dumps([model, messages, params], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class TTLCache(Generic[V]):
    """At most `size` entries; each one expires `ttl_s` after it was stored."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.size, self.ttl_s, self._clock = size, ttl_s, clock
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, key: str) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        stored_at, value = item
        if self._clock() - stored_at >= self.ttl_s:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        self._data[key] = (self._clock(), value)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
