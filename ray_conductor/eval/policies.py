"""The policies an evaluation judges: the baselines, the LM and lite conductors as policies.
They live in `ray_conductor.policy.baselines` (serving hosts them too, and serving must not
import eval); named here for the evaluation's callers."""

from ray_conductor.policy.baselines import (
    SUBTASK,
    Cheapest,
    ConductorPolicy,
    KNNRouter,
    LitePolicy,
    Oracle,
    Plan,
    Policy,
    RandomRouter,
    SingleWorker,
    make_policies,
)

__all__ = ["SUBTASK", "Cheapest", "ConductorPolicy", "KNNRouter", "LitePolicy", "Oracle", "Plan",
           "Policy", "RandomRouter", "SingleWorker", "make_policies"]
