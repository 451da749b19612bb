"""How fast questions are embedded, before (fp32, as the former `eval/embed.py` did) and after (bf16 on
AMX, `ray_conductor.features`), on a fixed sample of MMLU-Pro question texts from the demo
pool, and whether the fast path finds the same neighbours.

The two sides run interleaved in one process (chunk by chunk, alternating which goes first),
so that the load other processes put on a shared machine falls on both alike. Neighbour
agreement: the mean overlap of each text's top-10 neighbours (itself excluded) under fp32 and
under bf16, and the cosine between each text's two embeddings. A second part embeds prompts
that share a 2,000-character few-shot opening, raw (as before) and through the fitted
`QuestionFeaturizer`, and reports their mean pairwise cosine.

    python benchmarks/embed_speed.py --out benchmarks/results/embed_speed.json
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import environment, write_report

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "ray_conductor" / "assets" / "demo_pool" / "mmlu_pro_demo.parquet"


def sample_texts(n: int) -> list[str]:
    """The first `n` distinct question texts of the demo pool, in query-id order."""
    import pyarrow.parquet as pq

    t = pq.read_table(DEMO, columns=["query_id", "query"]).to_pylist()
    by_id = {r["query_id"]: r["query"] for r in t}
    def number(qid: str) -> int:  # mmlu_pro/73 -> 73
        tail = qid.rsplit("/", 1)[1]
        return int(tail) if tail.isdigit() else 0

    texts = list(dict.fromkeys(by_id[q] for q in sorted(by_id, key=number)))
    if len(texts) < n:
        raise SystemExit(f"the demo pool has only {len(texts)} distinct questions")
    return texts[:n]


def timed_sides(texts: list[str], chunk: int) -> dict[str, dict]:
    """Before: fp32 in batches of 64, the old code's settings. After: the new defaults."""
    from ray_conductor.features.embed import encode

    settings = {"fp32": {"batch_size": 64}, "bf16": {}}

    for p in ("fp32", "bf16"):  # load both models and warm oneDNN up, uncounted
        encode(texts[:32], p, progress=False)
    wall = {"fp32": 0.0, "bf16": 0.0}
    cpu = dict(wall)
    ratios = []
    for i, start in enumerate(range(0, len(texts), chunk)):
        part = texts[start: start + chunk]
        order = ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")
        took = {}
        for p in order:
            t, c = time.perf_counter(), time.process_time()
            encode(part, p, progress=False, **settings[p])
            took[p] = time.perf_counter() - t
            wall[p] += took[p]
            cpu[p] += time.process_time() - c
        ratios.append(took["fp32"] / took["bf16"])
    n = len(texts)
    return {p: {"texts_per_s": round(n / wall[p], 2), "wall_s": round(wall[p], 2),
                "cpu_s": round(cpu[p], 2)} for p in wall} | {
        "chunk_speedups": [round(r, 2) for r in ratios]}


def agreement(texts: list[str], k: int = 10) -> dict[str, float]:
    from ray_conductor.features.embed import encode

    a, b = encode(texts, "fp32", progress=False), encode(texts, "bf16", progress=False)

    def top(e: np.ndarray) -> np.ndarray:
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1)[:, :k]

    ta, tb = top(a), top(b)
    overlap = [len(set(x) & set(y)) / k for x, y in zip(ta, tb)]
    cos = (a * b).sum(1)
    return {"top10_overlap_mean": round(float(np.mean(overlap)), 4),
            "top10_overlap_min": round(float(np.min(overlap)), 4),
            "top1_same": round(float(np.mean(ta[:, 0] == tb[:, 0])), 4),
            "cosine_fp32_bf16_mean": round(float(cos.mean()), 5),
            "cosine_fp32_bf16_min": round(float(cos.min()), 5)}


def shared_opening(texts: list[str]) -> dict[str, float]:
    """Prompts with a 2,000-char few-shot opening: raw vs featurized mean pairwise cosine."""
    from ray_conductor.features import QuestionFeaturizer
    from ray_conductor.features.embed import encode

    rng = random.Random(0)
    shots = "".join(f"Question: {q}\nAnswer: Let's think step by step. The answer is "
                    f"({rng.choice('ABCD')}).\n\n" for q in texts[-40:])[:2000]
    prompts = [f"{shots}Question: {q}\nAnswer: Let's think step by step." for q in texts]
    f = QuestionFeaturizer.fit(prompts)

    def mean_pairwise(e: np.ndarray) -> float:
        s = e @ e.T
        return float((s.sum() - np.trace(s)) / (len(e) * (len(e) - 1)))

    raw = encode(prompts, progress=False)
    cut = encode(f.transform(prompts), progress=False)
    plain = encode(texts, progress=False)
    return {"prompts": len(prompts), "opening_chars": len(shots),
            "featurizer": f.describe(),
            "mean_pairwise_cosine_raw": round(mean_pairwise(raw), 4),
            "mean_pairwise_cosine_featurized": round(mean_pairwise(cut), 4),
            "mean_pairwise_cosine_plain_questions": round(mean_pairwise(plain), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="question texts to time")
    ap.add_argument("--chunk", type=int, default=256, help="texts per interleaved chunk")
    ap.add_argument("--agreement-n", type=int, default=400)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "embed_speed.json"))
    a = ap.parse_args()
    texts = sample_texts(a.n)
    load0 = os.getloadavg()[0]
    speed = timed_sides(texts, a.chunk)
    agree = agreement(texts[: a.agreement_n])
    opening = shared_opening(texts[:200])
    before, after = speed["fp32"]["texts_per_s"], speed["bf16"]["texts_per_s"]
    summary = {"texts": a.n, "before_fp32_texts_per_s": before,
               "after_bf16_texts_per_s": after, "speedup": round(after / before, 2),
               "speedup_median_of_chunks": round(statistics.median(speed["chunk_speedups"]), 2),
               "cpu_time_speedup": round(speed["fp32"]["cpu_s"] / speed["bf16"]["cpu_s"], 2),
               **agree, **{k: v for k, v in opening.items() if k.startswith("mean_pairwise")}}
    from ray_conductor.features.embed import _cpu_flags

    report = {"summary": summary, "speed": speed, "agreement": agree,
              "shared_opening": opening,
              "source": str(DEMO.relative_to(ROOT)),
              "cpu_bf16_flags": sorted(_cpu_flags() & {"amx_bf16", "amx_tile", "avx512_bf16"}),
              "environment": environment(threads=os.cpu_count() or 1) | {
                  "loadavg_1m_at_start": round(load0, 2)}}
    write_report(report, a.out)


if __name__ == "__main__":
    main()
