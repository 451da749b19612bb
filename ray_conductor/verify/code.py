"""Code answers: pull the program out of a model's markdown and run its tests in the sandbox.

HumanEval gives a prompt (imports, helpers, the signature and docstring), a `check(candidate)`
test and an entry point; MBPP-style tasks give plain `assert` lines. Either way the verdict is
the sandbox's `passed`: its trusted harness ran the tests to the end -- not "the process
exited 0", which the program can do itself (`sys.exit(0)` before the tests).

The program and the tests run in two sandboxes (`boundary.run_across`): the tests' calls of
the program (HumanEval: `candidate`, MBPP: the functions the asserts call) go across, and only
plain values come back, so the program can neither read the tests' frames or bytecode nor
return an object that lies about equality. The HumanEval prompt (trusted: its imports and
helpers, such as `poly` in HumanEval/32) runs again on the tests' side, so the program cannot
weaken the helpers the tests call either. Tests that use a name of the program other than by
calling it (`crossing_names` says why) run as before, in the program's own process after it
(a copy of its namespace): those are counted in `CROSSING`, as "shared: <why>".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ray_conductor.verify.boundary import crossing_names, run_across
from ray_conductor.verify.sandbox import run_untrusted

CROSSING: Counter[str] = Counter()  # how each judgement ran: "boundary" | "shared: <why>"

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The program in a model's answer: a fenced block, else the text itself.

    Among python (or untagged) blocks, prefer the first that defines `entry_point`, then the
    first with any `def`, then the first block.
    """
    blocks = [body for lang, body in _FENCE.findall(text or "")
              if lang.lower() in ("", "python", "py", "python3")]
    if not blocks:
        return (text or "").strip("\n")
    if entry_point:
        for b in blocks:
            if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b):
                return b
    return next((b for b in blocks if "def " in b), blocks[0])


def humaneval_program(prompt: str, answer: str, entry_point: str) -> str:
    """Prompt + answer as one program: a whole function replaces the prompt's stub, otherwise
    the answer is taken as the body that continues the prompt."""
    code = extract_code(answer, entry_point)
    if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", code):
        return f"{prompt.rstrip()}\n    pass\n\n{code}"
    return prompt + code


def humaneval_tests(problem: dict[str, Any]) -> str:
    """The trusted test script for a HumanEval record in the program's own process (shared
    mode): keep the program's entry point, restore the prompt's imports and helpers over
    whatever the program defined, then `check` it."""
    ep = problem["entry_point"]
    return (f"_rc_candidate = {ep}\n"
            f"{problem['prompt'].rstrip()}\n    pass\n\n"
            f"{ep} = _rc_candidate\n\n"
            f"{problem['test']}\n\ncheck({ep})\n")


def humaneval_across(problem: dict[str, Any]) -> str:
    """The test script for the tests' own process: the prompt's imports and helpers, the
    entry point bound to the stand-in that calls the program, then `check` it."""
    ep = problem["entry_point"]
    return (f"{problem['prompt'].rstrip()}\n    pass\n\n"
            f"{ep} = _rc_candidates[{ep!r}]\n\n"
            f"{problem['test']}\n\ncheck({ep})\n")


def run_tests(program: str, tests: str, entry_point: str | None = None, *,
              timeout_s: float = 10.0, memory_mb: int = 512) -> bool:
    """Whether `program` passes `tests` run in its own process, after it (HumanEval:
    `check(entry_point)` is called when an entry point is given). Forgeable by lying values:
    the checkers below use it only for tests `run_across` cannot take."""
    if entry_point:
        tests = f"{tests}\n\ncheck({entry_point})\n"
    r = run_untrusted(program, tests=tests, timeout_s=timeout_s, memory_mb=memory_mb)
    return bool(r.passed)


def humaneval_correct(answer: str, problem: dict[str, Any], **kw: Any) -> bool:
    """A HumanEval record (`prompt`, `test`, `entry_point`) against a model's answer."""
    program = humaneval_program(problem["prompt"], answer, problem["entry_point"])
    ep = problem["entry_point"]
    _, modules, why = crossing_names(problem["test"], ["candidate", ep])
    if why is not None:
        CROSSING[f"shared: {why}"] += 1
        return run_tests(program, humaneval_tests(problem), **kw)
    CROSSING["boundary"] += 1
    return bool(run_across(program, humaneval_across(problem), [ep], imports=modules,
                           **_limits(kw)).passed)


def mbpp_correct(answer: str, tests: str | Sequence[str] | dict[str, Any], **kw: Any) -> bool:
    """MBPP-style: `tests` is assert lines (a string or a list), or a record with `test_list`
    and optional `test_setup_code`."""
    if isinstance(tests, dict):
        setup = tests.get("test_setup_code") or ""
        tests = setup + "\n" + "\n".join(tests.get("test_list") or [])
    elif not isinstance(tests, str):
        tests = "\n".join(tests)
    if not tests.strip():
        return False  # nothing to check against: never count it as correct
    program = extract_code(answer)
    names, modules, why = crossing_names(tests)
    if why is not None:
        CROSSING[f"shared: {why}"] += 1
        return run_tests(program, tests, None, **kw)
    CROSSING["boundary"] += 1
    return bool(run_across(program, tests, names, imports=modules, **_limits(kw)).passed)


def _limits(kw: dict[str, Any]) -> dict[str, Any]:
    return {"timeout_s": kw.get("timeout_s", 10.0), "memory_mb": kw.get("memory_mb", 512)}
