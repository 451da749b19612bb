"""The shift benchmark's figures (`shift.py` runs the scenarios): one tick's rewards beside
the best single worker and the oracle (`tick_row`), one run's summary (`summarize`), the
means over seeds with their spread (`aggregate`), and the plot of reward and learning cost
over time (`plot`, matplotlib if installed)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from shift_scenarios import NAMES, Phase


def tick_row(phase: int, start: int, qs: list[Any], got: dict[str, list], ref: dict[str, Any],
             rows: list[int], made: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    def stats(items: list[dict[str, Any]]) -> dict[str, float]:
        return {"reward": float(np.mean([r["reward"] for r in items])),
                "accuracy": float(np.mean([r["correct"] for r in items])),
                "cost": float(np.mean([r["cost"] for r in items])), "n": len(items)}

    best = int(np.argmax(ref["reward"].mean(axis=0)))  # the phase's best single, in hindsight
    o = ref["reward"][rows].argmax(axis=1)
    return {"phase": phase, "start": start, "frozen": stats(got["frozen"]),
            "online": stats(got["online"]),
            "best_single": {"worker": ref["models"][best],
                            "reward": float(ref["reward"][rows, best].mean()),
                            "accuracy": float(ref["correct"][rows, best].mean()),
                            "cost": float(ref["cost"][rows, best].mean())},
            "oracle": {"reward": float(ref["reward"][rows, o].mean()),
                       "accuracy": float(ref["correct"][rows, o].mean()),
                       "cost": float(ref["cost"][rows, o].mean())},
            "online_versions": sorted({r["version"] for r in got["online"]}),
            "online_version_counts": dict(Counter(r["version"] for r in got["online"])),
            "failed": got["failed"], "decisions": [x["kind"] for x in made],
            "wall_s": wall_s}


def window_ticks(ticks: list[dict[str, Any]], last_phase: int, last_questions: int,
                 after_window: int) -> list[dict[str, Any]]:
    """The ticks of the live `_after` window: the last phase's ticks that start inside its
    last `after_window` questions (as `summarize` measures them)."""
    return [t for t in ticks if t["phase"] == last_phase
            and t["start"] >= last_questions - after_window]


def served_mix(window: list[dict[str, Any]]) -> dict[str, int]:
    """How many of the window's questions each online version answered (version tag ->
    questions). A report from before `online_version_counts` was recorded splits a tick's
    questions evenly among the versions it lists."""
    mix: Counter[str] = Counter()
    for t in window:
        counts = t.get("online_version_counts")
        if counts is None:
            vs, n = t["online_versions"], t["online"]["n"]
            counts = {v: n / len(vs) for v in vs} if vs else {}
        mix.update(counts)
    return dict(mix)


def summarize(name: str, ticks: list[dict[str, Any]], phases: list[Phase], load: dict[str, Any],
              decisions: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    window = window_ticks(ticks, len(phases) - 1, len(phases[-1].questions), args.after_window)

    def after(key: str, metric: str = "reward") -> float:
        n = sum(t["frozen"]["n"] for t in window)
        return float(sum(t[key][metric] * t["frozen"]["n"] for t in window) / max(n, 1))

    frozen, online, oracle = after("frozen"), after("online"), after("oracle")
    gap = oracle - frozen
    kinds = [d["kind"] for d in decisions]
    return {"scenario": name, "summary": {
        "frozen_after": round(frozen, 4), "online_after": round(online, 4),
        "oracle_after": round(oracle, 4), "best_single_after": round(after("best_single"), 4),
        "best_single_worker": window[-1]["best_single"]["worker"] if window else None,
        "recovered": share_of_gap(online - frozen, gap),
        "online_beats_frozen": online > frozen,
        "accuracy_after": {k: round(after(k, "accuracy"), 4)
                           for k in ("frozen", "online", "best_single", "oracle")},
        "cost_per_query_after": {k: round(after(k, "cost"), 6)
                                 for k in ("frozen", "online", "best_single", "oracle")},
        "after_questions": sum(t["frozen"]["n"] for t in window),
        "failed_during_swaps": load["failed"], "requests_during_swaps": load["sent"],
        "failed_measured": sum(len(t["failed"]) for t in ticks),
        "promotions": kinds.count("promoted"), "rejections": kinds.count("rejected"),
        "rollbacks": kinds.count("rolled_back"), "extended": kinds.count("extended"),
        "guarded": sum(bool(d.get("guarded")) for d in decisions if d["kind"] == "rejected"),
        "watches_paired": sum(d.get("test_kind") == "paired" for d in decisions
                              if d["kind"] in ("kept", "rolled_back"))},
        "ticks": ticks, "decisions": decisions, "swap_errors": load["errors"][:10]}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds, with `seeds` and `*_sd` beside each number; booleans as the share
    of seeds where they held; the verdicts recomputed from the means."""
    out: dict[str, Any] = {"seeds": len(runs)}
    for k, v in runs[0]["summary"].items():
        vals = [r["summary"].get(k) for r in runs]
        if all(isinstance(x, bool) for x in vals):
            out[f"{k}_share"] = round(float(np.mean(vals)), 4)
        elif all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            out[k], out[f"{k}_sd"] = (round(float(np.mean(vals)), 6),
                                      round(float(np.std(vals, ddof=1)) if len(vals) > 1
                                            else 0.0, 6))
        elif isinstance(vals[0], dict):
            continue
        elif any(isinstance(x, (int, float)) for x in vals):  # some seeds have none
            got = [x for x in vals if isinstance(x, (int, float))]
            out[k], out[f"{k}_sd"] = round(float(np.mean(got)), 6), (
                round(float(np.std(got, ddof=1)), 6) if len(got) > 1 else 0.0)
            out[f"{k}_seeds"] = len(got)
        else:
            out[k] = vals[0]
    out["online_beats_frozen"] = out.get("online_after", 0) > out.get("frozen_after", 0)
    if "refit_after" in out:
        out["recovered_vs_refit"] = share_of_gap(
            out["online_after"] - out["frozen_after"],
            out["refit_after"] - out["frozen_after_offline"])
    if "refit_unseen" in out:  # the end state, on the questions no seed streamed
        out["recovered_vs_refit_unseen"] = share_of_gap(
            out["online_final_unseen"] - out["frozen_unseen"],
            out["refit_unseen"] - out["frozen_unseen"])
    for label in ("live", "shift"):  # the policies that served a stretch, same questions
        if f"online_{label}_unseen" in out:
            out[f"recovered_vs_refit_{label}_unseen"] = share_of_gap(
                out[f"online_{label}_unseen"] - out["frozen_unseen"],
                out["refit_unseen"] - out["frozen_unseen"])
    return out


def share_of_gap(gain: float, gap: float) -> float | None:
    """`gain` as a share of `gap` (what online recovered of what there was to recover),
    rounded; None when there was nothing to recover (gap <= 0)."""
    return round(gain / gap, 4) if gap > 1e-9 else None


# -- the plot -----------------------------------------------------------------------------------


def plot(report: dict[str, Any], path: Path) -> None:
    """Per scenario: reward over time (mean over seeds: frozen, online, oracle) and beside
    it the learning cost (extra calls per rewarded row, learning $ per served $)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: no plot", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in NAMES.values() if n in report["scenarios"]]
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.5), squeeze=False)
    for j, name in enumerate(names):
        runs = report["scenarios"][name]
        x = np.cumsum([t["frozen"]["n"] for t in runs[0]["ticks"]])
        ax = axes[0][j]
        for key, color, ls in (("frozen", "tab:red", "-"), ("online", "tab:blue", "-"),
                               ("oracle", "black", ":")):
            y = np.array([[t[key]["reward"] for t in r["ticks"]] for r in runs])
            ax.plot(x, y.mean(axis=0), color=color, ls=ls, marker=".", label=key)
            if len(runs) > 1:
                ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=color, alpha=0.12)
        shift = next((x[i - 1] for i, t in enumerate(runs[0]["ticks"]) if t["phase"] > 0), None)
        if shift is not None:
            ax.axvline(shift, color="tab:orange", lw=1)
        s = report["summary"][name]
        ax.set_title(f"{name}: online {s['online_after']:.3f} vs frozen "
                     f"{s['frozen_after']:.3f} ({len(runs)} seeds)", fontsize=9)
        ax.set_ylabel("reward (correct - λ·$)" if j == 0 else "")
        ax = axes[1][j]
        calls = np.array([[t["learning"]["extra_calls"] / max(t["learning"]["rewarded_rows"], 1)
                           for t in r["ticks"]] for r in runs])
        ratio = np.array([[t["learning"]["learning_cost_per_served_dollar"] or 0.0
                           for t in r["ticks"]] for r in runs])
        ax.plot(x, calls.mean(axis=0), color="tab:green", marker=".",
                label="extra calls / rewarded row")
        ax2 = ax.twinx()
        ax2.plot(x, ratio.mean(axis=0), color="tab:purple", marker=".", ls="--",
                 label="learning $ / served $")
        ax.set_xlabel("questions sent (shift: orange)")
        if j == 0:
            ax.set_ylabel("extra calls / rewarded row (green)")
        if j == len(names) - 1:
            ax2.set_ylabel("learning $ / served $ (purple)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(report.get("mode", ""), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
