"""Can the code checkers (the reward of code tasks) be forged? Honest and forged answers to
every HumanEval problem, and to a few MBPP-style tasks, judged by the real checkers.

Per checker: canonical (honest) solutions that pass, a wrong body (`return None`) that
fails, and for each forgery of `ray_conductor.testing.forgeries` (reading the tests' frame
and bytecode, tracebacks, `f_back`, `inspect`; objects equal to everything, `mock.ANY`,
`int`/`str`/`list` subclasses) how many problems it passes. Each is judged twice: as the
checkers judge now (the tests in a sandbox of their own, values crossing: `boundary`) and as
they judged before (the tests in the program's process: `shared`), so the figure the
boundary closes stands beside it. Also how many HumanEval problems ran across the boundary
and why any did not (`verify.code.CROSSING`), and the mean wall time of one judgement per mode
(two sandboxes against one: a speed figure only on a quiet machine).

    python benchmarks/code_checkers.py --out benchmarks/results/code_checkers.json
    python benchmarks/code_checkers.py --limit 20 --forgeries frame_bytecode,eq_always
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
MBPP_TASKS = [  # MBPP-style: assert lines that call the answer's function
    ("square", "def square(x):\n    return x * x",
     ["assert square(3) == 9", "assert square(-2) == 4", "assert square(0) == 0"]),
    ("reverse_words", "def reverse_words(s):\n    return ' '.join(s.split()[::-1])",
     ["assert reverse_words('python program') == 'program python'",
      "assert reverse_words('java language') == 'language java'"]),
    ("first_repeated", "def first_repeated(s):\n    seen = set()\n    for c in s:\n"
                       "        if c in seen:\n            return c\n        seen.add(c)\n"
                       "    return None",
     ["assert first_repeated('abcabc') == 'a'", "assert first_repeated('abc') == None",
      "assert first_repeated('123123') == '1'"]),
    ("is_prime", "def is_prime(n):\n"
                 "    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))",
     ["assert is_prime(13) == True", "assert is_prime(12) == False",
      "assert is_prime(1) == False"]),
    ("sort_pairs", "def sort_pairs(xs):\n    return sorted(xs, key=lambda p: p[1])",
     ["assert sort_pairs([(1, 3), (2, 1)]) == [(2, 1), (1, 3)]",
      "assert sort_pairs([]) == []"]),
    ("char_count", "def char_count(s):\n    out = {}\n    for c in s:\n"
                   "        out[c] = out.get(c, 0) + 1\n    return out",
     ["assert char_count('aab') == {'a': 2, 'b': 1}", "assert char_count('') == {}"]),
    ("mean_of", "def mean_of(xs):\n    return sum(xs) / len(xs)",
     ["assert math.isclose(mean_of([1, 2, 3, 4]), 2.5)", "assert mean_of([5]) == 5.0"]),
    ("matrix_t", "import numpy as np\ndef matrix_t(m):\n    return np.array(m).T.tolist()",
     ["assert matrix_t([[1, 2], [3, 4]]) == [[1, 3], [2, 4]]"]),
]


def load_humaneval(limit: int | None) -> list[dict[str, Any]]:
    from ray_conductor.config import default_data_dir

    path = Path(default_data_dir()) / "benchmarks" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f]
    return problems[:limit] if limit else problems


def judges() -> dict[str, dict[str, Callable[..., bool]]]:
    """checker -> mode -> judge(answer, problem)."""
    from ray_conductor.verify.code import (
        extract_code, humaneval_correct, humaneval_program, humaneval_tests, mbpp_correct,
        run_tests)

    def he_shared(answer: str, p: dict[str, Any]) -> bool:
        return run_tests(humaneval_program(p["prompt"], answer, p["entry_point"]),
                         humaneval_tests(p))

    def mbpp_shared(answer: str, task: tuple) -> bool:
        return run_tests(extract_code(answer), "import math\n" + "\n".join(task[2]))

    return {"humaneval": {"boundary": humaneval_correct, "shared": he_shared},
            "mbpp": {"boundary": lambda a, t: mbpp_correct(a, t[2]), "shared": mbpp_shared}}


def cases(problems: list[dict[str, Any]], kinds: list[str]) -> list[tuple]:
    """(checker, what, problem id, answer, problem)."""
    from ray_conductor.testing.forgeries import forged_answer

    out = []
    for p in problems:
        out.append(("humaneval", "canonical", p["task_id"], p["canonical_solution"], p))
        out.append(("humaneval", "wrong", p["task_id"], "    return None\n", p))
        out += [("humaneval", k, p["task_id"], forged_answer(k, p["entry_point"]), p)
                for k in kinds]
    for t in MBPP_TASKS:
        out.append(("mbpp", "canonical", t[0], f"```python\n{t[1]}\n```", t))
        out.append(("mbpp", "wrong", t[0], f"def {t[0]}(*a):\n    return None", t))
        out += [("mbpp", k, t[0], forged_answer(k, t[0]), t) for k in kinds]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/code_checkers.json")
    ap.add_argument("--limit", type=int, default=None, help="first N HumanEval problems")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--modes", default="boundary,shared")
    ap.add_argument("--forgeries", default="all")
    ap.add_argument("--rows", action="store_true", help="keep every judgement in the report")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from ray_conductor.testing.forgeries import KINDS
    from ray_conductor.verify.code import CROSSING

    kinds = list(KINDS) if a.forgeries == "all" else a.forgeries.split(",")
    problems = load_humaneval(a.limit)
    todo = [(mode, c) for c in cases(problems, kinds) for mode in a.modes.split(",")]
    judge = judges()
    t0 = time.perf_counter()

    def one(item: tuple) -> dict[str, Any]:
        mode, (checker, what, pid, answer, problem) = item
        t = time.perf_counter()
        passed = bool(judge[checker][mode](answer, problem))
        return {"checker": checker, "mode": mode, "what": what, "id": pid, "passed": passed,
                "wall_s": time.perf_counter() - t}

    with ThreadPoolExecutor(a.workers) as pool:
        rows = list(pool.map(one, todo))
    passed: dict[str, Counter] = {}
    for r in rows:
        passed.setdefault(f"{r['checker']}/{r['mode']}", Counter())[r["what"]] += r["passed"]
    bad = [f"{r['checker']}/{r['mode']} {r['what']} {r['id']}" for r in rows
           if r["mode"] == "boundary" and (r["passed"] != (r["what"] == "canonical"))]
    summary = {"humaneval_problems": len(problems), "mbpp_tasks": len(MBPP_TASKS),
               "passed": {k: dict(v) for k, v in sorted(passed.items())},
               "crossing": dict(CROSSING), "boundary_misjudged": bad,
               "mean_judgement_s": {m: round(sum(r["wall_s"] for r in rows if r["mode"] == m)
                                             / max(1, sum(r["mode"] == m for r in rows)), 3)
                                    for m in a.modes.split(",")},
               "wall_s": round(time.perf_counter() - t0, 1)}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _bench import environment, write_report

    write_report({"summary": summary, "environment": environment(threads=a.workers),
                  **({"rows": rows} if a.rows else {})}, a.out)


if __name__ == "__main__":
    main()
