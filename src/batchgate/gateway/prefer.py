"""The `Prefer` request header (RFC 7240): `wait=N` and `respond-async`."""

from __future__ import annotations

import dataclasses
import math

from batchgate.errors import BadRequest

# A number of seconds longer than this is no number a client means.
_MAX_NUMBER_CHARS = 64


@dataclasses.dataclass(frozen=True, slots=True)
class Preferences:
    wait_s: float | None = None
    respond_async: bool = False


def parse_prefer(values: list[str]) -> Preferences:
    """Parse every `Prefer` header; unknown preferences are ignored, as the RFC asks."""
    wait_s: float | None = None
    respond_async = False
    for value in values:
        for token in value.split(","):
            name, _, arg = token.strip().partition("=")
            name = name.strip().lower()
            if name == "respond-async":
                respond_async = True
            elif name == "wait":
                wait_s = seconds(arg.strip().strip('"'), "Prefer: wait")
    return Preferences(wait_s, respond_async)


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


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "…"
