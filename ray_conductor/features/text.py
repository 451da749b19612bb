"""Which part of a prompt tells questions apart. The encoder reads ~128 tokens, so a pool whose
prompts open with the same system prompt or few-shot examples embeds every question to the
same vector. `QuestionFeaturizer.fit` learns, from a reference set (a pool's train split),
the openings and endings that many of its prompts share; `transform` keeps the last user turn
without them, and its head and tail when that is still long. The fitted featurizer is plain
data (`to_dict`), so a router applies the same cut to one served question as to its train set.
"""

from __future__ import annotations

import ast
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ray_conductor.errors import ConfigError

Question = str | Sequence[dict[str, Any]]  # a prompt, or chat messages
GAP = " … "  # between head and tail


def _content(m: dict[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, list):  # OpenAI text parts
        return "".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return "" if c is None else str(c)


def _from_messages(turns: Sequence[Any]) -> str | None:
    """The last user turn of chat messages (dicts with a role) or of a list of plain turns."""
    if turns and all(isinstance(t, dict) and "role" in t for t in turns):
        users = [t for t in turns if t.get("role") == "user"] or list(turns)
        return _content(users[-1])
    if turns and all(isinstance(t, str) for t in turns):
        return turns[-1]
    return None


def last_user_turn(q: Question) -> str:
    """The turn that asks: chat messages give their last user message; a prompt stored as a
    Python-literal list of turns (RouterBench) gives its last turn; any other text is kept."""
    if not isinstance(q, str):
        return _from_messages(list(q)) or ""
    text = q.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            turns = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return q
        if isinstance(turns, list):
            return _from_messages(turns) or q
    return q


def _word_start(text: str, n: int) -> int:
    """`n`, moved back to just after the last whitespace in text[:n], so that the distinct
    part starts at a whole word ("Question: Wh|ich" -> "Question: |Which")."""
    if n >= len(text) or text[n - 1].isspace():
        return n
    cut = max(text.rfind(c, 0, n) for c in " \n\t")
    return cut + 1 if cut >= 0 else 0


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n  # binary search on slices: C speed on long few-shot prompts
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def shared_openings(texts: Iterable[str], min_count: int = 3, min_chars: int = 32) -> list[str]:
    """Openings of at least `min_chars` characters that at least `min_count` distinct texts
    share, longest first. One template or system prompt gives one opening; a pool mixing
    sources gives one per source (and the header they all share); texts that share their
    opening with fewer than `min_count` others (outliers) add none and shorten none.
    An opening that extends a shorter one by less than that one's own length is dropped:
    those are questions of one template that start alike ("Which of the following"), and the
    words belong to the questions.

    Sorted, the texts sharing a prefix are neighbours, and the prefix that a run of
    neighbours shares is the smallest common prefix of the adjacent pairs in it."""
    s = sorted(set(texts))
    k = max(2, min_count)
    if len(s) < k:
        return []
    lcp = np.array([_common_prefix(a, b) for a, b in zip(s, s[1:])])
    runs = np.lib.stride_tricks.sliding_window_view(lcp, k - 1).min(axis=1)  # k texts each
    found = {s[j][:_word_start(s[j], int(n))] for j, n in enumerate(runs) if n >= min_chars}
    kept: list[str] = []
    for o in sorted(found, key=len):
        if len(o) >= min_chars and not any(o.startswith(p) and len(o) < 2 * len(p)
                                           for p in kept):
            kept.append(o)
    return sorted(kept, key=len, reverse=True)


def shared_endings(texts: Iterable[str], min_count: int = 3, min_chars: int = 32) -> list[str]:
    """The same for endings (an instruction appended to every prompt)."""
    return [o[::-1] for o in shared_openings((t[::-1] for t in texts), min_count, min_chars)]


@dataclass(frozen=True)
class QuestionFeaturizer:
    """The part of a question worth embedding. Unfitted (no openings), it keeps the last user
    turn, with head and tail when long."""

    openings: tuple[str, ...] = ()
    endings: tuple[str, ...] = ()
    head_chars: int = 360  # ~90 tokens: where a question says what it is about
    tail_chars: int = 200  # ~50 tokens: where a long prompt asks its question
    fitted_on: int = 0  # distinct texts the openings were learned from
    version: int = field(default=1, repr=False)

    @classmethod
    def fit(cls, texts: Iterable[Question], *, share: float = 0.01, min_count: int = 3,
            min_chars: int = 32, sample: int = 2000, seed: int = 0,
            **kw: Any) -> "QuestionFeaturizer":
        """Learn the openings and endings that at least `share` of a sample of `texts` (and
        at least `min_count` of them) have in common."""
        distinct = sorted(set(last_user_turn(t) for t in texts))
        if len(distinct) > sample:
            distinct = random.Random(seed).sample(distinct, sample)
        k = max(min_count, math.ceil(share * len(distinct)))
        return cls(tuple(shared_openings(distinct, k, min_chars)),
                   tuple(shared_endings(distinct, k, min_chars)), fitted_on=len(distinct), **kw)

    def transform_one(self, q: Question) -> str:
        text = last_user_turn(q)
        rest = text
        for o in self.openings:  # longest first
            if rest.startswith(o) and rest[len(o):].strip():
                rest = rest[len(o):]
                break
        for e in self.endings:
            if rest.endswith(e) and rest[:-len(e)].strip():
                rest = rest[:-len(e)]
                break
        rest = rest.strip() or text.strip()
        if len(rest) > self.head_chars + self.tail_chars + len(GAP):
            rest = rest[:self.head_chars].rstrip() + GAP + rest[-self.tail_chars:].lstrip()
        return rest

    def transform(self, texts: Iterable[Question]) -> list[str]:
        return [self.transform_one(q) for q in texts]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["openings"], d["endings"] = list(self.openings), list(self.endings)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuestionFeaturizer":
        if not isinstance(d, dict) or d.get("version", 1) != 1:
            raise ConfigError("not a saved QuestionFeaturizer (expected a dict with version 1 "
                              "from QuestionFeaturizer.to_dict); refit it on the train split")
        known = {k: d[k] for k in ("head_chars", "tail_chars", "fitted_on") if k in d}
        try:
            return cls(tuple(map(str, d.get("openings", ()))),
                       tuple(map(str, d.get("endings", ()))), **{k: int(v) for k, v in
                                                                 known.items()})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"a saved QuestionFeaturizer has a bad field: {e}") from None

    def describe(self) -> str:
        lens = [len(o) for o in self.openings]
        return (f"{len(lens)} shared opening(s) of {min(lens, default=0)}-{max(lens, default=0)}"
                f" chars and {len(self.endings)} ending(s), from {self.fitted_on} texts")

