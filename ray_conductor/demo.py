"""`ray-conductor demo` (`make demo`): the server on the embedded default, a handful of
recorded test questions through the official `openai` client, then the served policy judged
beside the baselines by an evaluation. It sits above both `serve` and `eval`, which never
import each other."""

from __future__ import annotations

from typing import Any

from ray_conductor.errors import ConfigError
from ray_conductor.serve.command import (
    banner,
    demo_questions,
    example_question,
    free_port,
    shutdown_line,
    start,
    stop,
)
from ray_conductor.serve.config import as_serve_config, served_policies


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
