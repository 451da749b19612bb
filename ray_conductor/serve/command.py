"""`ray-conductor serve` (`run_serve`) and `make demo` (`demo`): start local Ray and the app on
the embedded default (replay workers over the demo pool, the kNN router as model
`conductor`), print where it listens with a ready-to-paste `curl` and Python snippet, serve
until Ctrl-C, and shut down cleanly (the traffic log flushed, its row count said).

With live workers (`workers=FILE`) and the default policies, which were trained on the demo
pool's workers, the app serves a pinned default workflow instead: the strongest worker (by
price), named in the banner. A policy that cannot be served on the workers is a one-line
error before Ray starts (`check_policies`).

Stopping harms nobody else on the cluster: only this app is deleted (`serve.delete(name)`,
never `serve.shutdown()`, which removes every app), then its named actors (traffic writer,
key limits) are flushed and removed, and Ray is shut down only if this process started it.
As a Ray job (`ray job stop`: SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S, 3 s by
default) all of it fits in that window; a job that needs longer sets that variable in its
runtime env (`env_vars`), which Ray's job supervisor reads, and the stop uses what it gives.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from ray_conductor.errors import ConfigError
from ray_conductor.serve.config import (
    DEFAULT_POLICIES,
    ServeConfig,
    as_serve_config,
    served_policies,
)

__all__ = ["Running", "ServeConfig", "run_serve", "start", "stop"]
LOOPBACK = "127.0.0.1"


@dataclass
class Running:
    """A started app: where it listens, and what was said about it at start."""

    cfg: ServeConfig
    url: str  # the app's root, e.g. http://127.0.0.1:8000 (the API is under /v1)
    keys_enabled: bool
    notices: list[str] = field(default_factory=list)
    started_ray: bool = False

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def check_policies(cfg: ServeConfig) -> list[str]:
    """Settle what is served before anything starts: with live workers, a policy left at its
    default (trained on the demo pool's workers) that does not fit them is dropped, and
    `conductor` then serves a pinned default workflow (the notice says which); then every
    policy is checked against the workers, a `ConfigError` naming the one that cannot be
    served, why, and what to do."""
    from ray_conductor.serve.app import pool_config
    from ray_conductor.serve.policies import check_policy
    from ray_conductor.workers.config import as_pool_config

    workers = as_pool_config(pool_config(cfg)).workers
    names = [w.name for w in workers]
    notices = []
    if cfg.workers:
        chosen = {"conductor"} if cfg.policy else set()  # `policy=` is the user's choice
        misfit = [n for n, r in served_policies(cfg).items() if n not in chosen
                  and DEFAULT_POLICIES.get(n) == r and not _fits(n, r, names, cfg.pool)]
        cfg.policies = {n: r for n, r in cfg.policies.items() if n not in misfit}
        if "conductor" in misfit:
            best = strongest(workers)
            cfg.policies["conductor"] = f"pinned:{best}"
            notices.append(
                f"model 'conductor' serves a pinned default workflow: model_id = [{best!r}], "
                "the strongest worker by price (live answers are free text, so a cascade "
                "could not compare them); no trained policy fits these workers: train one "
                "(ray-conductor train-lite ...) and serve it with policy=lite:DIR")
        if [n for n in misfit if n != "conductor"]:
            notices.append(f"not served: {', '.join(n for n in misfit if n != 'conductor')} "
                           "(the shipped demo policy, trained on other workers)")
    for name, ref in served_policies(cfg).items():
        check_policy(name, ref, names, cfg.pool)
    if cfg.conductor:  # LM conductor settings: known keys, a readable program head
        from ray_conductor.policy.runner import check_overrides

        check_overrides(dict(cfg.conductor))
    return notices


def _fits(name: str, ref: str, workers: list[str], pool: str | None) -> bool:
    from ray_conductor.serve.policies import check_policy

    try:
        check_policy(name, ref, workers, pool)
        return True
    except ConfigError:
        return False


def strongest(workers: list[Any]) -> str:
    """The worker with the highest price (output, then input), the first one on a tie."""
    from ray_conductor.workers.proxy import worker_info

    infos = [worker_info(w) for w in workers]
    return max(infos, key=lambda i: (i.output_price_per_mtok, i.input_price_per_mtok,
                                     -infos.index(i))).name


def start(cfg: Any) -> Running:
    """Start (or join) Ray, create the shared worker proxies, start Serve's HTTP proxy and
    deploy the app; returns once it answers. Without API keys it binds to 127.0.0.1. What is
    served is settled and checked first (`check_policies`): a policy that cannot be served
    is a `ConfigError` before Ray starts."""
    import ray
    from ray import serve

    from ray_conductor.graph import GraphSpec, build_worker_proxies
    from ray_conductor.runtime import init_ray
    from ray_conductor.serve.app import app_schema, apply, lm_policies, prepare, wait_running
    from ray_conductor.serve.keys import load_keys

    cfg = as_serve_config(cfg)
    records = load_keys(cfg.api_keys, cfg.api_keys_file, cfg.api_keys_env)
    notices = check_policies(cfg)
    host = cfg.host
    if not records:
        if host not in (LOOPBACK, "localhost"):
            notices.append(f"host={host} ignored: no API keys are configured")
        host = LOOPBACK
        notices.append("no API keys configured: listening on 127.0.0.1 only (set api_keys, "
                       "api_keys_file or RAY_CONDUCTOR_API_KEYS to serve other machines)")
    started = not ray.is_initialized() and cfg.ray.address in ("local", "", None)
    init_ray(cfg.ray)
    settings = prepare(cfg, keys=[r.to_dict() for r in records])
    spec = GraphSpec.from_config(cfg.graph, cfg.ray.namespace)
    if lm_policies(settings["user_config"]):
        spec.check_resources(["planner"])
    build_worker_proxies(spec, settings["pool_config"])  # a bad worker config fails here
    port = cfg.port or free_port()
    _start_serve({"host": host, "port": port})
    apply({cfg.app_name: app_schema(cfg, settings)})
    wait_running(cfg.app_name)
    http = serve.context._get_global_client().http_config
    prefix = cfg.route_prefix.rstrip("/")
    return Running(cfg, f"http://{http.host}:{http.port}{prefix}", bool(records), notices,
                   started)


JOB_STOP_ENV = "RAY_JOB_STOP_WAIT_TIME_S"  # Ray's job supervisor: SIGTERM, then SIGKILL
_IN_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in a submitted job's driver


def stop_budget_s(env: Any = None) -> float:
    """How long stopping may take: inside a Ray job, the job's stop window less a second
    for the process to exit (at least 1 s); elsewhere 60 s."""
    env = os.environ if env is None else env
    if not env.get(_IN_JOB_ENV):
        return 60.0
    try:
        window = float(env.get(JOB_STOP_ENV) or 3)
    except ValueError:
        window = 3.0
    return max(1.0, window - 1.0)


def _start_serve(http_options: dict[str, Any]) -> None:
    """`serve.start`; two apps starting at once race to create Serve's controller, and the
    one that loses joins the winner's."""
    from ray import serve
    from ray.exceptions import ActorAlreadyExistsError

    for attempt in range(3):
        try:
            serve.start(http_options=http_options)
            return
        except ActorAlreadyExistsError:
            if attempt == 2:
                raise
            time.sleep(2.0)


def stop(running: Running, shutdown_ray: bool | None = None,
         budget_s: float | None = None) -> dict[str, Any]:
    """Delete this app only, then flush and remove its named actors, within `budget_s`
    (default `stop_budget_s()`); with `shutdown_ray` (default: when `start` started a local
    Ray) shut Ray down too. Returns the traffic writer's last stats."""
    import ray
    from ray import serve

    from ray_conductor.serve.actors import close_app_actors, flush_app_traffic

    cfg, ns = running.cfg, running.cfg.ray.namespace
    end = time.monotonic() + (stop_budget_s() if budget_s is None else budget_s)
    serve.delete(cfg.app_name, _blocking=False)
    # what the writer holds now first: the window may end before the replicas are gone
    stats = flush_app_traffic(cfg.app_name, ns, timeout_s=max(0.3, (end - time.monotonic())
                                                              / 2))
    while time.monotonic() < end - 0.5:  # the replicas hand their last rows to the writer
        if cfg.app_name not in serve.status().applications:
            break
        time.sleep(0.1)
    stats = close_app_actors(cfg.app_name, ns,
                             timeout_s=max(0.3, end - time.monotonic())) or stats
    if running.started_ray if shutdown_ray is None else shutdown_ray:
        ray.shutdown()
    return stats


def example_question(cfg: ServeConfig) -> str:
    """A question the app can answer: the shortest recorded test question of a replay pool."""
    if cfg.workers or not cfg.pool:
        return "What is the capital of France?"
    from ray_conductor.data.pools import load_pool

    data = load_pool(cfg.pool, cfg.data_dir)
    return min((q.query for q in data.queries("test")), key=len)


def banner(running: Running, question: str) -> str:
    """Where the app listens, what each model serves, and a curl and a Python snippet."""
    model = next(iter(running.cfg.policies or {"conductor": ""}), "conductor")
    if running.cfg.policy:
        model = "conductor"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}]})
    auth = ' -H "Authorization: Bearer $RAY_CONDUCTOR_API_KEY"' if running.keys_enabled else ""
    key = 'os.environ["RAY_CONDUCTOR_API_KEY"]' if running.keys_enabled else '"none"'
    served = ", ".join(f"{n} = {r}" for n, r in served_policies(running.cfg).items())
    lines = [f"ray-conductor serve: {running.cfg.app_name!r} is listening on {running.url}",
             f"  models: {served} (and each worker by name)",
             f"  traffic log: {running.cfg.log_dir} (storage {running.cfg.storage})",
             *[f"  note: {n}" for n in running.notices],
             "", "Try it with curl:", "",
             (f"  curl {running.base_url}/chat/completions -H 'Content-Type: application/json'"
              f"{auth} \\\n    -d {shlex.quote(body)}"),
             "", "or with the openai client:", "",
             "  import os",
             "  from openai import OpenAI",
             f"  client = OpenAI(base_url={running.base_url!r}, api_key={key})",
             f"  r = client.chat.completions.create(model={model!r}, messages=[",
             f"      {{'role': 'user', 'content': {question!r}}}])",
             "  print(r.choices[0].message.content)",
             "  print(r.model_dump()['conductor']['workflow'])  # the plan, its trace, its cost",
             "", "Models: GET /v1/models. Stop with Ctrl-C."]
    return "\n".join(lines)


def _stop_on_sigterm() -> None:
    """`ray job stop` and `kill` send SIGTERM: stop as on Ctrl-C (the log gets flushed)."""
    import signal
    import threading

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def run_serve(cfg: Any) -> Running:
    """`ray-conductor serve`: start, print the banner, serve until Ctrl-C (`blocking=false`:
    return the running app instead), then stop cleanly."""
    cfg = as_serve_config(cfg)
    if not cfg.blocking:
        running = start(cfg)
        print(banner(running, example_question(cfg)), flush=True)
        return running
    _stop_on_sigterm()  # from here on: a stop while starting cleans up as well
    running = Running(cfg, "", False)
    try:
        running = start(cfg)
        print(banner(running, example_question(cfg)), flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nstopping: flushing the traffic log ...", flush=True)
    finally:
        import ray

        print(shutdown_line(stop(running) if ray.is_initialized() else {}, cfg.log_dir),
              flush=True)
    return running


def shutdown_line(stats: dict[str, Any], log_dir: str) -> str:
    """What the traffic log got, said at shutdown: rows written, dead-lettered, lost."""
    if not stats:
        return f"traffic log: no writer was running (nothing logged under {log_dir})"
    written, dead = stats.get("written", {}), stats.get("dead_letter", {})
    line = (f"traffic log: {written.get('requests', 0)} requests and "
            f"{written.get('feedback', 0)} feedback rows written under {stats.get('root')}")
    if sum(dead.values()):
        line += f"; {sum(dead.values())} rows in its dead_letter folder (unwritable)"
    if stats.get("lost"):
        line += f"; {stats['lost']} rows LOST (the disk refused them)"
    return line


# -- make demo ---------------------------------------------------------------------------------


def demo_questions(data: Any, n: int) -> list[Any]:
    """The first `n` test questions (by id) that every worker has a recorded answer to."""
    from ray_conductor.data.selection import select_queries

    out = []
    for q in select_queries(data, "test"):
        recs = [data.record(q.query_id, m) for m in data.models]
        if all(r is not None and r.response is not None for r in recs):
            out.append(q)
        if len(out) == n:
            break
    return out
