"""What the online loop remembers between rounds and between processes (`state.json` in the
state directory, replaced atomically): the rewarded requests already counted, the replay
buffer and held-back slice (question keys, newest last), the last training time, the
dollar penalty fixed at the first round, and the promotion under watch."""

from __future__ import annotations

import json
import math
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
    ignored_rewards: int = 0  # logged rewards out of range, already reported
    rewarded_rows: int = 0  # rewarded traffic rows read: what the call budget is earned by
    extra_calls: int = 0  # worker calls the loop made (what learning cost, in calls)
    extra_dollars: float = 0.0  # ... and in dollars
    traffic_dollars: float = 0.0  # what the learners' served traffic cost, as logged
    prices: dict[str, str] | None = None  # worker -> price fingerprint the loop last trained at
    # worker -> [epoch, since, served version then]: answers drifted without a config change
    # (`drift`): from `since` on its answers are epoch `epoch`'s, the earlier ones void
    drift: dict[str, list] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> "LoopState":
        """The state in `root` (fresh where there is none); a `root` that is not a directory,
        or a state file that is not what `save` writes, is a one-line `ConfigError`."""
        if root.exists() and not root.is_dir():
            raise ConfigError(f"state_dir={root} is a file, not a directory: name a directory "
                              "for the loop's state")
        path = root / STATE_FILE
        if not path.is_file():
            return cls()
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict):
                raise TypeError(f"a {type(d).__name__}, not an object")
            watch = d.pop("watch", None)
            state = cls(**d, watch=Watch(**watch) if watch else None)
            state.check()
            return state
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"{path}: damaged online state ({type(e).__name__}: "
                              f"{str(e)[:100]}); move it away to start afresh") from None

    def check(self) -> None:
        """`TypeError`/`ValueError` where a field is not what the loop writes."""
        for name in ("consumed", "buffer", "held"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
                raise TypeError(f"`{name}` must be a list of texts")
        for name in ("last_train", "cost_penalty", "started", "extra_dollars",
                     "traffic_dollars"):
            value = getattr(self, name)
            if value is not None and not _finite(value):
                raise ValueError(f"`{name}` must be a finite number or null")
        for name in ("rounds", "ignored_rewards", "rewarded_rows", "extra_calls"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an integer >= 0")
        if self.prices is not None and not (isinstance(self.prices, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.prices.items())):
            raise TypeError("`prices` must map worker names to price fingerprints")
        for worker, d in self.drift.items():
            if not (isinstance(worker, str) and isinstance(d, list) and len(d) == 3
                    and isinstance(d[0], int) and _finite(d[1]) and isinstance(d[2], int)):
                raise TypeError("`drift` must map worker names to [epoch, since, version]")
        w = self.watch
        if w is not None and not (isinstance(w.version, int) and isinstance(w.previous, int)
                                  and isinstance(w.tag, str) and _finite(w.since)):
            raise TypeError("`watch` is not a promotion under watch")

    def save(self, root: Path) -> None:
        """Replace the state file atomically (written whole, synced, then renamed)."""
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{STATE_FILE}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(asdict(self)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / STATE_FILE)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def remember(keys: list[str], new: list[str], cap: int) -> list[str]:
    """`keys` with `new` moved to the end (newest last), at most `cap` of them."""
    fresh = set(new)
    out = [k for k in keys if k not in fresh] + list(dict.fromkeys(new))
    return out[-cap:] if cap > 0 else []

