"""Train/test split by a hash of the query id.

Hashing the id (not shuffling rows) keeps a query on the same side of the split whatever files
were imported, in whatever order, on whatever machine: no seed to carry around, no leakage when
a table is re-imported with more models.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from ray_conductor.errors import DataError

SPLITS = ("train", "test", "all")


def unit_hash(key: str) -> float:
    """A stable number in [0, 1) from the first 8 bytes of sha256(key)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def split_of(query_id: str, test_fraction: float = 0.2) -> str:
    """"test" for about `test_fraction` of query ids, "train" for the rest."""
    return "test" if unit_hash(query_id) < test_fraction else "train"


def select(split: str, test_fraction: float = 0.2) -> Callable[[str], bool]:
    """A predicate on query ids for "train", "test" or "all"."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}",
                        code="bad_split")
    if split == "all":
        return lambda _qid: True
    return lambda qid: split_of(qid, test_fraction) == split
