"""The online loop beside the Serve app: `OnlineRetrainer`, a detached Ray actor named
`online/<app>/<model>` in the app's namespace, running the same `Retrainer` rounds in a
background thread. A thin shell: `round` (one round now, for operators and tests),
`status`, `stop`. It runs niced, and its PPO takes one torch thread, so serving keeps the
CPU when both want it; its worker calls go at `rollout` priority."""

from __future__ import annotations

import os
import threading
from typing import Any

import ray

from ray_conductor.online.config import RetrainConfig


@ray.remote
class OnlineRetrainer:
    def __init__(self, cfg: dict[str, Any], nice: int = 10):
        import torch

        from ray_conductor.online.config import as_retrain_config
        from ray_conductor.online.loop import Retrainer

        os.nice(nice)
        self.cfg = as_retrain_config(cfg)
        torch.set_num_threads(self.cfg.training.torch_threads)
        self.loop = Retrainer.over_app(self.cfg)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Run rounds every `poll_s` in the background (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="online-loop", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        self.loop.run(stop=self._stop.is_set)

    def round(self, force: bool = False) -> list[dict[str, Any]]:
        return self.loop.round(force)

    def status(self) -> dict[str, Any]:
        s = self.loop.state
        return {"running": self._thread is not None and self._thread.is_alive(),
                "rounds": s.rounds, "watch": None if s.watch is None else vars(s.watch),
                "decisions": self.loop.decisions.read()[-5:]}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=600)


def actor_name(app: str, model: str) -> str:
    return f"online/{app}/{model}"


def gpus_for(cfg: RetrainConfig) -> int:
    """An LM conductor's GRPO on a GPU node (`training.lm.device=cuda`) asks Ray for one GPU;
    the lite tier's PPO, and an LM on the CPU, need none."""
    return 1 if str(cfg.training.lm.device).startswith("cuda") else 0


def build_retrainer(cfg: RetrainConfig, graph: Any) -> Any:
    """The named actor beside the app (created, or found), from the graph's
    `online_retrainer` role; its GPU follows the LM's device (`gpus_for`)."""
    from dataclasses import asdict

    return graph.build("online_retrainer", asdict(cfg), name=actor_name(cfg.app, cfg.model),
                       num_gpus=gpus_for(cfg))


def start_retrainer(cfg: RetrainConfig) -> str:
    """Build the actor from the app's own graph declaration (its `ServeConfig.graph`) and
    start its loop; its name."""
    from ray_conductor.graph import GraphSpec
    from ray_conductor.online.serving import ServeApp

    app = ServeApp(cfg.app).config()
    handle = build_retrainer(cfg, GraphSpec.from_config(app.graph, cfg.ray.namespace))
    ray.get(handle.start.remote(), timeout=600)
    return actor_name(cfg.app, cfg.model)
