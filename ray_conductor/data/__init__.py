"""Recorded outputs of real models, offline.

Owns: importers for public formats (MMLU-Pro eval_results, RouterBench CSVs) and for a team's
own recordings (`records`: JSONL, CSV or Parquet, one row per question and model), the checks
every recording passes (`checks`: costs, tokens, ids, duplicates, Unicode), the canonical
Parquet table and its safe writing (`files`: atomic, no clobbering, no `.tmp` litter), hashed
train/test splits, token counting and pricing, replay data, its judge (every answer format) and
the in-process replay `WorkerPool`, and the shipped demo pool.
Must not import: torch, Ray, or training/serving code (litellm only inside `pricing`, lazily).
"""
