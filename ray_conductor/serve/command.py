"""`ray-conductor serve` (`run_serve`) and `make demo` (`demo`): start local Ray and the app on
the embedded default (replay workers over the demo pool, the kNN router as model
`conductor`), print where it listens with a ready-to-paste `curl` and Python snippet, serve
until Ctrl-C, and shut down cleanly (the traffic log flushed, its row count said).

With live workers (`workers=FILE`) and the default policies, which were trained on the demo
pool's workers, the app serves a pinned default workflow instead: the strongest worker (by
price), named in the banner. A policy that cannot be served on the workers is a one-line
error before Ray starts (`check_policies`).
"""

from __future__ import annotations

import json
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

__all__ = ["Running", "ServeConfig", "demo", "run_serve", "start", "stop"]
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
    started = not ray.is_initialized()
    init_ray(cfg.ray)
    settings = prepare(cfg, keys=[r.to_dict() for r in records])
    spec = GraphSpec.from_config(cfg.graph, cfg.ray.namespace)
    if lm_policies(settings["user_config"]):
        spec.check_resources(["planner"])
    build_worker_proxies(spec, settings["pool_config"])  # a bad worker config fails here
    port = cfg.port or free_port()
    serve.start(http_options={"host": host, "port": port})
    apply({cfg.app_name: app_schema(cfg, settings)})
    wait_running(cfg.app_name)
    http = serve.context._get_global_client().http_config
    prefix = cfg.route_prefix.rstrip("/")
    return Running(cfg, f"http://{http.host}:{http.port}{prefix}", bool(records), notices,
                   started)


def stop(running: Running, shutdown_ray: bool | None = None) -> dict[str, Any]:
    """Delete the app (its replicas hand their last rows to the writer), flush and stop its
    traffic writer and key limits; with `shutdown_ray` (default: when `start` started Ray)
    stop Serve and Ray too. Returns the writer's last counts."""
    import ray
    from ray import serve

    from ray_conductor.serve.actors import close_app_actors

    cfg = running.cfg
    serve.delete(cfg.app_name)
    stats = close_app_actors(cfg.app_name, cfg.ray.namespace)
    if running.started_ray if shutdown_ray is None else shutdown_ray:
        serve.shutdown()
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
    running = start(cfg)
    print(banner(running, example_question(cfg)), flush=True)
    if not cfg.blocking:
        return running
    _stop_on_sigterm()
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nstopping: flushing the traffic log ...", flush=True)
    finally:
        print(shutdown_line(stop(running), cfg.log_dir), flush=True)
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


def _show(i: int, n: int, q: Any, answer: str, ext: dict[str, Any], usage: dict[str, Any],
          correct: bool, streamed: bool) -> str:
    steps = ext.get("steps") or []
    workers = ", ".join(s["served_by"] or s["worker"] for s in steps if not s["skipped"])
    orch = ((usage.get("prompt_tokens_details") or {}).get("orchestration_input_tokens", 0)
            + (usage.get("completion_tokens_details") or {})
            .get("orchestration_output_tokens", 0))
    first = " ".join(q.query.split())
    flow = " | ".join(ext.get("workflow", "").splitlines())
    tail = " ".join(answer.split())
    more = "..." if len(first) > 110 else ""
    return "\n".join([
        f"[{i}/{n}]{' (streamed)' if streamed else ''} {first[:110]}{more}",
        f"   workflow: {flow}",
        f"   workers:  {workers}   policy version: {ext.get('policy_version')}",
        (f"   answer:   ...{tail[-90:]}   ({'correct' if correct else 'wrong'}; "
         f"reference {q.reference})"),
        (f"   tokens:   {usage['prompt_tokens']} in, {usage['completion_tokens']} out "
         f"({orch} orchestration)   cost: ${usage.get('cost', 0):.6f}   "
         f"latency: {ext.get('latency_s', 0):.2f}s")])


def _ask(client: Any, model: str, q: Any, stream: bool) -> tuple[str, dict, dict]:
    msgs = [{"role": "user", "content": q.query}]
    if not stream:
        r = client.chat.completions.create(model=model, messages=msgs).model_dump()
        return r["choices"][0]["message"]["content"], r["conductor"], r["usage"]
    text, ext, usage = "", {}, {}
    for chunk in client.chat.completions.create(model=model, messages=msgs, stream=True,
                                                stream_options={"include_usage": True}):
        d = chunk.model_dump()
        for choice in d["choices"]:
            text += choice["delta"].get("content") or ""
        ext = d.get("conductor") or ext
        usage = d.get("usage") or usage
    return text, ext, usage


def demo(cfg: Any) -> dict[str, Any]:
    """`make demo`: the server on the embedded default, a handful of recorded test questions
    through the official `openai` client (the last one streamed), each answer with its
    workflow, workers, tokens and cost; then the evaluation table and plot; then a clean
    shutdown. Returns the evaluation report."""
    try:
        from openai import OpenAI
    except ImportError:
        raise ConfigError("the demo asks through the official openai client: "
                          "pip install openai") from None

    from ray_conductor.config import load
    from ray_conductor.data.pools import load_pool
    from ray_conductor.eval.command import DEFAULT_POLICIES, EvalConfig, run_eval

    cfg = as_serve_config(cfg)
    cfg.blocking = False
    cfg.ray.log_to_driver = False  # the replicas' request logs would bury the answers
    if cfg.port == 8000:
        cfg.port = free_port()  # a demo must not fail on a busy port
    running = start(cfg)
    try:
        print(banner(running, example_question(cfg)), flush=True)
        data = load_pool(cfg.pool, cfg.data_dir)
        qs = demo_questions(data, cfg.demo.questions)
        client = OpenAI(base_url=running.base_url, api_key="none", max_retries=0)
        print(f"\nAsking {len(qs)} recorded test questions through the openai client:\n")
        for i, q in enumerate(qs, 1):
            stream = i == len(qs)
            answer, ext, usage = _ask(client, "conductor", q, stream)
            print(_show(i, len(qs), q, answer, ext, usage, data.judge(q.query_id, answer),
                        stream), flush=True)
        served = served_policies(cfg).get("conductor", "")
        policies = list(DEFAULT_POLICIES) + ([served] if served.startswith("lite:") else [])
        print(f"\nThe served policy ({served}) beside the baselines, on the whole test "
              "split:\n", flush=True)
        eval_cfg = load(EvalConfig, [f"pool={cfg.pool}", "split=test", "progress=false",
                                     f"policies=[{','.join(policies)}]",
                                     f"out={cfg.demo.eval_out}"])
        return run_eval(eval_cfg)
    finally:
        print("\nserver stopped; " + shutdown_line(stop(running), cfg.log_dir), flush=True)
