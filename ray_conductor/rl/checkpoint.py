"""Run directories: metrics as JSON lines and TensorBoard, and checkpoints that are either
complete or invisible (written to a temporary name, then renamed), so a job killed at any
moment resumes from the last whole checkpoint.

Nothing is created until the run starts writing (`prepare`, or the first log line): a
command refused at validation leaves no directory behind. Temporary checkpoints and files
carry their writer's pid; `close` removes this run's unfinished ones, and `prepare` those of
runs that died (SIGKILL), so interrupted writes leave no litter. A torn last line of
`metrics.jsonl` (a kill mid-append) is skipped when read and dropped on resume."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ray_conductor.data.files import clean_stale_temps, write_text

COMPLETE = "COMPLETE"
_TMP_CKPT = re.compile(r"^\.tmp_iter_\d+_(\d+)$")
log = logging.getLogger(__name__)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # someone else's: keep its files
        return True
    return True


def _read_jsonl(p: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a line cut short by a kill mid-write is skipped."""
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            log.warning("%s: skipping a torn line (a run killed while writing it)", p)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.ckpt_root = self.path / "checkpoints"
        self._tb = None
        self._open: set[Path] = set()  # checkpoints begun and not committed

    def prepare(self) -> "RunDir":
        """Create the directories, and remove what runs that died left half-written."""
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        for p in self.ckpt_root.iterdir():
            m = _TMP_CKPT.match(p.name)
            if m and p.is_dir() and not _running(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)
        clean_stale_temps(self.path)
        return self

    # -- metrics -----------------------------------------------------------------------
    def log(self, iteration: int, metrics: dict[str, Any]) -> None:
        row = {"iteration": iteration, "time": time.time(), **metrics}
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        tb = self._writer()
        if tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    tb.add_scalar(k, v, iteration)
            tb.flush()

    def log_samples(self, iteration: int, rows: list[dict[str, Any]]) -> None:
        """The iteration's sampled plans and how they fared, one JSON line each
        (`samples.jsonl`): what to read when a curve moves the wrong way."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "samples.jsonl", "a") as f:
            for r in rows:
                f.write(json.dumps({"iteration": iteration, **r}, default=str) + "\n")

    def truncate_metrics(self, start: int) -> None:
        """Drop rows of iterations >= `start` (metrics and samples), and torn lines: a
        resumed run logs them again. Replaced atomically."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            p = self.path / name
            if not p.exists():
                continue
            keep = [r for r in _read_jsonl(p) if r.get("iteration", start) < start]
            write_text(p, "".join(json.dumps(r, default=str) + "\n" for r in keep))

    def samples(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.path / "samples.jsonl")

    def is_used(self) -> bool:
        return (self.path / "metrics.jsonl").exists() or bool(self.checkpoints())

    def clear(self) -> None:
        """Forget an earlier run (overwrite=true): its metrics, samples, TensorBoard logs,
        checkpoints and evaluations. The policy registry is left alone (others may serve
        from it); new versions are numbered after the old ones."""
        for p in [self.path / n for n in ("metrics.jsonl", "samples.jsonl", "tb", "checkpoints")
                  ] + sorted(self.path.glob("eval_*.json")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        self.prepare()

    def metrics(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.path / "metrics.jsonl")

    def _writer(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; JSON lines always work
                self._tb = False
            else:
                self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb or None

    def close(self) -> None:
        """Flush TensorBoard and remove this run's unfinished checkpoints."""
        if self._tb:
            self._tb.close()
            self._tb = None
        for tmp in list(self._open):
            shutil.rmtree(tmp, ignore_errors=True)
        self._open.clear()

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint_dir(self, iteration: int) -> Path:
        return self.ckpt_root / f"iter_{iteration:06d}"

    def begin_checkpoint(self, iteration: int) -> Path:
        tmp = self.ckpt_root / f".tmp_iter_{iteration:06d}_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self._open.add(tmp)
        return tmp

    def commit_checkpoint(self, tmp: Path, iteration: int, state: dict[str, Any],
                          keep: int = 3) -> Path:
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, default=str))
        (tmp / COMPLETE).write_text("ok\n")
        final = self.checkpoint_dir(iteration)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self._open.discard(tmp)
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def checkpoints(self) -> list[Path]:
        if not self.ckpt_root.is_dir():
            return []
        return sorted(p for p in self.ckpt_root.glob("iter_*") if (p / COMPLETE).exists())

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint whose state can be read (a damaged one is skipped)."""
        for path in reversed(self.checkpoints()):
            try:
                return path, json.loads((path / "trainer_state.json").read_text())
            except (OSError, ValueError) as e:
                log.warning("skipping checkpoint %s: its trainer_state.json is unreadable (%s)",
                            path, e)
        return None
