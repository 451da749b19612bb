"""The thin Ray shell around `Learner`: M actors training data-parallel with torch.distributed
(gloo on CPU, nccl on GPU), created in one factory and driven by named fan-out helpers.

Weights leave through the object store: `get_weights()` returns the ObjectRef of rank 0's
state dict, which every rollout worker fetches (the transformers engine loads it directly;
a vLLM engine feeds it to its own update path).
"""

from __future__ import annotations

import socket
from dataclasses import fields
from datetime import timedelta
from typing import Any, Sequence

import ray

from ray_conductor.rl.learner import Learner, LearnerConfig, shard, with_advantages
from ray_conductor.rl.types import Trajectory


def as_learner_config(cfg: Any) -> LearnerConfig:
    """A `LearnerConfig` from itself, an OmegaConf node or a plain dict."""
    if isinstance(cfg, LearnerConfig):
        return cfg
    if cfg is None:
        return LearnerConfig()
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:
        pass
    known = {f.name for f in fields(LearnerConfig)}
    return LearnerConfig(**{k: v for k, v in dict(cfg).items() if k in known})


@ray.remote
class LearnerActor:
    """One rank: joins the process group, then holds a `Learner`."""

    def __init__(self, cfg: LearnerConfig, device: str):
        from ray_conductor.runtime import limit_torch_threads

        limit_torch_threads()
        self.cfg, self.device = cfg, device
        self.learner: Learner | None = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the rendezvous."""
        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, s.getsockname()[1]

    def setup_dist(self, master_addr: str, port: int, rank: int, world: int, backend: str) -> int:
        import torch.distributed as dist

        if world > 1:
            dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{port}",
                                    rank=rank, world_size=world, timeout=timedelta(minutes=10))
        self.learner = Learner(None, self.cfg, self.device)
        return rank

    def train_step(self, batch: list[Trajectory]) -> dict[str, float]:
        assert self.learner is not None, "setup_dist first"
        return self.learner.train_step(batch)

    def sft_step(self, batch: list[Trajectory]) -> dict[str, float]:
        assert self.learner is not None, "setup_dist first"
        return self.learner.sft_step(batch)

    def set_lr(self, lr: float) -> None:
        assert self.learner is not None
        self.learner.set_lr(lr)

    def state_dict(self, dtype: Any = None) -> dict[str, Any]:
        assert self.learner is not None
        return self.learner.state_dict(dtype)

    def save(self, path: str) -> None:
        assert self.learner is not None
        self.learner.save(path)

    def export_pretrained(self, directory: str) -> None:
        assert self.learner is not None
        self.learner.export_pretrained(directory)

    def load(self, path: str) -> None:
        assert self.learner is not None
        self.learner.load(path)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class LearnerGroup:
    """The graph's `learner` role's `LearnerActor`s as one learner: `train_step` shards the
    batch over them. `graph` (`ray_conductor.graph.GraphSpec`) builds them: resources, count
    and threads come from the one declaration."""

    def __init__(self, cfg: Any, graph: Any):
        self.cfg = as_learner_config(cfg)
        spec = graph.role("learner")
        device, backend = ("cuda", "nccl") if spec.num_gpus > 0 else ("cpu", "gloo")
        self.actors = graph.build_all("learner", self.cfg, device)
        addr, port = ray.get(self.actors[0].address.remote())
        ray.get([a.setup_dist.remote(addr, port, rank, spec.count, backend)
                 for rank, a in enumerate(self.actors)])

    @property
    def world(self) -> int:
        return len(self.actors)

    def _on_all(self, method: str, *args: Any) -> list[Any]:
        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def train_step(self, batch: Sequence[Trajectory]) -> dict[str, float]:
        """Advantages over the whole batch, then one shard per rank; the ranks' metrics are
        already global (all-reduced), so their mean is too."""
        if len(batch) < self.world:
            raise ValueError(f"a batch of {len(batch)} cannot feed {self.world} learners")
        if self.cfg.advantage == "grpo" and any(t.advantage is None for t in batch):
            batch = with_advantages(batch, self.cfg)
        refs = [a.train_step.remote(shard(batch, r, self.world)) for r, a in enumerate(self.actors)]
        results = ray.get(refs)
        return {k: sum(m[k] for m in results) / len(results) for k in results[0]}

    def sft_step(self, batch: Sequence[Trajectory]) -> dict[str, float]:
        """One supervised step on `batch`, sharded like `train_step`."""
        if len(batch) < self.world:
            raise ValueError(f"a batch of {len(batch)} cannot feed {self.world} learners")
        results = ray.get([a.sft_step.remote(shard(batch, r, self.world))
                           for r, a in enumerate(self.actors)])
        return {k: sum(m[k] for m in results) / len(results) for k in results[0]}

    def set_lr(self, lr: float) -> None:
        self._on_all("set_lr", lr)

    def get_weights(self, dtype: Any = None) -> ray.ObjectRef:
        """ObjectRef of rank 0's state dict (all ranks hold the same weights), in the dtype the
        learner trains in (bf16 when `cfg.bf16`: half the bytes through the object store; the
        engines cast on load). Multi-GPU clusters could broadcast over NCCL instead; see
        configs/train_gpu.yaml."""
        if dtype is None and self.cfg.bf16:
            import torch

            dtype = torch.bfloat16
        return self.actors[0].state_dict.remote(dtype)

    def save(self, path: str) -> None:
        ray.get(self.actors[0].save.remote(path))

    def export_pretrained(self, directory: str) -> None:
        ray.get(self.actors[0].export_pretrained.remote(directory))

    def load(self, path: str) -> None:
        self._on_all("load", path)

    def shutdown(self) -> None:
        self._on_all("shutdown")
        for a in self.actors:
            ray.kill(a)
        self.actors = []
