"""Records parity: MMLU-Pro's published recordings rewritten as records (`answer_format: mc`)
give the native importer's table and its `eval` figures exactly.

The publisher's files are read once (`data.mmlu_pro.collect`: question text, the file's
answer key, each model's answer and extracted letter), then imported two ways: natively
(`import_mmlu_pro`, written as a canonical table) and as a records JSONL file with the
columns a team would have (query_id, query, task, model, response, answer_format,
reference, answer), leaving tokens, costs and `correct` to the records importer's defaults.
The two canonical tables are compared column by column, then `ray-conductor eval` judges the
same policies on both; the report lists every policy's figures side by side.

    python benchmarks/records_parity.py                     # the demo slice (2,000 questions)
    python benchmarks/records_parity.py --slice full        # all 12,032 questions
    python benchmarks/records_parity.py --policies singles,oracle --split all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._bench import write_report  # noqa: E402

FIGURES = ("accuracy", "cost_per_query", "calls_per_query", "parse_rate", "step_error_rate",
           "final_workers", "n")


def records_rows(src: Path, keep: set[str] | None) -> list[dict]:
    """The recordings as records rows, questions in the native table's order; a model
    without an answer to a question writes no row (the importer makes it a hole)."""
    from ray_conductor.data.mmlu_pro import _order, collect
    from ray_conductor.data.table import ImportReport

    questions, answers = collect([src], ImportReport(source="mmlu_pro"), keep)
    rows = []
    for qid in sorted(questions, key=_order):
        q = questions[qid]
        for model in sorted(answers, key=str.casefold):
            a = answers[model].get(qid)
            if a is None:
                continue
            answered = a.text is not None
            rows.append({"query_id": qid, "query": q.text,
                         "task": f"mmlu_pro/{q.category.replace(' ', '_')}", "model": model,
                         "response": a.text, "answer_format": "mc",
                         "reference": a.answer if answered else q.answer,
                         # "": the publisher's extractor found no letter (null: extract one)
                         "answer": (a.pred or "") if answered else None})
    return rows


def compare_tables(native, records) -> dict[str, dict[str, int]]:
    """Per column that differs: how many rows differ, and how many of those are holes; rows
    matched by (query_id, model) (the importers write them in different orders). A hole for
    a question a model's file lacks has no answer key of its own: the native importer gives
    it the question's first key, the records importer the most common one."""
    import pyarrow.compute as pc

    keys = [("query_id", "ascending"), ("model", "ascending")]
    native, records = native.sort_by(keys), records.sort_by(keys)
    if native.num_rows != records.num_rows:
        return {"(row count)": {"rows": abs(native.num_rows - records.num_rows), "holes": 0}}
    out = {}
    hole = pc.is_null(native["response"])
    for c in native.column_names:
        same = pc.fill_null(pc.equal(native[c], records[c]),
                            pc.and_(pc.is_null(native[c]), pc.is_null(records[c])))
        differ = pc.invert(same)
        if pc.any(differ).as_py():
            out[c] = {"rows": pc.sum(differ).as_py(),
                      "holes": pc.sum(pc.and_(differ, hole)).as_py()}
    return out


def run(args: argparse.Namespace) -> dict:
    from ray_conductor.data.demo import pick
    from ray_conductor.data.mmlu_pro import collect, import_mmlu_pro
    from ray_conductor.data.records import import_records
    from ray_conductor.data.table import ImportReport, write_table
    from ray_conductor.eval.command import EvalConfig, run_eval

    src, work = Path(args.mmlu_pro), Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    keep = None
    if args.slice == "demo":
        questions, _ = collect([src], ImportReport(source="mmlu_pro"))
        keep = pick({q: v.category for q, v in questions.items()})
    t0 = time.perf_counter()
    native, native_rep = import_mmlu_pro([src], keep=keep)
    write_table(native, work / "native.parquet", native_rep)
    rows = records_rows(src, keep)
    with open(work / "records.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    records, records_rep = import_records([work / "records.jsonl"])
    differ = compare_tables(native, records)
    reports = {}
    for name, spec in (("native", f"parquet:{work / 'native.parquet'}"),
                       ("records", f"records:{work / 'records.jsonl'}")):
        cfg = EvalConfig(pool=spec, split=args.split, policies=args.policies.split(","),
                         out=str(work / f"eval_{name}.json"), progress=False, overwrite=True)
        reports[name] = run_eval(cfg)["policies"]
    policies = {p: {side: {k: reports[side][p][k] for k in FIGURES} for side in reports}
                for p in reports["native"]}
    equal = {p: v["native"] == v["records"] for p, v in policies.items()}
    return {"summary": {"slice": args.slice, "split": args.split, "questions": native_rep.queries,
                        "rows": native.num_rows, "records_rows_written": len(rows),
                        "tables_equal": not differ, "rows_that_differ": differ,
                        "every_policy_equal": all(equal.values()),
                        "accuracy": {p: v["records"]["accuracy"] for p, v in policies.items()},
                        "cost_per_query": {p: v["records"]["cost_per_query"]
                                           for p, v in policies.items()},
                        "wall_s": round(time.perf_counter() - t0, 1)},
            "equal": equal, "policies": policies,
            "price_sources": {"native": native_rep.price_sources,
                              "records": records_rep.price_sources}}


def main() -> None:
    from ray_conductor.config import default_data_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mmlu-pro", default=str(Path(default_data_dir()) / "mmlu_pro"))
    ap.add_argument("--slice", choices=("demo", "full"), default="demo")
    ap.add_argument("--split", default="test", choices=("train", "test", "all"))
    ap.add_argument("--policies", default="singles,cheapest,random,knn,oracle,lite:default")
    ap.add_argument("--workdir", default=".cache/records_parity")
    ap.add_argument("--out", default="benchmarks/results/records_parity.json")
    args = ap.parse_args()
    write_report(run(args), args.out)


if __name__ == "__main__":
    main()
