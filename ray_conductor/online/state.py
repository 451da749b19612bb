"""What the online loop remembers between rounds and between processes (`state.json` in the
state directory, replaced atomically): the rewarded requests already counted, the replay
buffer and held-back slice (question keys, newest last), the last training time, the
dollar penalty fixed at the first round, and the promotion under watch."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ray_conductor.errors import ConfigError

STATE_FILE = "state.json"


@dataclass
class Watch:
    """A promotion whose live reward is watched: `version` (a registry number) replaced
    `previous` at `since` (epoch seconds); tags are what the traffic log records."""

    version: int
    tag: str
    previous: int
    previous_tag: str
    since: float


@dataclass
class LoopState:
    consumed: list[str] = field(default_factory=list)  # request ids counted by a trigger
    buffer: list[str] = field(default_factory=list)  # training question keys
    held: list[str] = field(default_factory=list)  # held-back question keys
    last_train: float | None = None
    cost_penalty: float | None = None
    watch: Watch | None = None
    rounds: int = 0
    started: float | None = None

    @classmethod
    def load(cls, root: Path) -> "LoopState":
        path = root / STATE_FILE
        if not path.is_file():
            return cls()
        try:
            d = json.loads(path.read_text())
            watch = d.pop("watch", None)
            return cls(**d, watch=Watch(**watch) if watch else None)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"{path}: unreadable online state ({type(e).__name__}: "
                              f"{str(e)[:100]}); move it away to start afresh") from None

    def save(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{STATE_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, root / STATE_FILE)


def remember(keys: list[str], new: list[str], cap: int) -> list[str]:
    """`keys` with `new` moved to the end (newest last), at most `cap` of them."""
    fresh = set(new)
    out = [k for k in keys if k not in fresh] + list(dict.fromkeys(new))
    return out[-cap:] if cap > 0 else []

