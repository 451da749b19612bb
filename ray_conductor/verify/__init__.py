"""Verifiers: turn a worker's free text into a checkable answer and compare it with the truth.

Owns: answer extraction and checking (pure functions). Must not import: Ray, torch, litellm.
"""

from ray_conductor.verify.checkers import extract_choice

__all__ = ["extract_choice"]
