"""The worker pool the app runs workflows on: the shared, named `WorkerProxy` actors of the one
graph declaration, called at `serve` priority. Not Serve deployments: replicas would split a
worker's single rate limit.

A `RayWorkerPool` already cancels a proxy call whose caller was cancelled (a client that
disconnected), so the call leaves the worker's queue at once.
"""

from __future__ import annotations

from typing import Any

from ray_conductor.workers.ray_pool import RayWorkerPool


def serving_pool(namespace: str, graph: Any, pool_config: Any) -> RayWorkerPool:
    """The shared proxies (created, or reused when their config matches) at serve priority."""
    from ray_conductor.graph import GraphSpec, make_ray_pool

    return make_ray_pool(GraphSpec.from_config(graph, namespace), pool_config, priority="serve")
