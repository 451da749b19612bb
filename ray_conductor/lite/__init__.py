"""The lite conductor: a small policy network over a frozen question embedding and the state
of the workflow so far, choosing each turn to call a worker, vote, or stop.

Owns: the replay table as arrays (`table`), episode rules and state features (`episode`),
the gymnasium environment (`env`), the policy/value network and embedding projection (`net`),
fixed cascades and the supervised selector (`programs`, `selector`), behaviour cloning
(`bc`), `LiteConductor` (offline rollouts, live turn-by-turn runs emitting `Workflow` and
`Trace`, save/load, with the policy files' schema in `schema`), and training with RLlib PPO
(`ppo`, `rllib_module`, `train`).
Must not import: `rl`, `policy`, `serve` or `graph`; Ray and RLlib only inside `ppo`,
`rllib_module` and `train_lite`, so loading and serving a lite policy needs torch and numpy.
"""

from ray_conductor.lite.conductor import LiteConductor, Rollouts
from ray_conductor.lite.selector import Selector, SelectorConfig, fit_selector

__all__ = ["LiteConductor", "LiteTrainConfig", "Rollouts", "Selector", "SelectorConfig",
           "default_policy_dir", "fit_selector", "train_lite"]


def __getattr__(name: str):
    """`train_lite` and its config load lazily: they pull in the pool importers."""
    if name in ("train_lite", "LiteTrainConfig"):
        from ray_conductor.lite import train

        return getattr(train, name)
    raise AttributeError(name)


def default_policy_dir():
    """The shipped lite policy for the demo pool (`ray_conductor/assets/lite_demo`)."""
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "assets" / "lite_demo"
