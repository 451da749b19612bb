"""The serving tier: an OpenAI-compatible Ray Serve app in front of the conductor.

Owns: the app (`build_app`: a FastAPI ingress bound to a planner deployment), the wire format
(`protocol`), request handling (`gateway`: auth, routing by model, limits, running, usage,
trace), API keys and per-key limits, the traffic log (`traffic`: Parquet, with feedback) and
policy hot-swap (`swap_policy`, `promote_policy`, `rollback_policy`), and the `serve`
command (`command`; the demo, which also evaluates, is `ray_conductor.demo`). Workflows run through the shared `WorkerProxy` actors of the one
graph declaration (`ray_conductor.graph`), at `serve` priority.

May import: graph, policy (the baselines too), workflow, workers, data, features; the lite
conductor only inside its policy hook. Must not import training code (`rl`), nor `eval`. The pure core
(protocol, gateway, ports, keys, limits, traffic, policies, results, questions) imports
no Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ServeConfig", "build_app", "promote_policy", "read_feedback",
           "read_traffic", "rollback_policy", "run_serve", "served", "start", "stop",
           "swap_policy"]

_HOMES = {
    "ServeConfig": "config", "build_app": "app", "swap_policy": "app", "served": "app",
    "promote_policy": "app", "rollback_policy": "app", "run_serve": "command",
    "start": "command", "stop": "command", "read_traffic": "traffic",
    "read_feedback": "traffic",
}

if TYPE_CHECKING:
    from ray_conductor.serve.app import (
        build_app,
        promote_policy,
        rollback_policy,
        served,
        swap_policy,
    )
    from ray_conductor.serve.command import run_serve, start, stop
    from ray_conductor.serve.config import ServeConfig
    from ray_conductor.serve.traffic import read_feedback, read_traffic


def __getattr__(name: str) -> Any:
    """Lazy exports: `import ray_conductor.serve` imports neither Ray Serve nor FastAPI."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
