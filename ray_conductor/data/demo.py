"""Build the shipped demo pool: a small, deterministic slice of MMLU-Pro's recorded outputs.

`python -m ray_conductor.data.demo [MMLU_PRO_DIR]` re-derives it with the project's own importer
from the publisher's files, so the slice is reproducible and nothing in it is hand-edited.
Questions are chosen per category by the lowest sha256 of "demo:" + query id (stratified: each
category keeps its share), independent of the train/test hash, so both splits are present.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from ray_conductor.config import default_data_dir
from ray_conductor.data.files import write_text
from ray_conductor.data.mmlu_pro import collect, import_mmlu_pro
from ray_conductor.data.pools import DEMO_PATH
from ray_conductor.data.splits import unit_hash
from ray_conductor.data.table import ImportReport, write_table

TARGET_QUESTIONS = 2000
NOTICE = """\
This directory holds data derived from TIGER-AI-Lab/MMLU-Pro, eval_results/
(https://github.com/TIGER-AI-Lab/MMLU-Pro), licensed under the Apache License, Version 2.0
(http://www.apache.org/licenses/LICENSE-2.0).

mmlu_pro_demo.parquet: {n} of the {total} MMLU-Pro questions (stratified by category) with the
recorded chain-of-thought answers of {m} models, converted to ray_conductor's canonical table by
ray_conductor/data/demo.py (python -m ray_conductor.data.demo). Changes from the source: the
selection of questions; options rendered as lettered lines; the publisher's extracted letter
(`pred`) kept in the column `answer`; token counts and dollar costs added (estimated, see
ray_conductor/data/pricing.py and configs/prices.yaml). Answer texts are not shortened or
otherwise edited.
"""


def pick(categories: dict[str, str], target: int = TARGET_QUESTIONS) -> set[str]:
    """About `target` query ids, each category's share rounded, lowest demo-hash first."""
    by_cat: dict[str, list[str]] = defaultdict(list)
    for qid, cat in categories.items():
        by_cat[cat].append(qid)
    keep: set[str] = set()
    for ids in by_cat.values():
        n = max(1, round(len(ids) * target / len(categories)))
        keep.update(sorted(ids, key=lambda q: unit_hash(f"demo:{q}"))[:n])
    return keep


def build(src: str | Path, out: Path = DEMO_PATH) -> Path:
    questions, _ = collect([src], ImportReport(source="mmlu_pro"))
    keep = pick({q: v.category for q, v in questions.items()})
    table, report = import_mmlu_pro([src], keep=keep)
    report.files = [w.replace(f"{src}/", "mmlu_pro/") for w in report.files]  # no local paths
    report.notes.append(f"demo slice: {report.queries} of {len(questions)} questions, "
                        f"stratified by category (ray_conductor/data/demo.py)")
    write_table(table, out, report, level=9)  # smaller to ship; read speed is unchanged
    notice = NOTICE.format(n=report.queries, total=len(questions), m=len(report.models))
    write_text(out.parent / "NOTICE", notice)
    return out


if __name__ == "__main__":
    src = sys.argv[1] if len(sys.argv) > 1 else str(Path(default_data_dir()) / "mmlu_pro")
    path = build(src)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
