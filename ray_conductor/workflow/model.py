"""`Step` and `Workflow`: the conductor's plan as plain, hashable data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Union

from ray_conductor.errors import WorkflowError

Access = Union[Literal["all"], tuple[int, ...]]
CONDITIONS = ("agree", "disagree")


ROUTER_SUBTASK = "Answer the question. End with 'The answer is (X)' for multiple choice."
"""The subtask of a router's one-step plan (baselines, the lite conductor)."""


@dataclass(frozen=True)
class Step:
    """One call: `worker` (by name) answers `subtask`, seeing the outputs named by `access`.

    `access` is "all" (every earlier step) or a tuple of earlier step indices; () sees none.
    `when` makes the step conditional: "disagree" runs it only if the answers of the steps it
    sees differ, "agree" only if they are the same; None (the default) always runs it.
    """

    worker: str
    subtask: str
    access: Access = ()
    when: str | None = None

    def __post_init__(self) -> None:
        if self.when is not None and self.when not in CONDITIONS:
            raise WorkflowError(f"step condition {self.when!r} must be 'agree' or 'disagree'",
                                code="bad_access")

    def visible(self, index: int) -> tuple[int, ...]:
        """Indices of the earlier steps whose outputs this step (at `index`) sees."""
        if self.access == "all":
            return tuple(range(index))
        return tuple(self.access)


@dataclass(frozen=True)
class Workflow:
    """An ordered list of steps; the output of the last step that ran is the answer."""

    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __getitem__(self, i: int) -> Step:
        return self.steps[i]

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(s.worker for s in self.steps)

    @classmethod
    def single(cls, worker: str, subtask: str = "Answer the question.") -> "Workflow":
        """The one-step plan every router baseline produces."""
        return cls((Step(worker, subtask, ()),))
