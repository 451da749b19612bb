"""Comparable answers: the short canonical answer in a worker's text, for votes and
conditional steps (two workers agree when their extracted answers are equal strings).

Pure functions over the checkers' extractors. Formats: "mc" (the letter MMLU-Pro's extractor
finds), "number" / "gsm8k" (the final number), "math" (the normalised MATH answer; numbers
in one canonical form, so 0.5 and \\frac{1}{2} agree). Code and label tasks have no
comparable answer.
"""

from __future__ import annotations

from fractions import Fraction

from ray_conductor.errors import ConfigError
from ray_conductor.verify.checkers import extract_choice
from ray_conductor.verify.math import extract_math_answer, gsm8k_answer, normalize_math, to_number

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
