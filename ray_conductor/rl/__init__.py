"""Training: rewards, advantages and losses, the `Learner` and its Ray `LearnerGroup`,
rollouts and the training loop.

Owns: everything that turns scored conductor outputs into weight updates.
Must not be imported by serving code (`serve`), the workflow language or the workers.
The math (`rewards`, `losses`) is pure Python/torch: no Ray, no model.
"""

from ray_conductor.rl.rewards import REWARDS, RewardConfig, register_reward, reward, verifier_for
from ray_conductor.rl.types import Trajectory

__all__ = ["REWARDS", "RewardConfig", "Trajectory", "register_reward", "reward", "verifier_for"]
