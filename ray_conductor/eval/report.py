"""Reports for people and machines: a printed table, the JSON report, and a cost-vs-accuracy
scatter plot. Files are written atomically (`data.files`): a reader, or a run killed halfway,
never sees half a report, and no `.tmp` file is left behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from ray_conductor.data.files import atomic_path, write_text
from ray_conductor.errors import ConfigError


def format_table(policies: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per policy, best accuracy first; a `failed` column (share of worker calls
    that failed) when any call failed."""
    fails = any((p.get("failures") or {}).get("failed") for p in policies.values())
    head = f"{'policy':<42} {'accuracy':>9} {'$/query':>11} {'calls/q':>8} {'latency s':>10} {'n':>6}"
    head += f" {'failed':>7}" if fails else ""
    lines = [head, "-" * len(head)]
    for name, p in sorted(policies.items(), key=lambda kv: -kv[1]["accuracy"]):
        row = (f"{name[:42]:<42} {p['accuracy']:>9.4f} {p['cost_per_query']:>11.6f} "
               f"{p['calls_per_query']:>8.2f} {p['latency_mean_s']:>10.4f} {p['n']:>6}")
        if fails:
            row += f" {(p.get('failures') or {}).get('rate', 0.0):>7.1%}"
        lines.append(row)
    return "\n".join(lines)


def top_errors(errors: Counter, n: int = 5) -> list[dict[str, Any]]:
    """The `n` most common error codes, counted, each with its most common message as an
    example (messages often name the query, so they rarely repeat exactly)."""
    by_code: Counter[str] = Counter()
    example: dict[str, tuple[int, str]] = {}
    for (code, msg), count in errors.items():
        by_code[code] += count
        if count > example.get(code, (0, ""))[0]:
            example[code] = (count, msg)
    return [{"code": code, "count": count, "message": example[code][1]}
            for code, count in by_code.most_common(n)]


def failure_line(summary: Mapping[str, Any], n: int = 3) -> str:
    """'12 of 400 (3.0%); 10x rate_limit_timeout: ...; 2x ...' on one line."""
    head = f"{summary['failed']} of {summary['calls']} ({summary['rate']:.1%})"
    causes = [f"{e['count']}x {e['code']} (e.g. {e['message'][:160]})"
              for e in summary.get("errors", [])[:n]]
    more = len(summary.get("errors", [])) > n
    return "; ".join([head, *causes]) + ("; ..." if more else "")


def check_writable(key: str, path: str | os.PathLike) -> None:
    """`path` (a file or directory to be made) can be written: its nearest existing ancestor
    is a directory in which a file can really be created. A probe file is made and removed,
    because permission bits say nothing to root or about a read-only mount."""
    path = Path(path).expanduser()
    parent = path if path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key}={path}: {parent} is a file, not a directory; choose another "
                          f"{key}=")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{key}={path}: cannot write in {parent} ({e.strerror or e}); "
                          f"choose another {key}=") from None


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    return write_text(path, json.dumps(report, indent=2, sort_keys=False, default=str))


def scatter_plot(policies: Mapping[str, Mapping[str, Any]], path: str | os.PathLike,
                 title: str = "") -> Path:
    """Cost per query (log x) against accuracy, one labelled point per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for name, p in policies.items():
        x = max(p["cost_per_query"], 1e-9)
        kind = name.split(":")[0]
        marker = {"single": "o", "conductor": "*"}.get(kind, "s")
        ax.scatter([x], [p["accuracy"]], marker=marker, s=120 if kind == "conductor" else 50)
        ax.annotate(name.replace("single:", ""), (x, p["accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("dollars per query (log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "cost vs accuracy")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return Path(path)
