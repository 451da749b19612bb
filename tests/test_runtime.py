import torch

from ray_conductor.runtime import TORCH_THREADS_ENV, limit_torch_threads


def test_torch_threads_env_overrides_the_ray_assignment(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv(TORCH_THREADS_ENV, "3")
    try:
        limit_torch_threads()  # the env wins; no Ray context is consulted
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
