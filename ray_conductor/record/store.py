"""The answers `record` has paid for, and what the rest would cost.

`AnswerStore` keeps one JSON line per answer, appended and flushed as each arrives, so an
interrupted run loses only the calls in flight and a re-run asks only what is missing. An
answer's key is the question (a hash of what the worker sees), the worker and its call
fingerprint (the worker's config, as the proxies fingerprint it, and the sampling
parameters): change any of them and the question is asked again. A failed call is kept only
when a second call would fail the same way (a 400, a 404, a recorded hole); a passing fault
(a timeout, a 5xx after the proxy's retries) is asked again by the next run. The last line
for a key wins (a code verdict is added later), and a torn last line (a crash mid-write) is
skipped when the file is read.

`Pricer` is the dollar estimate made before the first call: prompt tokens (counted as
`data.pricing` counts) times the worker's input price, plus an assumed number of output tokens
(by default the call's `max_tokens`, an upper bound) times its output price.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from ray_conductor.data import pricing
from ray_conductor.errors import DataError
from ray_conductor.record.questions import RecordQuestion
from ray_conductor.workers.base import Completion, Message, permanent_failure


@dataclass
class RecordedAnswer:
    """One worker's answer to one question (`text` None: the call failed)."""

    text: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    error: str | None = None
    error_code: str | None = None
    settled: bool = True  # an answer, or a failure a second call would repeat
    verdict: dict[str, Any] | None = None  # code: {"tests": sha, "correct": bool}

    @classmethod
    def of(cls, c: Completion, worker: str) -> "RecordedAnswer":
        """A call's outcome. An answer a fallback gave is not `worker`'s: a failure, asked
        again next run (when `worker` may be back)."""
        if c.error is None and c.served_by not in (None, worker):
            return cls(None, int(c.input_tokens), int(c.output_tokens), float(c.cost),
                       f"answered by its fallback {c.served_by!r}, not by {worker!r}",
                       "served_by_fallback", False)
        ok = c.error is None
        return cls(c.text if ok else None, int(c.input_tokens), int(c.output_tokens),
                   float(c.cost), c.error, c.error_code, ok or permanent_failure(c))


def call_fingerprint(worker_fingerprint: str, params: Mapping[str, Any]) -> str:
    """The worker's config fingerprint and the sampling parameters, hashed."""
    d = {"worker": worker_fingerprint, "params": dict(params)}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def answer_key(q: RecordQuestion, worker: str, fingerprint: str) -> str:
    return f"{q.key}|{worker}|{fingerprint}"


class AnswerStore:
    """Settled answers by key, in memory and appended to a JSONL file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._d: dict[str, RecordedAnswer] = {}
        self.torn = 0  # lines that could not be read (a crash mid-write)
        if self.path.is_dir():
            raise DataError(f"cache={self.path} is a directory: give a file path (JSONL)")
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        known = {f.name for f in fields(RecordedAnswer)}
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as e:
            raise DataError(f"cache={self.path}: cannot read it ({e.strerror or e}); fix its "
                            f"permissions or give another cache=") from None
        for line in lines:
            try:
                row = json.loads(line)
                self._d[str(row["k"])] = RecordedAnswer(**{k: v for k, v in row["a"].items()
                                                   if k in known})
            except (ValueError, KeyError, TypeError, AttributeError):
                self.torn += 1

    def get(self, key: str) -> RecordedAnswer | None:
        return self._d.get(key)

    def put(self, key: str, answer: RecordedAnswer) -> None:
        """Keep `answer` (settled ones only) and append it to the file, flushed."""
        if not answer.settled:
            return
        self._d[key] = answer
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"k": key, "a": asdict(answer)}) + "\n")
            f.flush()

    def __len__(self) -> int:
        return len(self._d)


@dataclass
class Estimate:
    """What the calls still to make would cost, at most (with the output assumption)."""

    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    prompt_dollars: float = 0.0
    output_dollars: float = 0.0
    unpriced: list[str] = field(default_factory=list)  # workers nobody knows a price for

    @property
    def dollars(self) -> float:
        return self.prompt_dollars + self.output_dollars

    def line(self) -> str:
        unpriced = (f"; no price known for {self.unpriced} (not counted)"
                    if self.unpriced else "")
        return (f"estimate: {self.calls} calls to make ({self.cached} already recorded), "
                f"${self.dollars:.4f} = {self.prompt_tokens} prompt tokens "
                f"${self.prompt_dollars:.4f} + up to {self.output_tokens} output tokens "
                f"${self.output_dollars:.4f}{unpriced}")


class Pricer:
    """Upper-bound dollars of calls, from each worker's list prices ($/1M in, out; None:
    unknown) and the output tokens assumed per answer."""

    def __init__(self, prices: Mapping[str, tuple[float | None, float | None]],
                 output_tokens: int):
        self.prices, self.output_tokens = dict(prices), int(output_tokens)
        self._prompt: dict[str, int] = {}

    def prompt_tokens(self, q: RecordQuestion, messages: list[Message]) -> int:
        if q.key not in self._prompt:  # the chat format adds a few tokens per message
            self._prompt[q.key] = sum(pricing.count_tokens(m["content"]) + 4 for m in messages)
        return self._prompt[q.key]

    def known(self, worker: str) -> bool:
        return None not in self.prices.get(worker, (None, None))

    def call(self, q: RecordQuestion, worker: str, messages: list[Message]) -> float:
        """At most what one call costs (0 for a worker without a known price)."""
        pin, pout = self.prices.get(worker, (None, None))
        if pin is None or pout is None:
            return 0.0
        return (self.prompt_tokens(q, messages) * pin + self.output_tokens * pout) / 1e6

    def estimate(self, todo: Iterable[tuple[RecordQuestion, str, list[Message]]], cached: int
                 ) -> Estimate:
        est = Estimate(cached=cached)
        unpriced: set[str] = set()
        for q, worker, messages in todo:
            est.calls += 1
            tokens = self.prompt_tokens(q, messages)
            est.prompt_tokens += tokens
            est.output_tokens += self.output_tokens
            pin, pout = self.prices.get(worker, (None, None))
            if pin is None or pout is None:
                unpriced.add(worker)
                continue
            est.prompt_dollars += tokens * pin / 1e6
            est.output_dollars += self.output_tokens * pout / 1e6
        est.unpriced = sorted(unpriced)
        return est
