"""What a request asks for beyond its body: `Prefer` (RFC 7240), `Idempotency-Key`, and
the `wait` and `redirect` query parameters.

Each header's grammar is one regular expression, used both to check requests and as the
`pattern` of the OpenAPI document, so the document and the server cannot disagree. The
patterns are written in the common subset of Python and ECMA-262 regular expressions.
"""

from __future__ import annotations

import dataclasses
import math
import re

from batchgate.errors import BadRequest

_TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_WORD = rf'(?:{_TOKEN}|"(?:[^"\\]|\\.)*")'
_DECIMAL = r"[0-9]{1,20}(?:\.[0-9]{1,20})?"
_SECONDS = rf'(?:{_DECIMAL}|"{_DECIMAL}")'
_WAIT = "[Ww][Aa][Ii][Tt]"
_PARAMS = rf"(?:[ \t]*;(?:[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*{_WORD})?)?)*"
# One preference: `wait` must carry a number of seconds; any other name may carry a value.
_PREFERENCE = (
    rf"(?:{_WAIT}[ \t]*=[ \t]*{_SECONDS}|(?!{_WAIT}[ \t]*(?:[=;,]|$)){_TOKEN}"
    rf"(?:[ \t]*=[ \t]*{_WORD})?){_PARAMS}"
)
PREFER_PATTERN = rf"^[ \t]*{_PREFERENCE}(?:[ \t]*,[ \t]*{_PREFERENCE})*[ \t]*$"
_PREFER_RE = re.compile(PREFER_PATTERN)
_ONE_PREFERENCE_RE = re.compile(rf"({_TOKEN})(?:[ \t]*=[ \t]*({_WORD}))?{_PARAMS}")

# Visible ASCII, spaces allowed inside: HTTP drops a header value's outer whitespace.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~](?:[ -~]*[!-~])?$"
IDEMPOTENCY_KEY_MAX_CHARS = 255
_IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)

# The spellings of a boolean query parameter.
FLAG_VALUES = {"true": True, "1": True, "false": False, "0": False}
# A number of seconds longer than this is no number a client means.
_MAX_NUMBER_CHARS = 64


@dataclasses.dataclass(frozen=True, slots=True)
class Preferences:
    wait_s: float | None = None
    respond_async: bool = False


def parse_prefer(values: list[str]) -> Preferences:
    """Parse every `Prefer` header; unknown preferences are ignored, as the RFC asks.

    Raises BadRequest for a header outside the RFC's grammar or a `wait` that is not a
    non-negative number of seconds (digits, with an optional decimal fraction).
    """
    wait_s: float | None = None
    respond_async = False
    for value in values:
        if not _PREFER_RE.match(value):
            raise BadRequest(
                f"Prefer: {_clip(value)!r} is not a list of preferences such as "
                "'respond-async' or 'wait=10'"
            )
        for found in _ONE_PREFERENCE_RE.finditer(value):
            name = found[1].lower()
            if name == "respond-async":
                respond_async = True
            elif name == "wait":
                wait_s = seconds(found[2].strip('"'), "Prefer: wait")
    return Preferences(wait_s, respond_async)


def check_idempotency_key(key: str | None) -> str | None:
    """The `Idempotency-Key`, if any; raises BadRequest unless it is 1 to 255 visible ASCII
    characters (spaces allowed inside)."""
    if key is None:
        return None
    if len(key) > IDEMPOTENCY_KEY_MAX_CHARS or not _IDEMPOTENCY_KEY_RE.match(key):
        raise BadRequest(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_CHARS} visible ASCII characters"
        )
    return key


def query_wait(raw: str | None) -> float:
    """The `?wait=N` query parameter in seconds (0 when absent)."""
    if raw is None or raw == "":
        return 0.0
    return seconds(raw, "wait")


def seconds(text: str, name: str) -> float:
    """A wait in seconds: a finite number >= 0 (`nan`, `inf` and `1e400` are refused)."""
    try:
        value = float(text) if len(text) <= _MAX_NUMBER_CHARS else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadRequest(f"{name}={_clip(text)!r} is not a number of seconds")
    if value < 0:
        raise BadRequest(f"{name} must not be negative")
    return value


def query_flag(name: str, raw: str | None) -> bool:
    """A boolean query parameter: `true`/`1` or `false`/`0` (false when absent)."""
    if raw is None:
        return False
    try:
        return FLAG_VALUES[raw]
    except KeyError:
        raise BadRequest(f"{name}={_clip(raw)!r} is not one of true, false, 1, 0") from None


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "…"
