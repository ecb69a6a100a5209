"""The JSON rules for everything a client sends, and the one decoder that enforces them.

A JSON text batchgate accepts (a plain function's body, each item of a batch, a task
message) must be RFC 8259 JSON in UTF-8 and also:

- hold no `NaN`, `Infinity` or `-Infinity` (not JSON, though Python's parser takes them);
- hold no number whose magnitude reaches 2**1024, the range of a 64-bit float: `1e400`
  and a 400-digit integer are refused alike (`1e-400` is in range: it is 0.0);
- hold no lone UTF-16 surrogate escape (`"\\ud800"`): such a string has no UTF-8 form;
- nest arrays and objects at most MAX_DEPTH levels deep.

A UTF-8 byte order mark at the very start of a body is skipped (RFC 8259 allows a parser
to ignore it); anywhere else it is an error. The gateway validates each body once with
these rules and answers 400 for a breach; workers decode task messages with the same rules.

The checks cost little on ordinary input: a byte translation spots text that could hold
an out-of-range number (only then do the number hooks run), and the nesting and
surrogate checks run only when the text holds more brackets than MAX_DEPTH, or a
surrogate escape.
"""

from __future__ import annotations

import json
import math
import operator
import re
from itertools import accumulate, count
from typing import Any

MAX_DEPTH = 512
BOM = b"\xef\xbb\xbf"

# Numbers at or beyond this magnitude are refused (floats overflow to infinity there).
_LIMIT = 2**1024
# Longest integer literal that can be in range: 2**1024 has 309 digits.
_MAX_INT_DIGITS = 309


class JsonRejected(ValueError):
    """Valid JSON syntax that breaks one of batchgate's rules; the text says which."""


def _reject_constant(name: str) -> Any:
    raise JsonRejected(f"{name} is not allowed (JSON has no NaN or infinities)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonRejected(f"the number {_clip(text)} is out of range")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > _MAX_INT_DIGITS or not -_LIMIT < (value := int(text)) < _LIMIT:
        raise JsonRejected(f"the number {_clip(text)} is out of range")
    return value


def _clip(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}…({len(text)} characters)"


# Plain: the C scanner at full speed, refusing only NaN and infinities.
PLAIN = json.JSONDecoder(parse_constant=_reject_constant)
# Checked: every number through a range check (a Python call per number).
_CHECKED = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int
)

# Digits -> "0", exponent marks -> "e", signs -> "+": out-of-range numbers need a 3-digit
# exponent or a long digit run (a value with a 2-digit exponent needs 210 digits or more).
_NUMBER_SHAPE = bytes.maketrans(b"0123456789E-", b"0000000000e+")
_RISKY_SHAPES = (b"e000", b"e+000", b"0" * 100)

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Keep brackets and quotes only; both kinds of bracket count alike.
_BRACKETS_DELETE = bytes(b for b in range(256) if b not in b'[]{}"')
_BRACKETS_FOLD = bytes.maketrans(b"{}", b"[]")
_DEPTH_DELTA = bytes.maketrans(b"[]", b"\x02\x00")


def strip_bom(data: bytes) -> bytes:
    """`data` without a leading UTF-8 byte order mark."""
    return data[3:] if data.startswith(BOM) else data


def loads(data: bytes | str, *, extra_depth: int = 0) -> Any:
    """Parse one JSON text under the rules (a leading BOM is skipped).

    `extra_depth` allows that many levels more, for a text that wraps an accepted value
    (a task message holds its payload one level down). Raises UnicodeDecodeError for bytes
    that are not UTF-8, json.JSONDecodeError for bad syntax and JsonRejected for a breach.
    """
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    raw = strip_bom(raw)
    text = raw.decode("utf-8") if isinstance(data, bytes) else data.removeprefix("\ufeff")
    decoder = _CHECKED if _risky_numbers(raw) else PLAIN
    value = _decode(decoder, text)
    check_shape(raw, value, extra_depth)
    return value


def raw_decode(text: str, pos: int = 0) -> tuple[Any, int]:
    """Parse the one JSON value starting at `text[pos]` under the rules; (value, end).

    For a streamed body: errors as `loads`, except that a number too long for Python to
    convert raises a plain ValueError too (the caller may not have the whole number yet).
    """
    try:
        value, end = PLAIN.raw_decode(text, pos)
    except RecursionError:
        raise JsonRejected(_too_deep(MAX_DEPTH)) from None
    check(text[pos:end], value)
    return value, end


def check(text: str, value: Any, extra_depth: int = 0) -> None:
    """Apply the rules to `value`, parsed from `text` by PLAIN; raises JsonRejected."""
    raw = text.encode("utf-8", "surrogatepass")
    if _risky_numbers(raw):
        _decode(_CHECKED, text)  # raises for the first number out of range
    check_shape(raw, value, extra_depth)


def check_shape(raw: bytes, value: Any, extra_depth: int = 0) -> None:
    """The nesting and surrogate rules for `value`, parsed from the UTF-8 text `raw`."""
    limit = MAX_DEPTH + extra_depth
    if raw.count(b"[") + raw.count(b"{") > limit and depth_of(raw) > limit:
        raise JsonRejected(_too_deep(limit))
    if b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(value):
        raise JsonRejected("a string holds a lone UTF-16 surrogate escape (such as \\ud800)")


def _decode(decoder: json.JSONDecoder, text: str) -> Any:
    try:
        return decoder.decode(text)
    except RecursionError:
        raise JsonRejected(_too_deep(MAX_DEPTH)) from None
    except json.JSONDecodeError:
        raise
    except JsonRejected:
        raise
    except ValueError:
        # int() refuses literals over sys.get_int_max_str_digits() (4300) digits.
        raise JsonRejected("a number is out of range (too many digits)") from None


def _too_deep(limit: int) -> str:
    return f"arrays and objects nest more than {limit} levels deep"


def _risky_numbers(raw: bytes) -> bool:
    """Whether `raw` could hold a number out of range (never False when it does)."""
    shape = raw.translate(_NUMBER_SHAPE)
    return any(risky in shape for risky in _RISKY_SHAPES)


def depth_of(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in the valid JSON text `raw`."""
    if b"\\" in raw:
        raw = _ESCAPE.sub(b"", raw)  # no escaped quote is left to confuse the strings below
    brackets = raw.translate(_BRACKETS_FOLD, _BRACKETS_DELETE)
    if b'"' in brackets:
        brackets = b"".join(brackets.split(b'"')[::2])  # drop brackets inside strings
    # Peel innermost pairs a few times (cheap for shallow text), then sum what is left.
    depth = 0
    while brackets and depth < 8:
        brackets = brackets.replace(b"[]", b"")
        depth += 1
    if not brackets:
        return depth
    deltas = brackets.translate(_DEPTH_DELTA)  # "[" -> 2, "]" -> 0: depth = sum - position
    deepest: int = max(map(operator.sub, accumulate(deltas), count(1)))
    return depth + deepest


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
