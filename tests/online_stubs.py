"""Stand-ins for the online loop's app (`ServeApp`'s interface: the served reference, the
hot-swap, the worker pool, the verifier), shared by the loop's tests of both tiers."""

from __future__ import annotations

from ray_conductor.errors import ConfigError
from ray_conductor.workers.base import Completion, WorkerInfo

WORKERS = ["cheap", "good"]


class Pool:
    """Two workers: `good` answers (A), `cheap` answers (B); every call is counted."""

    def __init__(self):
        self.calls = 0

    def workers(self):
        return [WorkerInfo(w, "", 1.0, 1.0) for w in WORKERS]

    async def complete(self, worker, messages, **params):
        self.calls += 1
        return Completion(worker=worker, text=f"The answer is ({'A' if worker == 'good' else 'B'})",
                          cost=0.001, input_tokens=1, output_tokens=1)


class App:
    def __init__(self, ref):
        self.ref, self.pool, self.swaps, self.fail_swap = ref, Pool(), [], False

    def reference(self, model):
        return self.ref

    def swap(self, model, ref):
        if self.fail_swap:
            raise ConfigError("policy could not be loaded")
        self.swaps.append(ref)
        self.ref = ref
        return "v" + ref.rsplit("@", 1)[1]

    def rollout_pool(self):
        return self.pool, {w: "fp" for w in WORKERS}

    def verifier(self):
        return None

    def log_dir(self):
        return "unused"
