"""Recorded outputs of real models, offline.

Owns: importers for public formats (MMLU-Pro eval_results, RouterBench CSVs), the checks every
recording passes (`checks`: costs, tokens, ids, duplicates, Unicode), the canonical Parquet
table and its safe writing (`files`: atomic, no clobbering, no `.tmp` litter), hashed
train/test splits, token counting and pricing, replay data and the in-process replay
`WorkerPool`, and the shipped demo pool.
Must not import: torch, Ray, or training/serving code (litellm only inside `pricing`, lazily).
"""
