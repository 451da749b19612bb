"""The serving graph in one function, `build_app(cfg)`: the FastAPI ingress, which hosts the
served policies, with the planner deployment bound into it when an LM conductor is served,
as Ray Serve LLM's builder composes its app. `app_builder` is the same for a Serve config's
`import_path` (`serve deploy cluster/serve/conductor.yaml`).

The app is deployed declaratively (`deploy`: what `serve deploy` sends to the controller), so
that a new `user_config` is a lightweight update: `swap_policy` points the ingress (and, for
an LM conductor, the planner) at another policy version and `rollback_policy` steps a
registry back, both without restarting a replica.

Where the app is built (`prepare`), its outputs (the traffic log, the key limits' state) and
the policy references it serves are resolved under `storage` (`ray_conductor.storage`), so
every replica reads and writes absolute paths whatever its own working directory; a model
that serves an empty registry gets its `seed` policy published there first, and a reference
that names nothing fails the build (`serve status` says why).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from ray_conductor.errors import ConfigError
from ray_conductor.serve.config import (
    ServeConfig,
    as_serve_config,
    served_policies,
    to_plain,
)

IMPORT_PATH = "ray_conductor.serve.app:app_builder"
PLANNER, INGRESS = "Planner", "Ingress"
SHUTDOWN_WAIT_LOOP_S = 0.5  # a deleted replica checks this often whether requests are done
SERVE_OUTPUTS = ("log_dir", "limits.state_file", "demo.eval_out")  # under storage
SERVE_INPUTS = ("policy", "policies", "seed")  # policy references, absolute


def pool_config(cfg: ServeConfig) -> dict[str, Any]:
    """The workers the app runs on: a worker YAML (live), else replay workers over `pool`
    with the recorded prices."""
    from ray_conductor.graph import worker_pool_config

    if not cfg.workers and not cfg.pool:
        raise ConfigError("serve needs workers: a replay pool (pool=demo) or a worker YAML "
                          "(workers=FILE)")
    data = None
    if not cfg.workers:
        from ray_conductor.data.pools import load_pool

        data = load_pool(cfg.pool, cfg.data_dir)  # type: ignore[arg-type]
    return asdict(worker_pool_config(cfg, data))


def place_serve(cfg: ServeConfig) -> Any:
    """Resolve the config's storage, traffic log and policy references in place (absolute
    paths); the `Storage`."""
    from ray_conductor.storage import place

    return place(cfg, SERVE_OUTPUTS, SERVE_INPUTS, remote_ok=False,
                 command="serving (its traffic log)").storage


def prepare(cfg: Any, keys: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What both deployments are built from: the config without API keys (its paths resolved
    under storage), the worker pool config, the key records (digests, never keys; None: read
    them from the config's file and variable where the app runs), and the first user_config
    (pinned versions; a seeded model follows its registry)."""
    from ray_conductor.serve.policies import pin

    cfg = as_serve_config(cfg)
    place_serve(cfg)
    policies = served_policies(cfg)
    if not policies:
        raise ConfigError("serve needs at least one policy: policies={conductor: knn}")
    seed_registries(cfg.seed, policies)
    for name, ref in policies.items():
        check_reference(name, ref)
    # a seeded model follows its registry: each replica resolves the promoted version when
    # it starts, so a redeploy or a new cluster (a RayService upgrade) keeps the promotions
    refs = {n: r if n in cfg.seed else pin(r) for n, r in policies.items()}
    return {"config": to_plain(cfg), "pool_config": pool_config(cfg), "keys": keys,
            "user_config": {"policies": refs}}


def check_reference(model: str, ref: str) -> None:
    """Refuse, where the app is built, a reference that names a file or version that is not
    there (a `serve deploy` with it fails with this reason, in `serve status`); what cannot
    be checked without loading (an LM conductor) is left to the replicas."""
    from pathlib import Path

    from ray_conductor.policy.registry import resolve_policy

    kind, _, path = ref.partition(":")
    if kind == "registry":
        resolve_policy(ref)  # a missing registry, version or promoted pointer: ConfigError
    elif kind == "lite" and path != "default" and not Path(path).is_dir():
        raise ConfigError(f"policies.{model}={ref}: no lite policy directory at {path} (paths "
                          "are under storage; train one with `ray-conductor train-lite`)")
    elif kind == "scripted" and not Path(path).is_file():
        raise ConfigError(f"policies.{model}={ref}: no plan file at {path}")


def seed_registries(seed: dict[str, str], policies: dict[str, str]) -> list[str]:
    """Publish and promote `seed[model]` into the registry `model` serves, where that
    registry holds no version yet; the models seeded."""
    from ray_conductor.policy.registry import PolicyRegistry

    done = []
    for model, ref in (seed or {}).items():
        served = policies.get(model, "")
        if not served.startswith("registry:") or "@" in served:
            raise ConfigError(f"seed.{model}={ref}: a seed goes into the registry a model "
                              f"serves unpinned (policies.{model}=registry:DIR); {model!r} "
                              f"serves {served or 'nothing'!r}")
        reg = PolicyRegistry(served[len("registry:"):])
        if reg.versions():
            continue
        path, kind = _seed_source(ref)
        pv = reg.publish(path, kind=kind, meta={"source": ref, "seeded_by": "serve"})
        reg.promote(pv.version, reason=f"seeded from {ref}: the registry held no version")
        done.append(model)
    return done


def _seed_source(ref: str) -> tuple[str, str]:
    """(directory, kind) of a seed policy: lite:DIR (lite:default), registry:DIR[@N], or an
    LM conductor directory."""
    from pathlib import Path

    from ray_conductor.policy.registry import resolve_policy

    if ref.startswith("lite:"):
        from ray_conductor.lite import default_policy_dir

        path = ref[len("lite:"):]
        return (str(default_policy_dir()) if path == "default" else path), "lite"
    if ref.startswith("registry:"):
        path, pv = resolve_policy(ref)
        return path, pv.kind if pv else "lm"
    if (Path(ref) / "config.json").is_file():
        return ref, "lm"
    raise ConfigError(f"seed policy {ref!r}: give lite:DIR, registry:DIR[@N] or an LM "
                      "conductor directory")


def lm_policies(user_config: dict[str, Any]) -> dict[str, str]:
    """The policies the planner deployment serves: the LM conductors."""
    from ray_conductor.serve.policies import policy_kind

    return {n: r for n, r in (user_config.get("policies") or {}).items()
            if policy_kind(r) == "lm"}


def serving_graph(cfg: ServeConfig) -> Any:
    """The app's `GraphSpec`: its roles from `graph`, the ingress from `ingress`."""
    from ray_conductor.graph import GraphSpec

    return GraphSpec.from_config(cfg.graph, cfg.ray.namespace, ingress=cfg.ingress)


def build_app(cfg: Any, settings: dict[str, Any] | None = None) -> Any:
    """The app, from the graph: the shared worker proxies, the key limits actor (when keys
    are configured) and the traffic writer are built here, through the graph, and handed to
    `Ingress.bind(planner, settings, pool, limits, traffic)`; the planner `Planner.bind(...)`
    when an LM conductor is served (else None). Replicas create no actor."""
    from ray_conductor.graph import worker_pool
    from ray_conductor.serve.actors import limits_actor, traffic_actor
    from ray_conductor.serve.config import limits_state_path
    from ray_conductor.serve.ingress import Ingress
    from ray_conductor.serve.keys import KeyRing, load_keys

    cfg = as_serve_config(cfg)
    settings = settings if settings is not None else prepare(cfg)
    spec = serving_graph(cfg)
    lm = lm_policies(settings["user_config"])
    planner = _planner_deployment(spec, cfg, settings, lm) if lm else None
    pool = worker_pool(cfg, None, "serve", spec=spec, pool_cfg=settings["pool_config"])
    records = settings.get("keys")
    if records is None:  # deployed from a YAML: the keys come from its file or variable
        records = [r.to_dict() for r in load_keys(cfg.api_keys, cfg.api_keys_file,
                                                  cfg.api_keys_env)]
        settings = {**settings, "keys": records}
    limits, keys = None, KeyRing(records)
    if keys.enabled:
        per_key = {r.key_id: {"requests_per_minute": r.requests_per_minute,
                              "dollars_per_day": r.dollars_per_day} for r in keys.records()}
        default = {"requests_per_minute": cfg.limits.requests_per_minute,
                   "dollars_per_day": cfg.limits.dollars_per_day}
        limits = limits_actor(spec, cfg.app_name, per_key, default, limits_state_path(cfg))
    traffic = traffic_actor(spec, cfg.app_name, cfg.log_dir, cfg.log_buffer_rows,
                            cfg.log_flush_s)
    ing = spec.role("ingress")
    return Ingress.options(
        max_ongoing_requests=ing.max_concurrency,
        graceful_shutdown_wait_loop_s=SHUTDOWN_WAIT_LOOP_S,
        autoscaling_config={"min_replicas": ing.count, "max_replicas": ing.max_count,
                            "target_ongoing_requests": cfg.ingress.target_ongoing_requests},
        ray_actor_options=spec.serve_options("ingress"),
        user_config=settings["user_config"]).bind(planner, settings, pool, limits, traffic)


def _planner_deployment(spec: Any, cfg: ServeConfig, settings: dict[str, Any],
                        lm: dict[str, str]) -> Any:
    from ray_conductor.serve.planner import Planner

    role = spec.role("planner")
    return Planner.options(
        num_replicas=role.count, max_ongoing_requests=role.max_concurrency,
        ray_actor_options=spec.serve_options("planner"), user_config={"policies": lm},
        graceful_shutdown_wait_loop_s=SHUTDOWN_WAIT_LOOP_S).bind(settings)


def app_builder(args: dict[str, Any]) -> Any:
    """Serve's application builder: `args` is `prepare`'s output, or `{"config": {...}}`
    (a hand-written Serve config), from which the rest is prepared where the app is built."""
    args = dict(args or {})
    if "pool_config" not in args or "user_config" not in args:
        args = prepare(args.get("config") or {})
    return build_app(args["config"], args)


def app_schema(cfg: ServeConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """The app as one entry of a Serve config (`applications:`)."""
    deployments = [{"name": INGRESS, "user_config": settings["user_config"]}]
    lm = lm_policies(settings["user_config"])
    if lm:
        deployments.append({"name": PLANNER, "user_config": {"policies": lm}})
    return {"name": cfg.app_name, "route_prefix": cfg.route_prefix, "import_path": IMPORT_PATH,
            "args": settings, "deployments": deployments}


# -- the running app (through the Serve controller) --------------------------------------------


def _client() -> Any:
    """Serve's controller client: the Python twin of `serve deploy` / `serve config`."""
    from ray.serve.context import _get_global_client

    return _get_global_client()


def _declarative_apps() -> dict[str, dict[str, Any]]:
    details = _client().get_serve_details()
    return {name: app["deployed_app_config"]
            for name, app in (details.get("applications") or {}).items()
            if app.get("source") == "declarative" and app.get("deployed_app_config")}


def apply(apps: dict[str, dict[str, Any]]) -> None:
    """Deploy `apps` (name -> app schema) beside the other declaratively deployed apps: the
    controller applies a whole config, so the others are sent unchanged."""
    from ray.serve.schema import ServeDeploySchema

    every = {**_declarative_apps(), **apps}
    _client().deploy_apps(ServeDeploySchema(applications=list(every.values())))


def wait_running(app: str, timeout_s: float = 600.0) -> None:
    """Until `app` is RUNNING; `ConfigError` with the real cause if its deploy failed (a
    replica's error, dug out of Serve's messages, not "failed to update the deployments")."""
    from ray import serve

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        status = serve.status().applications.get(app)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            messages = [status.message or ""] + [d.message or "" for d in
                                                 (status.deployments or {}).values()]
            raise ConfigError(f"serve app {app!r} failed to deploy: "
                              f"{deploy_cause(messages) or status.status}")
        time.sleep(0.5)
    raise ConfigError(f"serve app {app!r} is not running after {timeout_s:g}s; `serve status` "
                      "says why")


def deploy_cause(messages: list[str]) -> str:
    """The line that says why: our own errors (`ConfigError: ...`) first, else the last
    `...Error: ...` line of a replica's traceback, else the last line."""
    lines = [ln.strip() for m in messages for ln in m.splitlines() if ln.strip()]
    for marks in (("ConfigError: ",), ("Error: ", "Exception: ")):
        hits = [ln for ln in lines if any(k in ln for k in marks)]
        if hits:
            last = hits[-1]
            return last[last.index(next(k for k in marks if k in last)):][:600]
    return lines[-1][:600] if lines else ""


def _ingress(app: str) -> Any:
    from ray import serve

    return serve.get_deployment_handle(INGRESS, app_name=app)


def served(app: str) -> dict[str, dict[str, Any]]:
    """The live policies of a running app: name -> {policy, policy_version, kind, ...}."""
    return _ingress(app).describe.remote().result()


def swap_policy(app: str, model: str, ref: str, timeout_s: float = 600.0) -> str:
    """Serve policy `ref` as `model` on the running `app` (a lightweight `user_config` update:
    no replica restarts; requests already planning finish on the version they started on).
    Returns the new version. A reference that fails to load leaves the live version serving,
    puts the config back, and raises `ConfigError` with the reason."""
    from ray import serve

    from ray_conductor.serve.policies import pin
    from ray_conductor.storage import resolve_reference, resolve_storage

    apps = _declarative_apps()
    if app not in apps:
        raise ConfigError(f"no declaratively deployed serve app {app!r} is running "
                          f"(running: {sorted(apps)})")
    before = apps[app]
    storage = as_serve_config((before.get("args") or {}).get("config") or {}).storage
    pinned = pin(resolve_reference(ref, resolve_storage(storage)))
    try:
        after = _with_policy(before, model, pinned, lambda: {
            n: str(d["policy"]) for n, d in served(app).items()})
    except ConfigError as e:
        raise ConfigError(f"policy {pinned!r} could not be loaded, still serving the previous "
                          f"version: {e.message}") from None
    apply({app: after})
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        live = served(app).get(model) or {}
        status = serve.status().applications.get(app)
        if live.get("policy") == pinned and status is not None and status.status == "RUNNING":
            return str(live["policy_version"])
        who = _ingress(app).whoami.remote().result()
        error = who.get("swap_error") or (who.get("planner") or {}).get("swap_error")
        if error and pinned in error:
            apply({app: before})
            raise ConfigError(f"policy {pinned!r} could not be loaded, still serving the "
                              f"previous version: {error}")
        time.sleep(0.25)
    raise ConfigError(f"app {app!r} did not load {pinned!r} within {timeout_s:g}s")


def _with_policy(schema: dict[str, Any], model: str, ref: str,
                 live: Any = dict) -> dict[str, Any]:
    """`schema` serving `ref` as `model`: in the ingress's policies, and in the planner's
    when it is an LM conductor (an app without a planner cannot take one). The other models
    as the schema names them, or as `live()` serves them when it names none (a hand-written
    Serve config leaves the user_config to the app builder)."""
    from ray_conductor.serve.policies import policy_kind

    out = dict(schema)
    deps = [dict(d) for d in out.get("deployments") or []]

    def entry(name: str) -> dict[str, Any] | None:
        return next((d for d in deps if d.get("name") == name), None)

    lm = policy_kind(ref) == "lm"
    planner = entry(PLANNER)
    if lm and planner is None:
        raise ConfigError(f"policy {ref!r} is an LM conductor, which plans in the planner "
                          "deployment, and this app has none (it serves no LM conductor): "
                          "restart serve with an LM conductor among its policies")
    ingress = entry(INGRESS)
    if ingress is None:
        ingress = {"name": INGRESS}
        deps.append(ingress)
    for d, keep in ((ingress, True), (planner, lm)):
        if d is None:
            continue
        uc = dict(d.get("user_config") or {})
        named = dict(uc.get("policies") or {}) or {
            k: v for k, v in live().items() if d is ingress or policy_kind(v) == "lm"}
        policies = {k: v for k, v in named.items() if k != model}
        uc["policies"] = {**policies, model: ref} if keep else policies
        d["user_config"] = uc
    out["deployments"] = deps
    return out


def _registry_of(app: str, model: str) -> Any:
    from ray_conductor.policy.registry import PolicyRegistry

    ref = (served(app).get(model) or {}).get("policy", "")
    if not ref.startswith("registry:"):
        raise ConfigError(f"model {model!r} serves {ref!r}, not a registry policy: promote and "
                          "roll back need registry:DIR; use swap_policy to serve another "
                          "reference")
    return PolicyRegistry(ref[len("registry:"):].rsplit("@", 1)[0])


def promote_policy(app: str, model: str, version: int, reason: str = "") -> str:
    """Promote registry version `version` and serve it as `model`."""
    reg = _registry_of(app, model)
    pv = reg.promote(version, reason=reason)
    return swap_policy(app, model, f"registry:{reg.root}@{pv.version}")


def rollback_policy(app: str, model: str, reason: str = "") -> str:
    """Roll the registry behind `model` back to the version promoted before, and serve it."""
    reg = _registry_of(app, model)
    pv = reg.rollback(reason=reason)
    return swap_policy(app, model, f"registry:{reg.root}@{pv.version}")
