"""Rewards of logged requests, and how every worker's answer to a logged question is judged.

A row's live reward, in this order: a posted feedback `reward` as given; else a posted
`label` judged against the served answer; else a verifier (for a replay pool's recorded
question, the pool's own judge), the last two scored as lite training scores an episode:
`correct - cost_penalty * dollars`. Rows with none of the three carry no reward.

Retraining needs more than the served answer's reward: it judges every worker's answer to
the question (`Judge`), by the label, else the verifier, else, for a comparable answer
format, a served answer whose posted reward says it was right (reward >= `correct_threshold`
makes its extracted answer the label). A row that none of these can judge still counts as
live reward, but teaches nothing. Pure: pandas rows in, dataclasses out.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Protocol

from ray_conductor.data.splits import unit_hash
from ray_conductor.errors import ConfigError
from ray_conductor.verify.answers import (
    answers_match, comparable, extract_answer, reference_answer)

FEEDBACK, LABEL, VERIFIER = "feedback", "label", "verifier"


class Verifier(Protocol):
    """What a replay pool (`ReplayData`) offers: find a recorded question, judge a text."""

    def find(self, query_id: str | None, question: str | None = None) -> Any: ...

    def judge(self, query_id: str, text: str) -> bool: ...


@dataclass(frozen=True)
class Judge:
    """How any answer to one question is judged: against `reference` (a label, or the
    served answer a positive reward confirmed), or by the verifier for `query_id`."""

    kind: str  # "label" | "reward" | "verifier"
    answer_format: str
    reference: str | None = None
    query_id: str | None = None

    @property
    def key(self) -> str:
        """Identifies the judgement, so cached judgements are reused only under it."""
        return f"{self.kind}:{self.reference if self.reference is not None else self.query_id}"

    def __call__(self, text: str | None, verifier: Verifier | None = None) -> bool:
        if not text:
            return False
        if self.kind == VERIFIER:
            if verifier is None or self.query_id is None:
                raise ValueError("a verifier judgement needs the verifier and a query id")
            return bool(verifier.judge(self.query_id, text))
        got = canonical(text, self.answer_format, whole=False)
        if not comparable(self.answer_format):
            return got == self.reference
        return answers_match(got, self.reference, self.answer_format)


def canonical(text: str, answer_format: str, whole: bool = True) -> str | None:
    """An answer's comparable form: a label as given ("B", "(b)", "The answer is (B)", "1/2"
    for a number) or an answer extracted from a worker's text (`whole=False`); for formats
    without comparable answers, the text itself, case and spacing folded."""
    s = " ".join(str(text).split())
    if not comparable(answer_format):
        return s.casefold() or None
    if whole:
        return reference_answer(s, answer_format) or (s if answer_format != "mc" else None)
    return extract_answer(s, answer_format)


def query_key(query_id: str | None, question: str | None) -> str:
    """One key per question: its recorded id, else a hash of its text."""
    if query_id:
        return f"id:{query_id}"
    return "text:" + hashlib.sha256((question or "").encode()).hexdigest()[:20]


def held_back(key: str, fraction: float, salt: str = "online-holdout") -> bool:
    """Whether a question is in the held-back evaluation slice (never trained on)."""
    return unit_hash(f"{salt}/{key}") < fraction


@dataclass(frozen=True)
class LoggedRow:
    """A served request with a reward."""

    request_id: str
    time: float  # epoch seconds
    model: str
    version: str
    question: str
    query_id: str | None
    key: str
    answer: str
    cost: float
    reward: float
    source: str  # feedback | label | verifier
    judge: Judge | None  # None: no way to judge other answers to it (live reward only)
    served: tuple["ServedCell", ...] = ()  # what its workflow's workers answered (the trace)


@dataclass(frozen=True)
class ServedCell:
    """One worker's answer to the question itself, as serving paid for it (a trace step that
    saw only the question, with the router's subtask: what a re-roll would ask)."""

    worker: str
    text: str
    answer: str | None  # the extracted comparable answer the step recorded
    cost: float
    input_tokens: int
    output_tokens: int
    ok: bool  # a text came back
    error_code: str | None = None


def served_cells(trace: Any) -> tuple[ServedCell, ...]:
    """The (question, worker) cells of a logged trace (JSON text or dict): each worker's
    first step that saw only the question under the router's subtask; program steps
    (votes), skipped steps and steps that read other outputs are not such cells."""
    import json

    from ray_conductor.workflow.model import ROUTER_SUBTASK

    if isinstance(trace, str):
        try:
            trace = json.loads(trace)
        except ValueError:
            return ()
    if not isinstance(trace, dict):
        return ()
    out: dict[str, ServedCell] = {}
    for s in trace.get("steps") or []:
        if not isinstance(s, dict) or s.get("program") or s.get("skipped") or s.get("access") \
                or s.get("subtask") != ROUTER_SUBTASK or not s.get("worker"):
            continue
        w = str(s["worker"])
        if w not in out:
            out[w] = ServedCell(w, str(s.get("text") or ""), s.get("answer"),
                                float(s.get("cost") or 0.0), int(s.get("input_tokens") or 0),
                                int(s.get("output_tokens") or 0), s.get("error") is None,
                                s.get("error_code"))
    return tuple(out.values())


def _value(x: Any) -> Any:
    """None for pandas' missing values (NaN, NaT, None)."""
    if x is None:
        return None
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def _epoch(t: Any) -> float:
    return float(t.timestamp()) if hasattr(t, "timestamp") else float(t)


def rewarded_rows(df: Any, *, cost_penalty: float, verifier: Verifier | None = None,
                  models: Any = None, correct_threshold: float = 0.5,
                  answer_format: str = "mc",
                  reward_range: tuple[float, float] | None = None,
                  ignored: list[str] | None = None) -> list[LoggedRow]:
    """The answered requests (status 200) of `models` (None: every model) that carry a reward,
    oldest first. `answer_format`: for questions the verifier does not know.
    `reward_range`: a posted reward outside it (or not finite) is ignored, as if none had
    been posted (a label or the verifier may still judge the row); the request ids whose
    reward was ignored are appended to `ignored`."""
    out = []
    wanted = set(models) if models else None
    for r in df.to_dict("records"):
        if r.get("status") != 200 or _value(r.get("answer")) is None:
            continue
        if wanted is not None and r.get("model") not in wanted:
            continue
        reward = _value(r.get("reward"))
        if reward is not None and reward_range is not None and not (
                reward_range[0] <= float(reward) <= reward_range[1]):
            r = {**r, "reward": None}
            if ignored is not None:
                ignored.append(str(r.get("request_id")))
        row = _row(r, cost_penalty, verifier, correct_threshold, answer_format)
        if row is not None:
            out.append(row)
    return out


def _row(r: dict[str, Any], penalty: float, verifier: Verifier | None, threshold: float,
         default_format: str) -> LoggedRow | None:
    qid, question = _value(r.get("query_id")), r.get("question") or ""
    recorded = verifier.find(qid, question) if verifier is not None else None
    fmt = recorded.answer_format if recorded is not None else default_format
    reward, label = _value(r.get("reward")), _value(r.get("label"))
    answer, cost = str(r["answer"]), float(_value(r.get("cost")) or 0.0)
    judge, ref = None, canonical(label, fmt) if label is not None else None
    if ref is not None:  # a label no answer can match (no letter in it) judges nothing
        judge = Judge(LABEL, fmt, reference=ref)
    elif recorded is not None:
        judge = Judge(VERIFIER, fmt, query_id=recorded.query_id)
    elif reward is not None and reward >= threshold and comparable(fmt):
        served = canonical(answer, fmt, whole=False)
        judge = Judge("reward", fmt, reference=served) if served is not None else None
    if reward is not None:
        live, source = float(reward), FEEDBACK
    elif judge is not None and judge.kind in (LABEL, VERIFIER):
        correct = judge(answer, verifier)
        live, source = float(correct) - penalty * cost, judge.kind
    else:
        return None
    if recorded is not None:
        qid = recorded.query_id
    return LoggedRow(r["request_id"], _epoch(r["time"]), str(r.get("model")),
                     str(_value(r.get("policy_version")) or ""), question, qid,
                     query_key(qid, question), answer, cost, live, source, judge,
                     served_cells(_value(r.get("trace"))) if judge is not None else ())


def reward_range(feedback: Any, app: Any) -> tuple[float, float]:
    """The range of posted rewards taken as given: `feedback.reward_min/max`, else the app's
    `feedback_reward_range`, else [-1, 1]."""
    fb, (lo, hi) = feedback, (-1.0, 1.0)
    if fb.reward_min is None or fb.reward_max is None:
        try:
            lo, hi = (float(x) for x in app.config().feedback_reward_range)
        except (AttributeError, ConfigError, TypeError, ValueError):
            pass  # an app (or stand-in) without the setting
    return (lo if fb.reward_min is None else fb.reward_min,
            hi if fb.reward_max is None else fb.reward_max)
