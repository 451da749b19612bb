"""Evaluation: baseline policies, the loop that judges plans through the executor, reports.

Owns: `ray-conductor eval`, baselines (single, cheapest, random, oracle, kNN), JSON/PNG reports.
Must not import: training code (ray_conductor.rl).
"""
