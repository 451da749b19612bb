"""Find the three labelled lists in the conductor's text and read them, in linear time.

The text is model output, so anything can arrive: megabytes, thousands of nested `[`, digit
strings longer than Python will convert, the same header repeated ten thousand times. The
reader therefore caps the text's size (`MAX_TEXT_CHARS`) and the lists' nesting
(`MAX_NESTING`) before any list is evaluated, and finds headers left to right, skipping the
inside of each real list (so a label quoted inside a subtask is not a header). Scanning and
parsing share a budget of `WORK_FACTOR` characters per character of text; input that would
exceed it (many lists that never close) ends in `WorkflowError`, so time stays linear.
Each list is read with `ast.literal_eval`, then JSON, then a lenient split.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from ray_conductor.errors import WorkflowError

LABELS = ("model_id", "subtasks", "access_list")
MAX_TEXT_CHARS = 100_000  # a plan is ~1 KB; reasoning before it fits many times over
MAX_NESTING = 4  # a plan needs 2 (access_list = [[0], ...]); deeper is not a plan
WORK_FACTOR = 8  # characters scanned per character of text, at most (plus WORK_SLACK)
WORK_SLACK = 10_000
MAX_INT_DIGITS = 18  # longer digit runs stay text: no plan numbers its steps past 10**18

_HEADER = re.compile(r"\b(model_id|subtasks|access_list)\s*[:=]\s*(?=\[)")
_SPECIAL = re.compile(r"[\[\]'\"\\]")
_INT = re.compile(rf"-?\d{{1,{MAX_INT_DIGITS}}}")


def fail(code: str, message: str) -> WorkflowError:
    return WorkflowError(message, code=code)


def short(value: Any, limit: int = 60) -> str:
    """A one-line, bounded repr of model-written input for an error message (a hex literal
    can make an int too long for Python's own repr, which then raises)."""
    try:
        text = repr(value)
    except ValueError:
        return "<a number too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Found:
    label: str
    start: int  # where the label begins
    lo: int  # the list's `[`
    hi: int  # one past its `]`; -1 when it never closes or nests too deep
    too_deep: bool = False
    strict: bool = False  # read by literal_eval or JSON: a real list, `value` holds it
    value: Any = None


def _scan(text: str, start: int) -> tuple[int, int, bool]:
    """Scan the list whose `[` is at `start`, skipping quoted strings.

    Returns (one past the closing `]` or -1, where the scan stopped, nested too deep)."""
    depth, quote, skip_to = 0, "", start
    for m in _SPECIAL.finditer(text, start):
        i, ch = m.start(), m.group()
        if i < skip_to:
            continue  # the character after a backslash inside quotes
        if quote:
            if ch == "\\":
                skip_to = i + 2
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
            if depth > MAX_NESTING:
                return -1, i, True
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return i + 1, i + 1, False
    return -1, len(text), False


def locate(text: str) -> dict[str, Found]:
    """For each label, its last header that is not inside an earlier real (strictly parsed)
    list: a label quoted in a subtask is not a header, a draft in the reasoning is replaced by
    the final plan. Scanning and strict parsing share one budget proportional to the text."""
    budget = WORK_FACTOR * len(text) + WORK_SLACK
    chosen: dict[str, Found] = {}
    pos = 0
    while (m := _HEADER.search(text, pos)) is not None:
        hi, stop, deep = _scan(text, m.end())
        budget -= (stop - m.end()) + (hi - m.end() if hi > 0 else 0)
        if budget < 0:
            raise fail("unparsable", "the text opens too many '[' lists that never close; "
                       "write one plan with three closed lists")
        found = Found(m.group(1), m.start(), m.end(), hi, deep)
        if hi > 0:
            found.strict, found.value = _strict_literal(text[m.end() : hi])
        chosen[found.label] = found
        pos = hi if found.strict else m.end()
    return chosen


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
    """Last resort for almost-literal lists: unquoted words, smart quotes, trailing commas.
    Recursion is bounded: `locate` refused lists nested deeper than `MAX_NESTING`."""
    src = src.strip()
    if not (src.startswith("[") and src.endswith("]")):
        raise fail("unparsable", f"expected a bracketed list, got {short(src)}")
    out: list[Any] = []
    for raw in _split_top(src[1:-1]):
        item = raw.strip().strip("\u201c\u201d\u2018\u2019")
        if item.startswith("["):
            out.append(_lenient(item))
        elif len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"":
            out.append(item[1:-1])
        elif _INT.fullmatch(item):
            out.append(int(item))
        else:
            out.append(item)
    return out


def read_list(text: str, found: Found) -> Any:
    """The value of a located list, or `WorkflowError` saying why it cannot be read."""
    if found.too_deep:
        raise fail("unparsable", f"the list after '{found.label} =' nests brackets more than "
                   f"{MAX_NESTING} deep; a plan needs at most 2")
    if found.hi < 0:
        raise fail("unparsable", f"the list after '{found.label} =' is never closed with ']'")
    return found.value if found.strict else _lenient(text[found.lo : found.hi])


def strip_reasoning(text: str) -> str:
    """Drop a leading `<think>...</think>` block (or everything before a lone `</think>`)."""
    end = text.find("</think>")
    if end < 0:
        return text
    first = _HEADER.search(text)
    if first is not None and first.start() < end:
        return text
    return text[end + len("</think>") :]


def check_size(text: Any) -> str:
    """The text itself, if it is a string of a size a plan can have."""
    if not isinstance(text, str):
        raise fail("unparsable", f"plan text must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise fail("too_long", f"the plan text has {len(text)} characters; at most "
                   f"{MAX_TEXT_CHARS} are read. Write a shorter plan")
    return text
