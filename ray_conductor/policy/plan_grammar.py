"""`PlanGrammar`: a prefix checker for the plan language, for structure-constrained decoding.

A small model writes the three lists with different lengths far more often than it writes
anything else wrong (123 of 137 unparsable plans of a 135M conductor offered 12 workers and
the program steps were `length_mismatch`), and an unparsable plan earns nothing, so GRPO
spends its samples on the format. The engine can instead refuse, token by token, any text
that leaves the language; this checker says which texts stay in it.

The language is the canonical form `render` writes, with a little slack for spacing::

    model_id = [ID, ...]          1..max_steps ids (0 with allow_empty); ID is an offered
                                  index (ids="index") or a quoted offered name (ids="name")
    subtasks = ['...', ...]       exactly as many quoted strings, one line each
    access_list = [ACC, ...]      exactly as many entries: [] or [i, j] (earlier steps),
                                  'all', 'agree' / 'disagree' (from step 2 on), or
                                  'agree:i,j' / 'disagree:i,j' (two or more earlier steps)

then only whitespace and the end of text. A program step (vote) must read some earlier step.
Reasoning before the lists is not in the language: a constrained conductor plans directly.

`feed(state, text)` returns the state after `text`, or None when `text` leaves the language;
`complete(state)` says whether the text may end there. States are immutable tuples, so the
engine can try a token and drop it. Plain Python; no torch.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from ray_conductor.errors import ConfigError
from ray_conductor.workflow.parse import MAX_SUBTASK_CHARS
from ray_conductor.workflow.programs import is_program
from ray_conductor.workflow.scan import LABELS

MAX_SPACES = 2  # spaces in a row inside a list: enough for any spacing, not for padding
MAX_GAP = 4  # whitespace between two lists, or after the last one
_CONDITIONS = ("agree", "disagree")


class State(NamedTuple):
    """Where a prefix stands. `phase`: "head" (writing list `k`'s label), "list" (inside
    it), "end" (after the last list). `steps`: the workers named so far."""

    phase: str = "head"
    k: int = 0
    pos: int = 0  # head: characters of "label = [" matched (spacing aside)
    gap: int = 0  # whitespace in a row
    count: int = 0  # list: items finished
    item: str = ""  # "": between items; "q" quoted; "d" digits; "l" an access sub-list
    after: bool = False  # an item just finished: a comma or the closing bracket comes next
    quote: str = ""
    buf: str = ""  # the current item's text (a string's content, digits)
    esc: bool = False
    sub: tuple[int, ...] = ()  # an access sub-list's finished indices
    steps: tuple[str, ...] = ()


class PlanGrammar:
    """Prefix checker for plans over `workers` (the offered names, in id order)."""

    def __init__(self, workers: Sequence[str], *, ids: str = "index", max_steps: int = 5,
                 allow_empty: bool = False, max_subtask_chars: int = MAX_SUBTASK_CHARS):
        if ids not in ("index", "name"):
            raise ConfigError(f"worker ids must be 'index' or 'name', got {ids!r}")
        if not workers:
            raise ConfigError("a plan grammar needs at least one offered worker")
        self.workers = list(workers)
        self.ids = ids
        self.max_steps = max_steps
        self.allow_empty = allow_empty
        self.max_subtask_chars = max_subtask_chars
        # what a step may name: any offered worker, except a program first (it would have
        # nothing to read); as written in the plan (a name, or an index's digits)
        names = [w for w in self.workers if not is_program(w)]
        spell = (lambda ws: ws) if ids == "name" else (
            lambda ws: [str(i) for i, w in enumerate(self.workers) if w in ws])
        self._first_ids, self._later_ids = spell(names), spell(self.workers)

    def start(self) -> State:
        return State()

    def complete(self, st: State) -> bool:
        return st.phase == "end"

    def feed(self, st: State | None, text: str) -> State | None:
        for ch in text:
            if st is None:
                return None
            st = self._char(st, ch)
        return st

    # -- one character -------------------------------------------------------------------

    def _char(self, st: State, ch: str) -> State | None:
        if st.phase == "end":
            return st._replace(gap=st.gap + 1) if ch in " \t\n" and st.gap < MAX_GAP else None
        if st.phase == "head":
            return self._head(st, ch)
        if st.item == "q":
            return self._quoted(st, ch)
        if st.item == "d":
            if ch.isdigit():
                return self._digits(st, st.buf + ch)
            if st.buf not in self._ids(st.count):
                return None
            return self._char(self._finish(st, self.workers[int(st.buf)]), ch)
        if st.item == "l":
            return self._sublist(st, ch)
        return self._between(st, ch)

    def _head(self, st: State, ch: str) -> State | None:
        label = LABELS[st.k]
        n = len(label)
        if st.pos == 0 and ch in " \t\n":  # before the label
            return st._replace(gap=st.gap + 1) if st.gap < MAX_GAP else None
        if st.pos < n:
            return st._replace(pos=st.pos + 1, gap=0) if ch == label[st.pos] else None
        if ch == " ":  # around "="
            return st._replace(gap=st.gap + 1) if st.gap < MAX_SPACES else None
        if st.pos == n:
            return st._replace(pos=n + 1, gap=0) if ch == "=" else None
        if ch == "[":
            return st._replace(phase="list", pos=0, gap=0, count=0, item="", after=False)
        return None

    def _ids(self, step: int) -> list[str]:
        return self._later_ids if step > 0 else self._first_ids

    def _between(self, st: State, ch: str) -> State | None:
        """Between items of list `k`: an item, a comma or the closing bracket."""
        if ch == " ":
            return st._replace(gap=st.gap + 1) if st.gap < MAX_SPACES else None
        st = st._replace(gap=0)
        if ch == "]":
            return self._close(st)
        if st.after:
            if ch == "," and st.count < self._limit(st):
                return st._replace(after=False)
            return None
        if st.count >= self._limit(st):
            return None
        if ch in "'\"" and (st.k > 0 or self.ids == "name"):
            return st._replace(item="q", quote=ch, buf="", esc=False)
        if st.k == 0 and self.ids == "index" and ch.isdigit():
            return self._digits(st, ch)
        if st.k == 2 and ch == "[":
            return st._replace(item="l", buf="", sub=(), after=False)
        return None

    def _limit(self, st: State) -> int:
        return self.max_steps if st.k == 0 else len(st.steps)

    def _close(self, st: State) -> State | None:
        """The list's `]`: allowed after an item when the count is right, or on an empty
        list where an empty plan is allowed."""
        if st.count == 0:
            if st.after or not self.allow_empty or st.steps:
                return None
        elif not st.after or (st.k > 0 and st.count != len(st.steps)):
            return None
        if st.k == 2:
            return st._replace(phase="end", gap=0, item="", after=False)
        return State(phase="head", k=st.k + 1, steps=st.steps)

    def _finish(self, st: State, worker: str | None = None) -> State:
        steps = st.steps + (worker,) if worker is not None else st.steps
        return st._replace(item="", after=True, buf="", quote="", esc=False, sub=(),
                           count=st.count + 1, steps=steps, gap=0)

    def _digits(self, st: State, buf: str) -> State | None:
        if not any(s.startswith(buf) for s in self._ids(st.count)):
            return None
        return st._replace(item="d", buf=buf)

    def _quoted(self, st: State, ch: str) -> State | None:
        if ch == "\n":
            return None
        if st.esc:
            return st._replace(buf=st.buf + ch, esc=False) if st.k == 1 else None
        if ch == st.quote:
            return self._end_string(st)
        if ch == "\\":
            return st._replace(esc=True) if st.k == 1 else None
        buf = st.buf + ch
        if st.k == 0 and not any(w.startswith(buf) for w in self._ids(st.count)):
            return None
        if st.k == 1 and len(buf) > self.max_subtask_chars:
            return None
        if st.k == 2 and not self._access_prefix(buf, st.count):
            return None
        return st._replace(buf=buf)

    def _end_string(self, st: State) -> State | None:
        if st.k == 0:
            return self._finish(st, st.buf) if st.buf in self._ids(st.count) else None
        if st.k == 2 and not self._access_done(st.buf, st.count, st.steps[st.count]):
            return None
        return self._finish(st)

    def _sublist(self, st: State, ch: str) -> State | None:
        """An access entry `[i, j]`: indices of earlier steps, each once."""
        i = st.count
        free = [j for j in range(i) if j not in st.sub]
        if ch.isdigit():
            if st.after and not st.buf:
                return None
            buf = st.buf + ch
            if not any(str(j).startswith(buf) for j in free):
                return None
            return st._replace(buf=buf, gap=0)
        if st.buf:  # a number ends here
            if st.buf not in [str(j) for j in free]:
                return None
            st = st._replace(buf="", sub=st.sub + (int(st.buf),), after=True)
            free = [j for j in range(i) if j not in st.sub]
        if ch == " ":
            return st._replace(gap=st.gap + 1) if st.gap < MAX_SPACES else None
        st = st._replace(gap=0)
        if ch == "," and st.after and free:
            return st._replace(after=False)
        if ch == "]" and (st.after or not st.sub):
            if not st.sub and is_program(st.steps[i]):
                return None  # a vote that reads nothing
            return self._finish(st)
        return None

    # -- access strings ------------------------------------------------------------------

    def _access_prefix(self, buf: str, i: int) -> bool:
        if "all".startswith(buf):
            return True
        for word in _CONDITIONS:
            if i >= 2 and word.startswith(buf):
                return True
            if i >= 2 and buf.startswith(word + ":"):
                return self._indices_prefix(buf[len(word) + 1:], i)
        return False

    def _indices_prefix(self, rest: str, i: int) -> bool:
        """`rest` can begin a comma list of distinct indices below `i`."""
        *done, last = rest.split(",")
        if not all(p.isdigit() and str(int(p)) == p and int(p) < i for p in done):
            return False
        used = {int(p) for p in done}
        if len(used) != len(done):
            return False
        free = [str(j) for j in range(i) if j not in used]
        if not free:
            return False
        return not last or (last.isdigit() and any(f.startswith(last) for f in free))

    def _access_done(self, buf: str, i: int, worker: str) -> bool:
        if buf == "all":
            return i > 0 or not is_program(worker)
        if buf in _CONDITIONS:
            return i >= 2
        for word in _CONDITIONS:
            if buf.startswith(word + ":"):
                rest = buf[len(word) + 1:]
                parts = rest.split(",")
                if not self._indices_prefix(rest, i) or not all(parts):
                    return False
                idx = [int(p) for p in parts]
                return len(idx) >= 2 and len(set(idx)) == len(idx) and max(idx) < i
        return False
