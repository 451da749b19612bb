"""From a run to an answer: the status a failed run is answered with, usage (workers plus
orchestration), and the `conductor` block (workflow and trace, cache hits included) that every
response carries. Pure: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray_conductor.errors import ServeError
from ray_conductor.serve.wire import Usage
from ray_conductor.workers.base import Completion, Message
from ray_conductor.workflow import StepTrace, Trace, Workflow, render
from ray_conductor.workflow.model import Step

PASS_THROUGH = "(pass-through: the caller's messages, unchanged)"
BUSY = ("rate_limit_timeout",)
UNAVAILABLE = ("circuit_open", "fallback_failed", "proxy_unreachable", "unknown_worker",
               "missing_api_key")


@dataclass
class Run:
    """Everything one answered request produced."""

    workflow: Workflow
    trace: Trace
    policy: str | None = None  # the served policy name; None for a pass-through
    version: str | None = None
    plan_text: str = ""
    plan_attempts: int = 0
    plan_fell_back: bool = False
    plan_errors: list[str] = field(default_factory=list)
    orchestration_input_tokens: int = 0
    orchestration_output_tokens: int = 0


def pass_through(worker: str, messages: list[Message], c: Completion) -> Run:
    """A direct call to one worker, as a one-step run (so it is answered, traced and logged
    like a workflow)."""
    last = messages[-1]["content"] if messages else ""
    st = StepTrace(index=0, worker=worker, subtask=PASS_THROUGH, access=[], end_s=c.latency_s,
                   text=c.text or "", input_tokens=c.input_tokens,
                   output_tokens=c.output_tokens, cost=c.cost, error=c.error,
                   error_code=c.error_code, served_by=c.served_by,
                   queue_wait_s=c.queue_wait_s, attempts=len(c.attempts) or 1,
                   cached=c.cached, first_token_s=c.meta.get("first_token_s"))
    trace = Trace(question=last, steps=[st], answer="" if c.error else (c.text or ""),
                  wall_s=c.latency_s)
    return Run(Workflow((Step(worker, PASS_THROUGH, ()),)), trace)


def failure(run: Run) -> ServeError | None:
    """Why a run has no answer, as the error to answer with; None when it has one."""
    final = run.trace.final_step
    if final is None:
        return ServeError("the policy's plan ran no step, so there is no answer; no worker "
                          "was available to it", 503, code="no_worker_available",
                          type="server_error")
    if final.error is None:
        return None
    what = f"step {final.index} ({final.worker}) failed: {_short(final.error)}"
    if final.error_code in BUSY:
        return ServeError(f"{what}. The worker's queue deadline passed: retry later",
                          429, code="queue_deadline", type="rate_limit_error")
    if final.error_code in UNAVAILABLE:
        return ServeError(f"no worker available: {what}", 503, code="no_worker_available",
                          type="server_error")
    if final.error_code == "stream_interrupted":
        return ServeError(f"the answer broke off: {what}", 502, code="stream_interrupted",
                          type="server_error")
    return ServeError(f"the workflow's last step failed: {what}", 502, code="worker_failed",
                      type="server_error")


def _short(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def usage_of(run: Run, input_price: float = 0.0, output_price: float = 0.0) -> Usage:
    """Worker tokens and dollars from the trace, the conductor's own tokens priced at the
    configured $/1M (a self-hosted conductor defaults to 0)."""
    ran = [s for s in run.trace.steps if not s.skipped]
    oi, oo = run.orchestration_input_tokens, run.orchestration_output_tokens
    return Usage(sum(s.input_tokens for s in ran), sum(s.output_tokens for s in ran), oi, oo,
                 run.trace.cost, (oi * input_price + oo * output_price) / 1e6)


def steps_view(run: Run, with_text: bool = False) -> list[dict[str, Any]]:
    """The trace's steps as the response and the log show them."""
    out = []
    for st in run.trace.steps:
        d = {"index": st.index, "worker": st.worker, "served_by": st.served_by,
             "subtask": st.subtask, "access": st.access, "when": st.when,
             "skipped": st.skipped, "program": st.program,
             "latency_s": round(st.latency_s, 4), "queue_wait_s": round(st.queue_wait_s, 4),
             "input_tokens": st.input_tokens, "output_tokens": st.output_tokens,
             "cost": st.cost, "retries": max(0, st.attempts - 1),
             "cached": st.cached, "answer": st.answer, "first_token_s": st.first_token_s,
             "error": st.error, "error_code": st.error_code}
        if with_text:
            d["text"] = st.text
        out.append(d)
    return out


def extension(rid: str, run: Run, usage: Usage, latency_s: float,
              query_id: str | None) -> dict[str, Any]:
    """The `conductor` block: what ran, on which policy version, at what cost."""
    steps = steps_view(run)
    return {"request_id": rid, "policy": run.policy, "policy_version": run.version,
            "workflow": render(run.workflow), "query_id": query_id,
            "plan": {"attempts": run.plan_attempts, "fell_back": run.plan_fell_back,
                     "errors": run.plan_errors},
            "steps": steps, "calls": run.trace.calls,
            "retries": sum(s["retries"] for s in steps),
            "cache_hits": sum(s["cached"] for s in steps),
            "cost": {"workers": usage.worker_cost, "orchestration": usage.orchestration_cost,
                     "total": usage.cost},
            "latency_s": round(latency_s, 4)}
