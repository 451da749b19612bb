"""The running Serve app as the online loop sees it (`ServeApp`): what it was deployed with
(its traffic log, worker pool and replay pool, read from the Serve controller, so the loop
needs no copy of the serve config), which policy each model serves, the hot-swap, and the
shared worker proxies called at `rollout` priority.

The deployed worker config can change under the loop (an operator redeploys the app with
another pool): the rollout pool is looked up every round, the verifier reloaded when the
replay pool changes.

An app deployed from a hand-written Serve config (`serve deploy cluster/serve/conductor.yaml`,
a RayService) carries only `args.config`; its worker pool is then prepared here from that
config as the app builder prepared it, and its traffic log is where its writer writes.
"""

from __future__ import annotations

import json
from typing import Any

from ray_conductor.errors import ConductorError, ConfigError


class ServeApp:
    def __init__(self, app: str, *, verifier: str = "pool"):
        self.app, self.verifier_kind = app, verifier
        self._data: tuple[str, Any] | None = None
        self._prepared: tuple[str, dict[str, Any]] | None = None

    def settings(self) -> dict[str, Any]:
        """The app's deployed arguments: `config` (the ServeConfig as plain data, no keys, its
        paths resolved under storage) and `pool_config` (its workers)."""
        from ray.serve.exceptions import RayServeException

        from ray_conductor.serve.app import _declarative_apps

        try:
            apps = _declarative_apps()
        except RayServeException:  # no Serve instance on this cluster at all
            apps = {}
        if self.app not in apps:
            raise ConfigError(f"no Serve app {self.app!r} is running on this Ray cluster "
                              f"(running: {sorted(apps) or 'none'}): start it with "
                              "`ray-conductor serve`, or name it with app=...")
        args = dict(apps[self.app].get("args") or {})
        if "pool_config" in args and "config" in args:
            return args
        tag = json.dumps(args, sort_keys=True, default=str)
        if self._prepared is None or self._prepared[0] != tag:
            self._prepared = (tag, self._prepare(args))
        return self._prepared[1]

    def _prepare(self, args: dict[str, Any]) -> dict[str, Any]:
        """`args.config` as the app builder prepared it (its workers, its resolved paths)."""
        from ray_conductor.serve.app import place_serve, pool_config
        from ray_conductor.serve.config import as_serve_config, to_plain

        if not isinstance(args.get("config"), dict):
            raise ConfigError(f"the Serve app {self.app!r} has no args.config (what the loop "
                              "reads its workers, replay pool and traffic log from): deploy it "
                              "with `ray-conductor serve` or a Serve config like "
                              "cluster/serve/conductor.yaml")
        try:
            cfg = as_serve_config(args["config"])
            place_serve(cfg)
            return {**args, "config": to_plain(cfg), "pool_config": pool_config(cfg)}
        except ConductorError as e:
            raise ConfigError(f"the Serve app {self.app!r} carries no args.pool_config, and "
                              f"its workers cannot be prepared here from args.config: {e}") \
                from None

    def config(self) -> Any:
        from ray_conductor.serve.config import as_serve_config

        return as_serve_config(self.settings().get("config") or {})

    def reference(self, model: str) -> str:
        """The policy reference `model` serves now (e.g. registry:DIR@3)."""
        from ray_conductor.serve.app import served

        live = served(self.app)
        if model not in live:
            raise ConfigError(f"the app {self.app!r} serves no model {model!r} (it serves "
                              f"{sorted(live)}); name one with model=...")
        return str(live[model]["policy"])

    def swap(self, model: str, ref: str) -> str:
        from ray_conductor.serve.app import swap_policy

        return swap_policy(self.app, model, ref)

    def rollout_pool(self) -> tuple[Any, dict[str, str]]:
        """The shared worker proxies at `rollout` priority, and each worker's config
        fingerprint (the answer cache's key). Looked up again every round: a redeployed app
        has new proxy actors under the same names, and old handles would only fail."""
        from ray_conductor.graph import worker_pool
        from ray_conductor.workers.config import as_pool_config, fingerprint

        pool_cfg = as_pool_config(self.settings()["pool_config"])
        pool = worker_pool(self.config(), None, "rollout", pool_cfg=pool_cfg)
        prints = {w.name: fingerprint(w, pool_cfg.replay, pool_cfg.queue_timeout_s)
                  for w in pool_cfg.workers}
        return pool, prints

    def verifier(self) -> Any:
        """The app's replay pool (`ReplayData`), which judges its recorded questions; None
        with `verifier=none` or live workers without a pool."""
        cfg = self.config()
        if self.verifier_kind == "none" or not cfg.pool:
            return None
        tag = f"{cfg.pool}|{cfg.data_dir}"
        if self._data is None or self._data[0] != tag:
            from ray_conductor.data.pools import load_pool

            self._data = (tag, load_pool(cfg.pool, cfg.data_dir))
        return self._data[1]

    def log_dir(self) -> str:
        """Where the app's traffic writer writes (its config's log_dir when it has none)."""
        import ray

        from ray_conductor.serve.actors import app_actor

        cfg = self.config()
        try:
            writer = app_actor(self.app, "traffic", cfg.ray.namespace)
            return str(ray.get(writer.stats.remote(), timeout=30)["root"])
        except (ValueError, ray.exceptions.RayError):  # none (yet), or gone
            return str(cfg.log_dir)

