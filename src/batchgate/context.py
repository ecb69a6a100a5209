"""The request id of the work in hand, carried from the HTTP request through the queue."""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

# The request id of the current HTTP request, or of the task a worker is running.
request_id: ContextVar[str | None] = ContextVar("batchgate_request_id", default=None)

# What a client may send as X-Request-Id; anything else is replaced by a fresh id.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:/+=@-]{1,128}$"
_ACCEPTABLE = re.compile(REQUEST_ID_PATTERN)


def new_request_id() -> str:
    """A fresh random request id (96 bits, URL-safe, 16 characters)."""
    return secrets.token_urlsafe(12)


def accept_request_id(presented: str | None) -> str:
    """The client's `X-Request-Id` when it is a short printable token, else a fresh id."""
    if presented is not None and _ACCEPTABLE.fullmatch(presented):
        return presented
    return new_request_id()


def current_request_id() -> str | None:
    """The request id of the work in hand, if any."""
    return request_id.get()
