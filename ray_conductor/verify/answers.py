"""Comparable answers: the short canonical answer in a worker's text, for votes and
conditional steps (two workers agree when their extracted answers are equal strings).

Pure functions over the checkers' extractors. Formats: "mc" (the letter MMLU-Pro's extractor
finds), "number" / "gsm8k" (the final number), "math" (the normalised MATH answer; numbers
in one canonical form, so 0.5 and \\frac{1}{2} agree). Code and label tasks have no
comparable answer.

A gold answer (`reference_answer`) is read in the same canonical form, more leniently (a
bare "1/2" is a number, "(b)" a letter), and `answers_match` is the replay judge's verdict:
equal letters, numbers equal to within 1e-6 (relative), MATH answers equal as normalised
strings, as exact numbers, or item by item as tuples and sets (no symbolic algebra, so the
verdict is fast and the same on every machine).
"""

from __future__ import annotations

from fractions import Fraction

from ray_conductor.errors import ConfigError
from ray_conductor.verify.checkers import extract_choice
from ray_conductor.verify.math import (
    _clean_number, extract_math_answer, gsm8k_answer, math_equal, normalize_math, to_number)

COMPARABLE = ("mc", "number", "gsm8k", "math")
NOT_COMPARABLE = ("code", "humaneval", "mbpp", "label")
MAX_MATH_ANSWER_CHARS = 200  # longer is a solution without a marked answer, not an answer


def comparable(answer_format: str | None) -> bool:
    """Whether answers of this format can be compared (voted on, agreed on)."""
    if answer_format is None or answer_format in NOT_COMPARABLE:
        return False
    if answer_format in COMPARABLE:
        return True
    raise ConfigError(f"unknown answer format {answer_format!r}; known: "
                      f"{', '.join(COMPARABLE + NOT_COMPARABLE)}", code="bad_answer_format")


def extract_answer(text: str | None, answer_format: str | None) -> str | None:
    """The canonical answer in `text`, or None (no answer found, or not a comparable format)."""
    if not text or not comparable(answer_format):
        return None
    if answer_format == "mc":
        return extract_choice(text)
    if answer_format in ("number", "gsm8k"):
        return gsm8k_answer(text)
    return _math_answer(text)


def reference_answer(reference: object, answer_format: str | None) -> str | None:
    """A gold answer in the canonical form `extract_answer` gives a worker's: "B" for "(b)"
    or "The answer is (B)"; "0.5" for "1/2" or "#### 0.5"; "1/2" for "\\frac{1}{2}". None
    when it holds no such answer (or the format has no comparable answers)."""
    if reference is None or not comparable(answer_format):
        return None
    s = str(reference).strip()
    if not s:
        return None
    if answer_format == "mc":
        letter = s.strip("()").strip().upper()
        return letter if len(letter) == 1 and "A" <= letter <= "Z" else extract_choice(s)
    if answer_format in ("number", "gsm8k"):
        return _clean_number(s) or gsm8k_answer(s)
    return _math_answer(s)


def answers_match(answer: str | None, reference: str | None, answer_format: str | None) -> bool:
    """Whether a canonical answer (`extract_answer`) equals a canonical gold answer
    (`reference_answer`); False when either is missing."""
    if answer is None or reference is None or not comparable(answer_format):
        return False
    if answer == reference:
        return True
    if answer_format in ("number", "gsm8k"):
        try:
            a, r = float(answer), float(reference)
        except ValueError:
            return False
        return abs(a - r) <= 1e-6 * max(1.0, abs(r))
    if answer_format == "math":
        return math_equal(answer, reference, use_sympy=False)
    return False


def _math_answer(text: str) -> str | None:
    raw = extract_math_answer(text)
    if len(raw) > 4 * MAX_MATH_ANSWER_CHARS:  # also keeps normalisation's regexes short
        return None
    s = normalize_math(raw)
    if not s or len(s) > MAX_MATH_ANSWER_CHARS:
        return None
    n = to_number(s)
    return s if n is None else _number(n)


def _number(n: Fraction) -> str:
    return str(n.numerator) if n.denominator == 1 else f"{n.numerator}/{n.denominator}"
