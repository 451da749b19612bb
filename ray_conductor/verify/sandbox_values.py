"""The values that cross between the code under test and its trusted tests, as JSON lines.

The code under test runs in one sandboxed process, the tests in another (`boundary`); a call
of the code by the tests is a request line (`{"call": NAME, "args": [...], "kwargs": [...]}`)
and its answer a reply line (`{"value": ...}`, or `{"raised": "ValueError", "message": ...}`).
Only these plain values cross (anything else is refused):

* JSON's own: null, true/false, integers of up to 63 bits, finite floats, text;
* tagged one-key objects: `{"int": hex}` (larger integers), `{"float": "nan"|"inf"|"-inf"}`,
  `{"complex": [re, im]}`, `{"bytes": hex}`, `{"list": [...]}`, `{"tuple": [...]}`,
  `{"set": [...]}`, `{"frozenset": [...]}`, `{"dict": [[key, value], ...]}`,
  `{"range": [start, stop, step]}`, `{"fraction": [num, den]}`, `{"decimal": text}` and
  `{"iter": [...]}` (an iterator the code returned, read to its end: it arrives as a list
  iterator).

`decode` is the trusted side's gate: whatever bytes the code under test writes, the tests get
exact instances of those types (no subclass, no `__eq__` of the code's making) or an error.
`encode` is generous on purpose (subclasses, numpy scalars and arrays, generators become their
plain equivalents): it runs in the code's own process, where it protects nothing.

Stdlib only and no package imports: the sandbox loads this file by path.
"""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction

MAX_LINE = 32 << 20  # bytes of one message
MAX_DEPTH = 100  # nesting of containers
MAX_ITEMS = 1 << 20  # items read from one returned iterator
_SMALL = 1 << 63
_CONTAINERS = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}
_BUILD = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset,
          "iter": lambda xs: iter(list(xs))}


class ValueRefused(ValueError):
    """A value that cannot cross the boundary, or a message that is not one."""


# -- encoding (either side) ------------------------------------------------------------------

def encode(value, depth: int = 0):
    """The JSON-able form of `value`; `ValueRefused` for what has none."""
    if depth > MAX_DEPTH:
        raise ValueRefused(f"nested deeper than {MAX_DEPTH} levels")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -_SMALL <= value < _SMALL else {"int": hex(value)}
    if t is float:
        return value if value - value == 0 else {"float": repr(value)}
    if t in _CONTAINERS:
        return {_CONTAINERS[t]: [encode(v, depth + 1) for v in value]}
    if t is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if t is complex:
        return {"complex": [encode(value.real), encode(value.imag)]}
    if t is bytes or t is bytearray:
        return {"bytes": bytes(value).hex()}
    if t is range:
        return {"range": [value.start, value.stop, value.step]}
    if t is Fraction:
        return {"fraction": [encode(value.numerator), encode(value.denominator)]}
    if t is Decimal:
        return {"decimal": str(value)}
    return encode(_plain(value), depth)


def _plain(value):
    """The plain equivalent of a value of another type (convenience for the code's side)."""
    module = getattr(type(value), "__module__", "") or ""
    if module.split(".")[0] == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    for base in (bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset):
        if isinstance(value, base):
            return _as_base(base, value)
    if hasattr(value, "__next__") and hasattr(value, "__iter__"):
        items = []
        for item in value:
            items.append(item)
            if len(items) > MAX_ITEMS:
                raise ValueRefused(f"an iterator of more than {MAX_ITEMS} items")
        return _Iter(items)
    raise ValueRefused(f"a value of type {type(value).__name__} cannot cross the sandbox "
                       "boundary (plain values only: numbers, text, bytes, lists, tuples, "
                       "dicts, sets)")


def _as_base(base, value):
    """`value` (an instance of a subclass of `base`) as an exact `base`, by `base`'s own code."""
    if base is int:
        return int.__index__(value)
    if base is float:
        return float.__float__(value)
    if base is str:
        return str.__str__(value)
    if base is complex:
        return complex(float.__float__(value.real), float.__float__(value.imag))
    if base is dict:
        return dict(dict.items(value))
    return base(base.__iter__(value))


class _Iter(list):
    """A list that is sent as an iterator."""


def encode_result(value):
    """`encode` for a returned value: an iterator the code returned crosses as one."""
    plain = value if type(value) in _EXACT else _plain(value)
    if type(plain) is _Iter:
        return {"iter": [encode(v, 1) for v in plain]}
    return encode(plain)


_EXACT = frozenset({type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set,
                    frozenset, range, Fraction, Decimal})


# -- decoding (the trusted side's gate) ------------------------------------------------------

def decode(obj, depth: int = 0):
    """The value an encoded object stands for, built from exact types only."""
    if depth > MAX_DEPTH:
        raise ValueRefused(f"nested deeper than {MAX_DEPTH} levels")
    t = type(obj)
    if obj is None or t is bool or t is str or t is float:
        return obj
    if t is int:
        if not -_SMALL <= obj < _SMALL:
            raise ValueRefused("a large integer must be sent as {\"int\": hex}")
        return obj
    if t is not dict or len(obj) != 1:
        raise ValueRefused(f"not an encoded value: {_brief(obj)}")
    (tag, body), = obj.items()
    if tag in _BUILD:
        items = [decode(v, depth + 1) for v in _list(body, tag)]
        try:
            return _BUILD[tag](items)
        except TypeError:
            raise ValueRefused(f"a {tag} of unhashable items") from None
    if tag == "dict":
        pairs = [(decode(p[0], depth + 1), decode(p[1], depth + 1))
                 for p in _list(body, tag) if _pair(p)]
        try:
            return dict(pairs)
        except TypeError:
            raise ValueRefused("a dict with an unhashable key") from None
    return _scalar(tag, body)


def _scalar(tag: str, body):
    if tag == "int" and type(body) is str and body.lstrip("-").startswith("0x"):
        return int(body, 16)
    if tag == "float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "complex":
        re_, im = _list(body, tag, 2)
        return complex(_number(re_, float), _number(im, float))
    if tag == "bytes" and type(body) is str:
        try:
            return bytes.fromhex(body)
        except ValueError:
            raise ValueRefused("bytes must be sent as hex") from None
    if tag == "range":
        start, stop, step = (_number(x, int) for x in _list(body, tag, 3))
        if step == 0:
            raise ValueRefused("a range with step 0")
        return range(start, stop, step)
    if tag == "fraction":
        num, den = (_number(x, int) for x in _list(body, tag, 2))
        if den == 0:
            raise ValueRefused("a fraction with denominator 0")
        return Fraction(num, den)
    if tag == "decimal" and type(body) is str and len(body) < 1000:
        try:
            return Decimal(body)
        except ArithmeticError:
            raise ValueRefused("not a decimal number") from None
    raise ValueRefused(f"not an encoded value: {_brief({tag: body})}")


def _list(body, tag: str, length: int | None = None) -> list:
    if type(body) is not list or (length is not None and len(body) != length):
        raise ValueRefused(f"a {tag} must carry a list" + (f" of {length}" if length else ""))
    return body


def _pair(p) -> bool:
    if type(p) is not list or len(p) != 2:
        raise ValueRefused("a dict must carry [key, value] pairs")
    return True


def _number(x, kind):
    v = decode(x)
    if kind is int and type(v) is not int:
        raise ValueRefused("expected an integer")
    if kind is float and type(v) not in (int, float):
        raise ValueRefused("expected a number")
    return v


def _brief(obj) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


# -- messages --------------------------------------------------------------------------------

def dumps(message: dict) -> bytes:
    """One message as one line."""
    return (json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
            + "\n").encode("ascii")


def loads(line: bytes) -> dict:
    """One line as a message (a JSON object); `ValueRefused` for anything else."""
    if len(line) > MAX_LINE:
        raise ValueRefused(f"a message over {MAX_LINE} bytes")
    try:
        msg = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise ValueRefused(f"not a JSON message ({str(e)[:80]})") from None
    if type(msg) is not dict:
        raise ValueRefused("a message must be a JSON object")
    return msg


def _no_constant(name: str):
    raise ValueRefused(f"{name} is not JSON (send it as {{\"float\": ...}})")
