"""Answer checking for math benchmarks: GSM8K final numbers and MATH answer equivalence.

MATH answers are compared in three rounds, cheapest first: normalised strings, then numbers
(fractions, decimals, percents), then sympy (`simplify(a - b) == 0`). Sympy runs in a
separate, resource-limited helper process with a deadline, because some expressions make it
hang or eat memory; a model's text never reaches `eval` unless it passed a token whitelist.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
from fractions import Fraction

_NUM = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"

# -- GSM8K ---------------------------------------------------------------------------------


def _clean_number(s: str) -> str | None:
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        f = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return str(f.numerator) if f.denominator == 1 else str(float(f))


def gsm8k_answer(text: str) -> str | None:
    """The final number of a GSM8K-style answer, as a canonical string (None if there is none).

    Takes the first number after the last '####', else inside the last \\boxed{}, else after
    the last "answer is" / "answer:", else the last number anywhere. Commas, '$' and units
    are dropped.
    """
    if not text:
        return None
    for region, pick in _answer_regions(text):
        nums = re.findall(_NUM, region)
        if nums:
            return _clean_number(nums[pick])
    return None


def _answer_regions(text: str) -> list[tuple[str, int]]:
    """(where to look, which number there: 0 first, -1 last), most specific first."""
    regions = []
    if "####" in text:
        after = text.rsplit("####", 1)[1].strip()
        regions.append((after.splitlines()[0] if after else "", 0))
    boxed = last_boxed(text)
    if boxed is not None:
        regions.append((boxed, 0))
    m = list(re.finditer(r"answer\s*(?:is|:)\s*", text, flags=re.IGNORECASE))
    if m:
        regions.append((text[m[-1].end():].split("\n", 1)[0], 0))
    regions.append((text, -1))
    return regions


def gsm8k_equal(pred_text: str, reference: str) -> bool:
    """Whether the model's final number equals the reference's (a number, or a GSM8K answer)."""
    pred, ref = gsm8k_answer(pred_text), gsm8k_answer(str(reference))
    if pred is None or ref is None:
        return False
    return abs(float(pred) - float(ref)) <= 1e-6 * max(1.0, abs(float(ref)))


# -- MATH: extraction ------------------------------------------------------------------------


def _braced(text: str, open_at: int) -> tuple[str, int] | None:
    """Content of the `{...}` whose `{` is at `open_at`, and the index after its `}`."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i], i + 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (balanced braces), or None."""
    starts = [m.end() - 1 for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for at in reversed(starts):
        got = _braced(text, at)
        if got is not None:
            return got[0]
    m = list(re.finditer(r"\\boxed ([^\s$]+)", text))  # "\boxed 5"
    return m[-1].group(1) if m else None


def extract_math_answer(text: str) -> str:
    """The answer part of a solution: last \\boxed{}, else after "answer is", else the text."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    m = list(re.finditer(r"answer\s*(?:is|:)\s*", text, flags=re.IGNORECASE))
    if m:
        tail = text[m[-1].end():].strip().split("\n", 1)[0]
        return tail.strip().strip("$").rstrip(".").strip()
    return text.strip()


# -- MATH: normalisation ---------------------------------------------------------------------

_UNITS = (
    "degrees", "degree", "cm", "centimeters", "meters", "meter", "m", "km", "inches", "inch",
    "feet", "foot", "ft", "units", "unit", "sq", "square", "cubic", "dollars", "dollar", "cents",
    "hours", "hour", "minutes", "minute", "seconds", "second", "days", "mph", "miles", "mile",
    "pounds", "liters", "grams", "kg", "years", "people", "students", "ways", "points",
)
_UNIT_WORDS = "|".join(_UNITS)
# a unit at the end: "\text{ anything}" (Hendrycks: a leading space inside means units),
# "\text{cm}", or a bare unit word after a digit or space ("5 cm"); "^2" / "^{3}" may follow
_UNIT_RE = re.compile(
    r"(?:\\(?:text|mbox)\{\s[^{}]*\}|\\(?:text|mbox|mathrm)\{(?:%s)\.?\}|(?<=[\d\s])(?:%s)\b\.?)"
    r"(?:\^\{?[23]\}?)?\s*$" % (_UNIT_WORDS, _UNIT_WORDS))


def _fix_fracs(s: str) -> str:
    r"""\frac12 -> \frac{1}{2}, \frac1{x} -> \frac{1}{x}."""
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", s)
    return re.sub(r"\\sqrt\s*(\d+|[a-z])", r"\\sqrt{\1}", s)


def normalize_math(s: str) -> str:
    """Canonical string form of a MATH answer (the Hendrycks rules plus a few more)."""
    s = str(s).strip().replace("\n", "").replace("\\!", "")
    s = re.sub(r"\\[,;:> ]", "", s)
    s = s.replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s).replace("°", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    while True:  # units, possibly several ("5 \text{ cm}^2")
        t = _UNIT_RE.sub("", s).strip()
        if t == s or not t:
            break
        s = t
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}", r"\1", s)
    s = s.replace(" ", "").rstrip(".")
    s = re.sub(r"(^|[^\d])\.(\d)", r"\g<1>0.\2", s)  # .5 -> 0.5
    if re.fullmatch(r"[a-zA-Z]\w*=[^=]+", s) and len(s.split("=")[0]) <= 2:
        s = s.split("=", 1)[1]  # "x=5" -> "5"
    s = re.sub(r"^[a-zA-Z]\\in", "", s)  # "x\in[2,5)" -> "[2,5)"
    s = _fix_fracs(s)
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    return s


def to_number(s: str) -> Fraction | None:
    """A normalised answer as an exact number: integers, decimals, a/b, \\frac{a}{b}."""
    s = s.replace("{,}", "")
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    try:
        if m:
            val = Fraction(m.group(2)) / Fraction(m.group(3))
            return -val if m.group(1) else val
        if re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


# -- MATH: comparison ------------------------------------------------------------------------

_BRACKETS = {"(": ")", "[": "]", "\\{": "\\}"}


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _as_tuple(s: str) -> tuple[str, list[str], str] | None:
    """("(", ["1", "2"], ")") for "(1,2)"; also bare "1,2"; None for a single item."""
    for o, c in list(_BRACKETS.items()) + [("(", "]"), ("[", ")")]:
        if s.startswith(o) and s.endswith(c) and len(s) > len(o) + len(c):
            inner = s[len(o):len(s) - len(c)]
            items = _split_top(inner)
            if len(items) > 1:
                return o, items, c
    items = _split_top(s)
    return ("", items, "") if len(items) > 1 else None


def _equal_normalised(a: str, b: str, use_sympy: bool, timeout_s: float) -> bool:
    if a == b:
        return True
    ta, tb = _as_tuple(a), _as_tuple(b)
    if ta or tb:
        if not (ta and tb) or len(ta[1]) != len(tb[1]) or (ta[0], ta[2]) != (tb[0], tb[2]):
            return False
        pairs = zip(ta[1], tb[1])
        if ta[0] == "\\{":  # a set: order does not matter
            pairs = zip(sorted(ta[1]), sorted(tb[1]))
        return all(_equal_normalised(x, y, use_sympy, timeout_s) for x, y in pairs)
    na, nb = to_number(a), to_number(b)
    if na is not None and nb is not None:
        return abs(na - nb) <= Fraction(1, 10**9) * max(1, abs(nb))
    if not use_sympy or not a or not b:
        return False
    return _SYMPY.equal(a, b, timeout_s=timeout_s)


def math_equal(pred: str, reference: str, *, use_sympy: bool = True,
               timeout_s: float = 5.0) -> bool:
    """Whether a model's solution text gives the MATH reference answer.

    `pred` may be a whole solution (its last \\boxed{} is used); `reference` is the answer
    (a \\boxed{} in it is unwrapped too). Sympy is asked only when strings and numbers differ,
    and a sympy check that exceeds `timeout_s` counts as not equal.
    """
    a = normalize_math(extract_math_answer(pred or ""))
    b = normalize_math(extract_math_answer(str(reference)))
    if not a or not b:
        return False
    return _equal_normalised(a, b, use_sympy, timeout_s)


# -- sympy, out of process -------------------------------------------------------------------

_FUNCS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "log", "exp",
          "pi", "oo", "I", "E"}
_COMMANDS = {"\\cdot": "*", "\\times": "*", "\\div": "/", "\\pi": "pi", "\\infty": "oo",
             "\\ln": "log", "\\log": "log", "\\exp": "exp", "\\sin": "sin", "\\cos": "cos",
             "\\tan": "tan", "\\cot": "cot", "\\sec": "sec", "\\csc": "csc",
             "\\arcsin": "asin", "\\arccos": "acos", "\\arctan": "atan"}


def _replace_braced_command(s: str, name: str, nargs: int, fmt: str) -> str | None:
    """Rewrite `\\name{a}{b}` as fmt.format(a, b), innermost arguments translated first."""
    while True:
        m = re.search(re.escape(name) + r"\s*\{", s)
        if not m:
            return s
        args, at = [], m.end() - 1
        for _ in range(nargs):
            while at < len(s) and s[at] == " ":
                at += 1
            got = _braced(s, at) if at < len(s) and s[at] == "{" else None
            if got is None:
                return None
            args.append(got[0])
            at = got[1]
        s = s[:m.start()] + fmt.format(*args) + s[at:]


def latex_to_python(s: str) -> str | None:
    """A sympy-parsable expression for simple LaTeX, or None when it is not safe to eval.

    Safe means: only digits, operators, brackets, single-letter symbols and a few function
    names (`_FUNCS`) -- no attribute access, no underscores, no other names.
    """
    s = re.sub(r"\\sqrt\s*\[([^\]]*)\]\s*\{", r"\\root{\1}{", s)
    for name, nargs, fmt in (("\\frac", 2, "(({0})/({1}))"), ("\\root", 2, "(({1})**(1/({0})))"),
                             ("\\sqrt", 1, "sqrt({0})")):
        s = _replace_braced_command(s, name, nargs, fmt)
        if s is None:
            return None
    for cmd in sorted(_COMMANDS, key=len, reverse=True):
        s = s.replace(cmd, f" {_COMMANDS[cmd]} ")
    s = s.replace("^", "**").replace("{", "(").replace("}", ")")
    if not re.fullmatch(r"[0-9a-zA-Z+\-*/().\s]*", s):
        return None
    if re.search(r"[a-zA-Z)]\s*\.|\.\s*[a-zA-Z(]", s):  # attribute access
        return None
    if any(w not in _FUNCS and len(w) > 1 for w in re.findall(r"[a-zA-Z]+", s)):
        return None
    return s.strip() or None


_CHILD = r"""
import json, resource, sys
mem = int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
import sympy
from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application,
                                        parse_expr, standard_transformations)
T = standard_transformations + (implicit_multiplication_application, convert_xor)
try:
    from sympy.parsing.latex import parse_latex
    parse_latex("1")
except Exception:
    parse_latex = None

def parse(latex, py):
    if parse_latex is not None:
        try:
            return parse_latex(latex)
        except Exception:
            pass
    return None if py is None else parse_expr(py, transformations=T)

def equal(a, b):
    x, y = parse(*a), parse(*b)
    if x is None or y is None:
        return False
    d = sympy.simplify(x - y)
    return d == 0 or (d.is_number and abs(complex(d.evalf())) < 1e-9)

print("ready", flush=True)
for line in sys.stdin:
    try:
        ok = equal(*json.loads(line))
    except Exception:
        ok = False
    print("1" if ok else "0", flush=True)
"""


class _SympyWorker:
    """A long-lived helper process that answers "is a - b zero?" before a deadline.

    Sympy cannot be interrupted inside a thread, so a check that runs late is ended by killing
    the helper (the next check starts a new one). The helper also has a memory limit.
    """

    def __init__(self, memory_mb: int = 2048, startup_timeout_s: float = 60.0):
        self.memory_mb, self.startup_timeout_s = memory_mb, startup_timeout_s
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._buf = b""

    def _readline(self, timeout_s: float) -> str | None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], timeout_s)
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def _start(self) -> bool:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _CHILD, str(self.memory_mb)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"},
        )
        self._buf = b""
        if self._readline(self.startup_timeout_s) != "ready":
            self.close()
            return False
        return True

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for f in (self._proc.stdin, self._proc.stdout):
                if f is not None:
                    f.close()
            self._proc = None

    def equal(self, a: str, b: str, timeout_s: float = 5.0) -> bool:
        req = json.dumps([[a, latex_to_python(a)], [b, latex_to_python(b)]])
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if not self._start():
                    return False
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(req.encode() + b"\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self.close()
                return False
            answer = self._readline(timeout_s)
            if answer is None:  # too slow, or it died (memory): start afresh next time
                self.close()
            return answer == "1"


_SYMPY = _SympyWorker()
atexit.register(_SYMPY.close)
