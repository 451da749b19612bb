"""One query's turn-by-turn state: which workers were called, what they answered, what it
cost, which actions are legal now, and the state features the policy sees.

The training environment and the live conductor both drive this class, so a served query is
observed exactly as a training episode was. Plain Python and numpy.

Actions, for a pool of W workers: 0..W-1 call that worker (each at most once, at most
`max_calls` calls); W vote (the plurality of the answers so far; needs comparable answers and
two calls; with no comparable answer, the last text there is); W+1 stop (the last call's
text; needs one call). Where answers are not comparable (label pools) a worker is called
again only after a failed call: a second answer could not be weighed against the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np

from ray_conductor.workflow.programs import plurality


MAX_CALLS = 64  # worker calls per question at most, in any policy (its state grows with it)


def n_actions(n_workers: int) -> int:
    return n_workers + 2


def state_dim(n_workers: int, max_calls: int) -> int:
    """Length of `Episode.features()`."""
    return 3 * n_workers + (max_calls + 1) + 7


@dataclass
class Episode:
    strength: Sequence[float]  # per worker: the vote's tie-break (list price)
    max_calls: int = 4
    comparable: bool = True  # answers can be voted on; False: route and stop only
    calls: list[int] = field(default_factory=list)  # worker indices, in call order
    answers: list[Hashable | None] = field(default_factory=list)  # per call; None: no answer
    costs: list[float] = field(default_factory=list)  # per call, dollars
    responded: list[bool] = field(default_factory=list)  # per call: it returned a text

    @property
    def n_workers(self) -> int:
        return len(self.strength)

    @property
    def vote_action(self) -> int:
        return self.n_workers

    @property
    def stop_action(self) -> int:
        return self.n_workers + 1

    @property
    def cost(self) -> float:
        return float(sum(self.costs))

    def legal(self) -> np.ndarray:
        """Boolean mask over the W+2 actions; at least one is always legal."""
        mask = np.zeros(n_actions(self.n_workers), dtype=bool)
        answered = not self.comparable and bool(self.responded) and self.responded[-1]
        if len(self.calls) < self.max_calls and not answered:
            mask[: self.n_workers] = True
            mask[self.calls] = False
        mask[self.vote_action] = self.comparable and len(self.calls) >= 2
        mask[self.stop_action] = len(self.calls) >= 1
        if not mask.any():  # every worker called and max_calls not reached: impossible
            mask[self.stop_action] = True
        return mask

    def record(self, worker: int, answer: Hashable | None, cost: float,
               responded: bool = True) -> None:
        """The result of calling `worker`: `responded` False when the call failed; `answer`
        None when it failed or no comparable answer could be read from its text."""
        self.calls.append(int(worker))
        self.answers.append(answer if self.comparable and responded else None)
        self.responded.append(bool(responded))
        self.costs.append(float(cost))

    def last_responded(self) -> int | None:
        return next((i for i in reversed(range(len(self.calls))) if self.responded[i]), None)

    def top(self) -> int | None:
        """Index (into `calls`) of the current plurality winner; None when nothing answered."""
        if not self.comparable:
            return None
        return plurality(self.answers, [self.strength[w] for w in self.calls])

    def final(self, action: int) -> int | None:
        """Which call's answer a terminal `action` returns (None: no answer)."""
        if action == self.vote_action:  # no comparable answer: the last text there is
            top = self.top()
            return top if top is not None else self.last_responded()
        if action == self.stop_action:
            return len(self.calls) - 1 if self.calls and self.responded[-1] else None
        raise ValueError(f"action {action} does not end an episode")

    def features(self, cost_scale: float) -> np.ndarray:
        """What the policy knows about the workflow so far (see `state_dim`)."""
        w, m = self.n_workers, self.max_calls
        called, answered, agrees = np.zeros(w), np.zeros(w), np.zeros(w)
        top_i = self.top()
        top_answer = self.answers[top_i] if top_i is not None else None
        for wk, a, ok in zip(self.calls, self.answers, self.responded):
            called[wk] = 1.0
            answered[wk] = ok
            agrees[wk] = top_answer is not None and a == top_answer
        steps = np.zeros(m + 1)
        steps[min(len(self.calls), m)] = 1.0
        valid = [a for a in self.answers if a is not None] if self.comparable else []
        top_count = sum(a == top_answer for a in valid) if top_answer is not None else 0
        last = self.answers[-1] if self.answers else None
        summary = [
            len(set(valid)) / m,
            top_count / m,
            top_count / len(valid) if valid else 0.0,
            float(top_count >= 2),
            float(last is not None and last == top_answer),
            float(bool(self.responded) and not self.responded[-1]),
            self.cost / cost_scale if cost_scale > 0 else 0.0,
        ]
        return np.concatenate([called, answered, agrees, steps, summary]).astype(np.float32)
