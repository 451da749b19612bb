"""What every benchmark script shares: a local Ray session sized for a small machine, and
writing the JSON report (printing its `summary`)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def local_ray(num_cpus: int = 2, object_store_mb: int = 300) -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=object_store_mb * 1024 * 1024)
    try:
        yield
    finally:
        ray.shutdown()


def write_report(report: dict[str, Any], out: str | Path) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report["summary"], indent=2))
    print(f"report: {path}")
    return path
