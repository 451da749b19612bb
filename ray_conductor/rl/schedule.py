"""When rollouts run relative to updates: synchronously (sample iteration k, then update on
it) or overlapped (the samplers already generate iteration k+1, ..., k+bound while the
learners update on k), with a staleness bound.

`rollouts` is a generator over (iteration, batch). Launching iteration j asks the samplers
for weights of at least version `version0 + max(0, j - start - bound)` (each iteration adds
one version), so when batch j is trained on, its samples are at most `bound` updates old.
bound=0 is the synchronous loop. No Ray here: `submit` and `collect` are the caller's.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator


def min_version(j: int, *, start: int, version0: int, bound: int) -> int:
    """The oldest weights iteration j may be sampled with."""
    return version0 + max(0, j - start - bound)


def rollouts(submit: Callable[[int, int], Any], collect: Callable[[Any], list], start: int,
             stop: int, *, version0: int = 0, bound: int = 0) -> Iterator[tuple[int, list]]:
    """Yield (iteration, batch) for start..stop-1. `submit(j, min_version)` starts iteration
    j's rollout and returns a handle; `collect(handle)` waits for its trajectories. The
    caller updates (one version per iteration) and syncs between two yields."""
    if bound < 0:
        raise ValueError(f"staleness bound must be >= 0, got {bound}")
    pending: deque = deque()
    nxt = start
    for it in range(start, stop):
        while nxt < stop and nxt <= it + bound:
            pending.append(submit(nxt, min_version(nxt, start=start, version0=version0,
                                                   bound=bound)))
            nxt += 1
        yield it, collect(pending.popleft())
