"""Workers: everything that answers a step.

Owns: the `WorkerPool` protocol and `Completion`; replay pools over recorded outputs; the
litellm-backed, rate-limited `WorkerProxy` Ray actors and the `RayWorkerPool` over them.
Must not import: torch, transformers, or training/serving code.
"""

from ray_conductor.workers.base import Attempt, Completion, Message, WorkerInfo, WorkerPool, failed

__all__ = ["Attempt", "Completion", "Message", "WorkerInfo", "WorkerPool", "failed"]
