"""Verifiers: turn a worker's free text into a checkable answer and compare it with the truth.

Owns: answer extraction and checking (pure functions), and the sandbox that runs model-written
code and its tests (`sandbox.run_untrusted`; `boundary.run_across` runs the code and its
tests in two sandboxes with only plain values between them, `sandbox_values` says which;
`code` builds the HumanEval/MBPP checkers on it). The `sandbox_*` modules other than
`sandbox` run inside the sandbox, loaded by path: stdlib only, no package imports.
Must not import: Ray, torch, litellm.
"""

from ray_conductor.verify.checkers import extract_choice

__all__ = ["extract_choice"]
