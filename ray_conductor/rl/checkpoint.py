"""Run directories: metrics as JSON lines and TensorBoard, and checkpoints that are either
complete or invisible (written to a temporary name, then renamed), so a job killed at any
moment resumes from the last whole checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.ckpt_root = self.path / "checkpoints"
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        self._tb = None

    # -- metrics -----------------------------------------------------------------------
    def log(self, iteration: int, metrics: dict[str, Any]) -> None:
        row = {"iteration": iteration, "time": time.time(), **metrics}
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
        with open(self.path / "samples.jsonl", "a") as f:
            for r in rows:
                f.write(json.dumps({"iteration": iteration, **r}, default=str) + "\n")

    def truncate_metrics(self, start: int) -> None:
        """Drop rows of iterations >= `start` (metrics and samples): a resumed run logs them
        again."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            p = self.path / name
            if not p.exists():
                continue
            rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            keep = [r for r in rows if r["iteration"] < start]
            tmp = p.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in keep))
            os.replace(tmp, p)

    def samples(self) -> list[dict[str, Any]]:
        p = self.path / "samples.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def is_used(self) -> bool:
        return (self.path / "metrics.jsonl").exists() or bool(self.checkpoints())

    def clear(self) -> None:
        for name in ("metrics.jsonl", "samples.jsonl", "tb", "checkpoints"):
            p = self.path / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        self.ckpt_root.mkdir(parents=True, exist_ok=True)

    def metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

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
        if self._tb:
            self._tb.close()

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint_dir(self, iteration: int) -> Path:
        return self.ckpt_root / f"iter_{iteration:06d}"

    def begin_checkpoint(self, iteration: int) -> Path:
        tmp = self.ckpt_root / f".tmp_iter_{iteration:06d}_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit_checkpoint(self, tmp: Path, iteration: int, state: dict[str, Any],
                          keep: int = 3) -> Path:
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, default=str))
        (tmp / COMPLETE).write_text("ok\n")
        final = self.checkpoint_dir(iteration)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def checkpoints(self) -> list[Path]:
        return sorted(p for p in self.ckpt_root.glob("iter_*") if (p / COMPLETE).exists())

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        cks = self.checkpoints()
        if not cks:
            return None
        return cks[-1], json.loads((cks[-1] / "trainer_state.json").read_text())
