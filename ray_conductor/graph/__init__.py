"""The actor graph: the one declaration of which Ray actors exist, under which names, with
which resources and restart policy (`spec`), and the one place they are created: worker
proxies and the worker pool every command runs on (`proxies`), and every other role through
`GraphSpec.build` (rollouts, learners, key limits, traffic writer, online retrainer). Serve
deployments (ingress, planner) and RLlib's runners and learners are instantiated by Serve
and RLlib from the settings this spec gives them.

Must not import: serve, online, rl, eval, lite, record, policy (roles name their classes as
"module:Class" strings, imported only when built).
"""

from ray_conductor.graph.proxies import (
    build_worker_proxies,
    make_ray_pool,
    proxy_groups,
    proxy_name,
    running_proxies,
    stop_worker_proxies,
    worker_pool,
    worker_pool_config,
)
from ray_conductor.graph.spec import (
    ACTOR_CLASSES,
    PROXY_ROLE,
    ActorSpec,
    GraphConfig,
    GraphSpec,
    IngressConfig,
    RLlibRoleConfig,
    RoleConfig,
    fan_out,
    ppo_graph,
)

__all__ = ["ACTOR_CLASSES", "PROXY_ROLE", "ActorSpec", "GraphConfig", "GraphSpec",
           "IngressConfig", "RLlibRoleConfig", "RoleConfig", "build_worker_proxies", "fan_out", "make_ray_pool",
           "ppo_graph", "proxy_groups", "proxy_name", "running_proxies", "stop_worker_proxies",
           "worker_pool", "worker_pool_config"]
