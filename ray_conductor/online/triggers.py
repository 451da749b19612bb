"""When to train: every `every_rows` new rewarded rows, or every `every_minutes` once at least
`min_rows` new rewarded rows came in (a quiet service still retrains, but never on a
handful of rows). Pure: the caller passes the counts and the clock."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Trigger:
    every_rows: int | None = 200
    every_minutes: float | None = 60.0
    min_rows: int = 50

    def __post_init__(self) -> None:
        if self.every_rows is None and self.every_minutes is None:
            raise ValueError("a trigger needs every_rows, every_minutes or both")

    def why(self, new_rows: int, minutes_since: float | None) -> str | None:
        """The reason to train now, or None. `minutes_since`: since the last training
        (None: never trained, counted from the start)."""
        if self.every_rows is not None and new_rows >= self.every_rows:
            return f"{new_rows} new rewarded rows (every {self.every_rows})"
        if (self.every_minutes is not None and minutes_since is not None
                and minutes_since >= self.every_minutes and new_rows >= max(1, self.min_rows)):
            return (f"{minutes_since:.1f} minutes since the last training "
                    f"(every {self.every_minutes:g}), {new_rows} new rewarded rows")
        return None
