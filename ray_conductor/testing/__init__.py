"""Test helpers that ship with the package: the fault-injecting OpenAI-compatible server.

Owns: stand-ins for real providers, used by tests and benchmarks.
Must not import: Ray, torch, or any training/serving code.
"""

from ray_conductor.testing.fault_server import FaultProcess, Faults, FaultServer

__all__ = ["FaultProcess", "FaultServer", "Faults"]
