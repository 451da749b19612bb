"""Shared fixtures: one Ray cluster for the whole test run, and a fault-injecting provider.

Environment first: Ray 2.60 turns token auth on by default, litellm downloads its cost map
on import unless told to use the local copy, and outputs left relative go under `storage`
(a temporary directory for the run, never the user's ~/ray_conductor).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
if "RAY_CONDUCTOR_STORAGE" not in os.environ:  # outputs a test leaves relative: never in ~
    os.environ["RAY_CONDUCTOR_STORAGE"] = tempfile.mkdtemp(prefix="rc_test_storage.")
    atexit.register(shutil.rmtree, os.environ["RAY_CONDUCTOR_STORAGE"], True)

import pytest  # noqa: E402

from ray_conductor.testing import FaultServer  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that asks for it (started once: ~5 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False,
                 object_store_memory=300 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def fault_server_session():
    with FaultServer(seed=0) as server:
        yield server


@pytest.fixture
def fault_server(fault_server_session):
    """The session's fault server, reset to good behaviour and an empty log for each test."""
    fault_server_session.reset()
    yield fault_server_session
    fault_server_session.reset()


@pytest.fixture
def one_torch_thread():
    """Tiny nets: a second torch thread only spins against other processes on a busy machine
    (modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
