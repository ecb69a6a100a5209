"""The `Prefer` request header (RFC 7240): `wait=N` and `respond-async`."""

from __future__ import annotations

import dataclasses

from batchgate.errors import BadRequest


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
                try:
                    wait_s = float(arg.strip().strip('"'))
                except ValueError:
                    raise BadRequest(f"Prefer: wait={arg!r} is not a number of seconds") from None
                if wait_s < 0:
                    raise BadRequest("Prefer: wait must not be negative")
    return Preferences(wait_s, respond_async)


def query_wait(raw: str | None) -> float:
    """The `?wait=N` query parameter in seconds (0 when absent)."""
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"wait={raw!r} is not a number of seconds") from None
    if value < 0:
        raise BadRequest("wait must not be negative")
    return value
