"""Parse and render the conductor's plan text.

The format is the Conductor paper's: optional reasoning (a `<think>...</think>` block is
dropped), then three labelled Python-literal lists::

    model_id = [2, 0, 1]
    subtasks = ["Solve the problem.", "Solve the problem.", "The answers differ: decide."]
    access_list = [[], [], "disagree:0,1"]

An access entry is "all", [] or a list of earlier step indices, or a condition string:
"disagree" / "agree" (over all earlier steps) or "disagree:0,1" / "agree:0,1" (over those
steps). Finding the lists (`scan`) is linear in the text; the result is validated strictly
and every failure raises `WorkflowError` with a reason code and a one-line message.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ray_conductor.errors import WorkflowError
from ray_conductor.workflow.model import Access, Step, Workflow
from ray_conductor.workflow.programs import is_program
from ray_conductor.workflow.scan import (
    LABELS, MAX_TEXT_CHARS, check_size, fail, locate, read_list, short, strip_reasoning,
)

DEFAULT_MAX_STEPS = 5
MAX_SUBTASK_CHARS = 1_000  # an instruction, not a document: keeps prompts and plans bounded
_CONDITION = re.compile(r"(agree|disagree)\s*(?::(.*))?", re.DOTALL)
_ACCESS_FORMS = "'all', a list of step indices, 'disagree', 'agree', 'disagree:0,1' or 'agree:0,1'"

__all__ = ["DEFAULT_MAX_STEPS", "LABELS", "MAX_SUBTASK_CHARS", "MAX_TEXT_CHARS", "parse", "render",
           "render_access", "strip_reasoning", "validate"]


# -- validation --------------------------------------------------------------------------


def _out_of_range(i: int, shown: str, workers: Sequence[str]) -> WorkflowError:
    return fail("worker_out_of_range",
                f"step {i}: worker id {shown} is out of range; valid ids are 0..{len(workers) - 1}")


def _resolve_worker(i: int, wid: Any, workers: Sequence[str]) -> str:
    if isinstance(wid, bool):
        raise fail("unknown_worker", f"step {i}: worker id {wid!r} is not a number or a name")
    if isinstance(wid, str) and re.fullmatch(r"\s*\d+\s*", wid):
        digits = wid.strip().lstrip("0") or "0"
        if len(digits) > 18:  # int() refuses past 4,300 digits; no pool is that large anyway
            raise _out_of_range(i, f"<a {len(digits)}-digit number>", workers)
        wid = int(digits)
    if isinstance(wid, int):
        if not 0 <= wid < len(workers):
            raise _out_of_range(i, short(wid), workers)
        return workers[wid]
    if isinstance(wid, str) and wid.strip() in workers:
        return wid.strip()
    raise fail("unknown_worker",
               f"step {i}: unknown worker {short(wid)}; known workers: {', '.join(workers)}")


def _indices(i: int, entries: Any) -> tuple[int, ...]:
    idx = []
    for a in entries:
        if isinstance(a, bool) or not isinstance(a, int) or a < 0:
            raise fail("bad_access", f"step {i}: access entry {short(a)} is not a step index")
        if a >= i:
            raise fail("forward_access",
                       f"step {i}: access to step {short(a)}, which is not an earlier step")
        idx.append(a)
    return tuple(sorted(set(idx)))


def _condition(i: int, text: str) -> tuple[Access, str] | None:
    """("all" or indices, "agree"/"disagree") for a condition string, None if it is none."""
    m = _CONDITION.fullmatch(text)
    if m is None:
        return None
    when, rest = m.group(1), m.group(2)
    if rest is None:
        access: Access = "all"
    else:
        parts = [p for p in re.split(r"[\s,]+", rest.strip().strip("[]()")) if p]
        if not parts:
            raise fail("bad_access", f"step {i}: '{when}:' names no steps; write '{when}' to "
                       f"compare all earlier steps, or e.g. '{when}:0,1'")
        if not all(re.fullmatch(r"\d{1,18}", p) for p in parts):
            raise fail("bad_access", f"step {i}: {short(text)} must list step indices after "
                       f"the colon, e.g. '{when}:0,1'")
        access = _indices(i, [int(p) for p in parts])
    seen = i if access == "all" else len(access)
    if seen < 2:
        raise fail("bad_access", f"step {i}: '{when}' compares the answers of at least two "
                   f"earlier steps, but this step sees {seen}")
    return access, when


def _resolve_access(i: int, acc: Any) -> tuple[Access, str | None]:
    if isinstance(acc, str):
        word = acc.strip().lower()
        if word == "all":
            return "all", None
        if word in ("", "none", "[]"):
            return (), None
        cond = _condition(i, word)
        if cond is None:
            raise fail("bad_access", f"step {i}: access {short(acc)} must be {_ACCESS_FORMS}")
        return cond
    if acc is None:
        return (), None
    if not isinstance(acc, (list, tuple)):
        raise fail("bad_access", f"step {i}: access {short(acc)} must be {_ACCESS_FORMS}")
    return _indices(i, acc), None


def _step(i: int, wid: Any, sub: Any, acc: Any, workers: Sequence[str]) -> Step:
    worker = _resolve_worker(i, wid, workers)
    if not isinstance(sub, str):
        raise fail("bad_subtask", f"step {i}: subtask {short(sub)} is not a string")
    if len(sub) > MAX_SUBTASK_CHARS:
        raise fail("bad_subtask", f"step {i}: the subtask has {len(sub)} characters; at most "
                   f"{MAX_SUBTASK_CHARS} are allowed")
    access, when = _resolve_access(i, acc)
    step = Step(worker, sub, access, when)
    if is_program(worker) and not step.visible(i):
        raise fail("bad_access", f"step {i}: '{worker}' reads no earlier steps; give it 'all' "
                   "or a list of step indices")
    return step


def validate(
    model_ids: Any,
    subtasks: Any,
    access: Any,
    workers: Sequence[str],
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    allow_empty: bool = False,
) -> Workflow:
    """Build a `Workflow` from the three raw lists, or raise `WorkflowError`."""
    for lab, val in zip(LABELS, (model_ids, subtasks, access)):
        if not isinstance(val, (list, tuple)):
            raise fail("missing_list", f"'{lab}' must be a list, got {type(val).__name__}")
    n = len(model_ids)
    if not (n == len(subtasks) == len(access)):
        raise fail(
            "length_mismatch",
            f"the lists differ in length: model_id has {n}, subtasks {len(subtasks)}, "
            f"access_list {len(access)}",
        )
    if n == 0:
        if allow_empty:
            return Workflow(())
        raise fail("empty_workflow", "the workflow has no steps")
    if n > max_steps:
        raise fail("too_many_steps", f"the workflow has {n} steps; at most {max_steps} are allowed")
    return Workflow(tuple(_step(i, w, s, a, workers)
                          for i, (w, s, a) in enumerate(zip(model_ids, subtasks, access))))


def parse(
    text: str,
    workers: Sequence[str],
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    allow_empty: bool = False,
) -> Workflow:
    """Read the conductor's text into a validated `Workflow`.

    `workers` are the offered worker names in id order (program workers such as "vote"
    included when offered); ids in the text may be indices or names. `allow_empty` accepts
    three empty lists (a recursive call keeping the previous answer).
    """
    body = strip_reasoning(check_size(text))
    found = locate(body)
    missing = [lab for lab in LABELS if lab not in found]
    if missing:
        raise fail(
            "missing_list",
            "missing " + ", ".join(f"'{m} = [...]'" for m in missing)
            + "; a plan needs model_id, subtasks and access_list",
        )
    values = [read_list(body, found[lab]) for lab in LABELS]
    return validate(*values, workers, max_steps=max_steps, allow_empty=allow_empty)


def render_access(step: Step) -> Any:
    """The access_list entry of a step: "all", a list, or a condition string."""
    if step.when is None:
        return "all" if step.access == "all" else list(step.access)
    if step.access == "all":
        return step.when
    return f"{step.when}:" + ",".join(str(k) for k in step.access)


def render(workflow: Workflow, workers: Sequence[str] | None = None) -> str:
    """Write a workflow in the text the conductor produces; `parse(render(w, ws), ws) == w`.

    With `workers`, steps are written as numeric ids (the conductor's vocabulary); without,
    as names.
    """
    ids: list[Any] = [list(workers).index(s.worker) if workers else s.worker for s in workflow]
    subs = [s.subtask for s in workflow]
    acc = [render_access(s) for s in workflow]
    return f"model_id = {ids!r}\nsubtasks = {subs!r}\naccess_list = {acc!r}"
