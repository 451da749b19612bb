"""Reports for people and machines: a printed table, the JSON report, and a cost-vs-accuracy
scatter plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping


def format_table(policies: Mapping[str, Mapping[str, Any]]) -> str:
    head = f"{'policy':<42} {'accuracy':>9} {'$/query':>11} {'calls/q':>8} {'latency s':>10} {'n':>6}"
    lines = [head, "-" * len(head)]
    for name, p in sorted(policies.items(), key=lambda kv: -kv[1]["accuracy"]):
        lines.append(
            f"{name[:42]:<42} {p['accuracy']:>9.4f} {p['cost_per_query']:>11.6f} "
            f"{p['calls_per_query']:>8.2f} {p['latency_mean_s']:>10.4f} {p['n']:>6}"
        )
    return "\n".join(lines)


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False, default=str))
    os.replace(tmp, p)
    return p


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
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
