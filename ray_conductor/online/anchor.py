"""Anchor questions: a fixed set of known questions (a pool's train split) that every round
re-asks of the workers as they are *now* and trains on beside the traffic.

Why: after a shift the traffic has brought only a few hundred rewarded questions of the new
world, too few to retrain a policy that was fitted on thousands; but what shifted is the
workers (a price, a degraded model, a new worker), not what the known questions mean. The
answer cache is keyed by each worker's answer fingerprint, so a worker whose model,
parameters, endpoint or pool changed is asked the anchor questions again (a price change
only re-prices them) and the rest are free. With replay workers these calls are table
lookups; with live workers they are real calls, paid from the same per-row budget as the
traffic's and after it (`reroll.calls_per_row`), bounded by `training.anchor.rows`.

Anchors in the held-back slice (by the same hashed key as the traffic's) are never trained
on. With `evaluation.anchor_rows` some of them join the evaluation: the candidate is then
promoted if it is better on held-back traffic (the paired test), or better on the held-back
anchors (the same test, on many more questions of the current workers) and not worse on
held-back traffic (`verdict`: a candidate that only fits the anchors' question mix is kept
out when the traffic's mix has moved). A worker whose answers change *without* a config
change (a provider swapping models under one name) is re-asked once its served answers
show it (`drift`), or with an age limit (`reroll.max_age_hours`).

Recorded anchors (`training.anchor.recorded`, on by default): an anchor pool is a recording
(`ray-conductor record`, or the pool the serving policy was fitted on), its answers already
paid for. Each anchor row carries them as its served cells, dated 0: the re-roll reads a
served cell only if it was served after its worker's current answer fingerprint was first
seen, and a worker's first fingerprint dates from 0, so a recorded answer counts for the
worker's config the loop first saw (re-priced from its recorded tokens when only the price
moved: a price change asks nothing) and never after that worker's model, parameters,
endpoint or pool changed (then it is asked again, within the budget). A worker the recording
lacks (a new one) has no recorded cells. The assumption, stated: the recording was made with
the workers as the loop first sees them; where it was not, turn `recorded` off and the
anchors are asked of the workers.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from ray_conductor.data.splits import unit_hash
from ray_conductor.errors import ConfigError, DataError
from ray_conductor.online.rewards import (VERIFIER, Judge, LoggedRow, ServedCell, held_back,
                                         query_key)

ANCHOR = "anchor"  # the model name anchor rows carry (they were never served)


def recorded_cells(data: Any, query_id: str) -> tuple[ServedCell, ...]:
    """The pool's recorded answers to one question, as served cells (a hole: no answer)."""
    out = []
    for model in getattr(data, "models", ()):
        r = data.record(query_id, model)
        if r is None:
            continue
        ok = r.response is not None
        out.append(ServedCell(model, r.response or "", r.answer if ok else None,
                              float(r.cost or 0.0), int(r.input_tokens or 0),
                              int(r.output_tokens or 0), ok, None if ok else "missing_answer"))
    return tuple(out)


def anchor_rows(data: Any, split: str, rows: int, holdout: float, held: bool = False,
                salt: str = "online-anchor", recorded: bool = False) -> list[LoggedRow]:
    """Up to `rows` questions of `data`'s `split` (a hashed, stable sample: growing `rows`
    keeps the earlier ones), each judged by the pool: those outside the held-back slice (to
    train on), or with `held` those inside it (to evaluate on, never trained on). With
    `recorded`, each row carries the pool's recorded answers as served cells dated 0 (see
    the module's docstring)."""
    picked = []
    for q in data.queries(split):
        key = query_key(q.query_id, q.query)
        if held_back(key, holdout) != held:
            continue
        picked.append((unit_hash(f"{salt}/{q.query_id}"), q, key))
    picked.sort(key=lambda t: t[0])
    return [LoggedRow(f"{ANCHOR}:{q.query_id}", 0.0, ANCHOR, "", q.query, q.query_id, key,
                      "", 0.0, 0.0, ANCHOR, Judge(VERIFIER, q.answer_format, query_id=q.query_id),
                      recorded_cells(data, q.query_id) if recorded else ())
            for _, q, key in picked[:rows]]


class Anchors(NamedTuple):
    """The anchor pool as loaded for one config (`tag`): its data (which judges the
    questions), the questions to train on and the held-back ones to evaluate on."""

    tag: str
    data: Any
    train: list[LoggedRow]
    held: list[LoggedRow]


def load_anchors(anchor: Any, held_rows: int, holdout: float, data_dir: str | None,
                 current: Anchors | None = None) -> Anchors:
    """The anchor pool of `anchor` (`training.anchor`) with `held_rows` held-back anchors
    (`evaluation.anchor_rows`): `current` while its config is the same, else loaded again;
    a pool that cannot be loaded is a one-line `ConfigError`."""
    a = anchor
    tag = f"{a.pool}|{data_dir}|{a.split}|{a.rows}|{held_rows}|{a.recorded}"
    if current is not None and current.tag == tag:
        return current
    from ray_conductor.data.pools import load_pool

    try:
        data = load_pool(a.pool, data_dir)
    except (DataError, OSError) as e:
        raise ConfigError(f"training.anchor.pool={a.pool!r} cannot be loaded: "
                          f"{str(e).splitlines()[0][:200]}; name a pool spec such as "
                          "mmlu_pro or parquet:PATH, or leave it null") from None
    return Anchors(tag, data, anchor_rows(data, a.split, a.rows, holdout, recorded=a.recorded),
                   anchor_rows(data, a.split, held_rows, holdout, held=True,
                               recorded=a.recorded))


class Verifiers:
    """Several verifiers as one: a question is judged by the first that knows it (the app's
    own pool first: for recorded-label pools it is the current world's judge)."""

    def __init__(self, verifiers: Sequence[Any]):
        self.verifiers = [v for v in verifiers if v is not None]

    def find(self, query_id: str | None, question: str | None = None) -> Any:
        for v in self.verifiers:
            if (q := v.find(query_id, question)) is not None:
                return q
        return None

    def judge(self, query_id: str, text: str) -> bool:
        for v in self.verifiers:
            if v.find(query_id) is not None:
                return bool(v.judge(query_id, text))
        raise ValueError(f"no verifier knows question {query_id!r}")


def combined(app_verifier: Any, anchor_data: Any) -> Any:
    """The app's verifier, extended by the anchor pool when there is one."""
    if anchor_data is None:
        return app_verifier
    return Verifiers([app_verifier, anchor_data])
