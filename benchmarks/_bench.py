"""What benchmark scripts share: a local Ray session sized for a small machine, the JSON
report (printing its `summary`), the machine's description, one measured side of a
comparison run in a fresh interpreter, and the CPU and memory of a process tree."""

from __future__ import annotations

import bisect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

ENV = {"RAY_AUTH_MODE": "disabled", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


@contextmanager
def local_ray(num_cpus: int = 2, object_store_mb: int = 300) -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=object_store_mb * 1024 * 1024)
    try:
        yield
    finally:
        ray.shutdown()


def plan_shape(workflow: Any) -> str:
    """A plan's shape for the plan-shape tables: vote, conditional, multi_step, one_step."""
    from ray_conductor.workflow.programs import VOTE

    if VOTE in workflow.workers:
        return "vote"
    if any(s.when for s in workflow):
        return "conditional"
    return "multi_step" if len(workflow) > 1 else "one_step"


def write_report(report: dict[str, Any], out: str | Path) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report["summary"], indent=2))
    print(f"report: {path}")
    return path


def mean(rows: Sequence[dict[str, Any]], key: str, digits: int = 4) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.fmean(vals), digits) if vals else None


def environment(threads: int, packages: Sequence[str] = ("transformers", "ray")) -> dict:
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    try:
        import torch

        tv, cuda = torch.__version__, torch.cuda.is_available()
    except ImportError:
        tv, cuda = None, False
    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "threads": threads, "python": platform.python_version(), "torch": tv,
            "cuda_available": cuda, **{pkg: version(pkg) for pkg in packages},
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}


def run_side(script: str, side: str, argv: list[str], threads: int) -> dict[str, Any]:
    """`script argv --side SIDE --side-out FILE` in a fresh interpreter (its own Ray cluster
    or none, its own threads); the JSON it wrote, or why it failed, plus the load around it."""
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        part = f.name
    try:
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        proc = subprocess.run([sys.executable, script, *argv, "--side", side,
                               "--side-out", part], env=env)
        host = {"process_wall_s": round(time.perf_counter() - t0, 2),
                "loadavg_1m_before": round(load0, 2),
                "loadavg_1m_after": round(os.getloadavg()[0], 2)}
        text = Path(part).read_text()
        result = json.loads(text) if text else {}
        if proc.returncode != 0:
            why = result.get("error") or ("killed by signal 9 (out of memory?)"
                                          if proc.returncode == -9 else "see its output")
            return {"error": f"{side} exited with status {proc.returncode}: {why}", **host}
        return {**result, **host}
    finally:
        Path(part).unlink(missing_ok=True)


class ProcessTree:
    """CPU seconds and resident memory of this process and all its descendants (Ray's
    processes included), sampled every `interval_s` in a thread.

    CPU time per iteration is the contention-proof twin of wall time: another job's load
    stretches wall time but not the CPU seconds our work needs. Memory is the sum of RSS, so
    pages shared between processes count once per process."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.peak_mib = interval_s, 0.0
        self.samples: list[tuple[float, float]] = []  # (time.time(), CPU seconds of the tree)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        seen: dict[tuple[int, float], float] = {}  # (pid, start) -> CPU s when last read
        while not self._stop.is_set():
            rss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    seen[(p.pid, p.create_time())] = t.user + t.system
                    rss += p.memory_info().rss
                except psutil.Error:  # exited between listing and reading
                    pass
            # a process that exited keeps its last reading, so the total never goes down
            self.samples.append((time.time(), sum(seen.values())))
            self.peak_mib = max(self.peak_mib, rss / 2**20)
            self._stop.wait(self.interval_s)

    def cpu_at(self, t: float) -> float:
        """CPU seconds of the tree at wall time `t`, interpolated between samples."""
        times = [s[0] for s in self.samples]
        i = bisect.bisect_left(times, t)
        if i == 0 or i == len(times):
            return self.samples[min(i, len(times) - 1)][1]
        (t0, c0), (t1, c1) = self.samples[i - 1], self.samples[i]
        return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)

    def add_cpu(self, side: dict[str, Any]) -> None:
        """Per-iteration CPU seconds from each row's wall-clock `window`, and their mean."""
        for row in side["per_iteration"]:
            start, end = row.pop("window")
            row["cpu_s"] = round(self.cpu_at(end) - self.cpu_at(start), 3)
        timed = [r["cpu_s"] for r in side["per_iteration"][1:]]
        side["mean_cpu_s_per_iteration"] = round(statistics.fmean(timed), 3) if timed else None
        side["peak_rss_mib_process_tree"] = round(self.peak_mib)

    def __enter__(self) -> "ProcessTree":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
