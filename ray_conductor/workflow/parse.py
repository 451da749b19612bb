"""Parse and render the conductor's plan text.

The format is the Conductor paper's: optional reasoning (a `<think>...</think>` block is
dropped), then three labelled Python-literal lists::

    model_id = [2, 0]
    subtasks = ["Solve the problem step by step.", "Check the solution and give the answer."]
    access_list = [[], "all"]

Each list is read with `ast.literal_eval`, then JSON, then a lenient split, and the result is
validated strictly; every failure raises `WorkflowError` with a reason code.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ray_conductor.errors import WorkflowError
from ray_conductor.workflow.model import Step, Workflow

LABELS = ("model_id", "subtasks", "access_list")
DEFAULT_MAX_STEPS = 5
_LABEL_RE = {lab: re.compile(rf"\b{lab}\s*[:=]\s*(?=\[)") for lab in LABELS}


def _fail(code: str, message: str) -> WorkflowError:
    return WorkflowError(message, code=code)


# -- finding the lists -------------------------------------------------------------------


def _balanced_end(text: str, start: int) -> int:
    """Index one past the `]` closing the `[` at `start`, skipping quoted strings; -1 if none."""
    depth, i, quote = 0, start, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


@dataclass
class _Found:
    label: str
    start: int  # where the label begins
    lo: int  # the list's `[`
    hi: int  # one past its `]`, or -1 when it never closes
    strict: bool  # parsed by literal_eval or JSON (so it is a real container)


def _strict_literal(src: str) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(src)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return True, json.loads(src)
    except (ValueError, RecursionError):
        return False, None


def _split_top(body: str) -> list[str]:
    """Split a list body on commas that are outside quotes and brackets."""
    parts, depth, quote, cur, i = [], 0, "", [], 0
    while i < len(body):
        ch = body[i]
        if quote:
            if ch == "\\" and i + 1 < len(body):
                cur.append(body[i : i + 2])
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(ch)
        i += 1
    if "".join(cur).strip():
        parts.append("".join(cur))
    return parts


def _lenient(src: str) -> list[Any]:
    """Last resort for almost-literal lists: unquoted words, smart quotes, trailing commas."""
    src = src.strip()
    if not (src.startswith("[") and src.endswith("]")):
        raise _fail("unparsable", f"expected a bracketed list, got {src[:60]!r}")
    out: list[Any] = []
    for raw in _split_top(src[1:-1]):
        item = raw.strip().strip("\u201c\u201d\u2018\u2019")
        if item.startswith("["):
            out.append(_lenient(item))
        elif len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"":
            out.append(item[1:-1])
        elif re.fullmatch(r"-?\d+", item):
            out.append(int(item))
        else:
            out.append(item)
    return out


def _read_list(text: str, found: _Found) -> Any:
    if found.hi < 0:
        raise _fail("unparsable", f"the list after '{found.label} =' is never closed with ']'")
    src = text[found.lo : found.hi]
    ok, value = _strict_literal(src)
    return value if ok else _lenient(src)


def _locate(text: str) -> dict[str, _Found]:
    """For each label, its last occurrence that is not inside another parsed list."""
    cands: list[_Found] = []
    for lab, rx in _LABEL_RE.items():
        for m in rx.finditer(text):
            hi = _balanced_end(text, m.end())
            strict = hi > 0 and _strict_literal(text[m.end() : hi])[0]
            cands.append(_Found(lab, m.start(), m.end(), hi, strict))
    containers = [c for c in cands if c.strict]

    def nested(c: _Found) -> bool:
        return any(o is not c and o.lo < c.start < o.hi for o in containers)

    chosen: dict[str, _Found] = {}
    for c in sorted(cands, key=lambda c: c.start):
        if not nested(c):
            chosen[c.label] = c
    return chosen


def strip_reasoning(text: str) -> str:
    """Drop a leading `<think>...</think>` block (or everything before a lone `</think>`)."""
    end = text.find("</think>")
    if end < 0:
        return text
    firsts = [m.start() for rx in _LABEL_RE.values() if (m := rx.search(text))]
    if firsts and min(firsts) < end:
        return text
    return text[end + len("</think>") :]


# -- validation --------------------------------------------------------------------------


def _resolve_worker(i: int, wid: Any, workers: Sequence[str]) -> str:
    if isinstance(wid, bool):
        raise _fail("unknown_worker", f"step {i}: worker id {wid!r} is not a number or a name")
    if isinstance(wid, str) and re.fullmatch(r"\s*\d+\s*", wid):
        wid = int(wid)
    if isinstance(wid, int):
        if not 0 <= wid < len(workers):
            raise _fail(
                "worker_out_of_range",
                f"step {i}: worker id {wid} is out of range; valid ids are 0..{len(workers) - 1}",
            )
        return workers[wid]
    if isinstance(wid, str) and wid.strip() in workers:
        return wid.strip()
    raise _fail(
        "unknown_worker",
        f"step {i}: unknown worker {wid!r}; known workers: {', '.join(workers)}",
    )


def _resolve_access(i: int, acc: Any) -> Any:
    if isinstance(acc, str):
        word = acc.strip().lower()
        if word == "all":
            return "all"
        if word in ("", "none", "[]"):
            return ()
        raise _fail("bad_access", f"step {i}: access {acc!r} must be 'all' or a list of step indices")
    if acc is None:
        return ()
    if not isinstance(acc, (list, tuple)):
        raise _fail("bad_access", f"step {i}: access {acc!r} must be 'all' or a list of step indices")
    idx = []
    for a in acc:
        if isinstance(a, bool) or not isinstance(a, int) or a < 0:
            raise _fail("bad_access", f"step {i}: access entry {a!r} is not a step index")
        if a >= i:
            raise _fail(
                "forward_access",
                f"step {i}: access to step {a}, which is not an earlier step",
            )
        idx.append(a)
    return tuple(sorted(set(idx)))


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
            raise _fail("missing_list", f"'{lab}' must be a list, got {type(val).__name__}")
    n = len(model_ids)
    if not (n == len(subtasks) == len(access)):
        raise _fail(
            "length_mismatch",
            f"the lists differ in length: model_id has {n}, subtasks {len(subtasks)}, "
            f"access_list {len(access)}",
        )
    if n == 0:
        if allow_empty:
            return Workflow(())
        raise _fail("empty_workflow", "the workflow has no steps")
    if n > max_steps:
        raise _fail("too_many_steps", f"the workflow has {n} steps; at most {max_steps} are allowed")
    steps = []
    for i, (wid, sub, acc) in enumerate(zip(model_ids, subtasks, access)):
        worker = _resolve_worker(i, wid, workers)
        if not isinstance(sub, str):
            raise _fail("bad_subtask", f"step {i}: subtask {sub!r} is not a string")
        steps.append(Step(worker, sub, _resolve_access(i, acc)))
    return Workflow(tuple(steps))


def parse(
    text: str,
    workers: Sequence[str],
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    allow_empty: bool = False,
) -> Workflow:
    """Read the conductor's text into a validated `Workflow`.

    `workers` are the pool's worker names in id order; ids in the text may be indices or names.
    `allow_empty` accepts three empty lists (a recursive call keeping the previous answer).
    """
    if not isinstance(text, str):
        raise _fail("unparsable", f"plan text must be a string, got {type(text).__name__}")
    body = strip_reasoning(text)
    found = _locate(body)
    missing = [lab for lab in LABELS if lab not in found]
    if missing:
        raise _fail(
            "missing_list",
            "missing " + ", ".join(f"'{m} = [...]'" for m in missing)
            + "; a plan needs model_id, subtasks and access_list",
        )
    values = [_read_list(body, found[lab]) for lab in LABELS]
    return validate(*values, workers, max_steps=max_steps, allow_empty=allow_empty)


def render(workflow: Workflow, workers: Sequence[str] | None = None) -> str:
    """Write a workflow in the text the conductor produces; `parse(render(w, ws), ws) == w`.

    With `workers`, steps are written as numeric ids (the conductor's vocabulary); without,
    as names.
    """
    ids: list[Any] = [workers.index(s.worker) if workers else s.worker for s in workflow]
    subs = [s.subtask for s in workflow]
    acc = ["all" if s.access == "all" else list(s.access) for s in workflow]
    return f"model_id = {ids!r}\nsubtasks = {subs!r}\naccess_list = {acc!r}"
