"""Answer extraction for multiple choice, as MMLU-Pro's own evaluation does it.

The cascade is TIGER-AI-Lab/MMLU-Pro's own (`extract_answer`, `extract_again`, `extract_final` in
its `evaluate_from_*.py` scripts), so our accuracies are comparable with the published ones;
unlike its local-model script, nothing is guessed at random when no letter is found.
Its second and third regexes (`.*[aA]nswer:...` and a lookahead over the rest of the text) take
quadratic time on long lines; the same matches are found here in one linear scan each.
"""

from __future__ import annotations

import re

_ANSWER_IS = re.compile(r"answer is \(?([A-J])\)?")
_ANSWER_COLON = re.compile(r"(?=[aA]nswer:\s*([A-J]))")  # every start, overlapping ones too
_LONE_LETTER = re.compile(r"\b[A-J]\b")


def extract_choice(text: str | None) -> str | None:
    """The chosen letter A-J: the first "answer is (X)" / "answer is X"; else the last
    "Answer: X" that starts on the first line having one; else the last standalone capital
    A-J; else None."""
    if not text:
        return None
    m = _ANSWER_IS.search(text)
    if m:
        return m.group(1)
    hit = _answer_colon(text)
    if hit:
        return hit
    last = None
    for last in _LONE_LETTER.finditer(text):
        pass
    return last.group(0) if last else None


def _answer_colon(text: str) -> str | None:
    """What `re.search(r'.*[aA]nswer:\\s*([A-J])', text)` returns: the greedy `.*` cannot cross
    a newline, so the match starts on the first line with a hit and ends at its last hit."""
    hits = list(_ANSWER_COLON.finditer(text))
    if not hits:
        return None
    line_end = text.find("\n", hits[0].start())
    same_line = [h for h in hits if line_end < 0 or h.start() < line_end]
    return same_line[-1].group(1)
