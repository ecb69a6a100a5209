"""Problem documents (RFC 9457) back into the batchgate exceptions the gateway raised."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

from batchgate import errors
from batchgate.client.retry import parse_retry_after
from batchgate.errors import PROBLEM_BASE, BatchgateError, Overloaded


def _problem_classes() -> dict[str, type[BatchgateError]]:
    found = {}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, BatchgateError):
            found[value.problem] = value
    return found


_BY_PROBLEM = _problem_classes()
_BY_STATUS: dict[int, type[BatchgateError]] = {
    400: errors.BadRequest,
    401: errors.Unauthorized,
    403: errors.Unauthorized,
    404: errors.NotFound,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    422: errors.IdempotencyConflict,
    429: errors.Overloaded,
    502: errors.BackendError,
    503: errors.Overloaded,
    504: errors.BackendError,
}


def error_from_problem(
    problem: Mapping[str, Any] | None, status: int | None = None, retry_after: str | None = None
) -> BatchgateError:
    """The batchgate exception for an RFC 9457 problem document.

    The class comes from the problem `type` (`…/problems/job-failed` -> JobFailed), else
    from the HTTP `status`, else BatchgateError. `detail` becomes the message; the other
    members (`job_id`, `error`, `instance`, and `type` when the class does not imply it)
    are kept in `.extra`. `retry_after` (a `Retry-After` value) feeds Overloaded.
    """
    doc = dict(problem or {})
    if status is None:
        status = doc["status"] if isinstance(doc.get("status"), int) else 500
    kind = str(doc.get("type", ""))
    name = kind[len(PROBLEM_BASE) :] if kind.startswith(PROBLEM_BASE) else ""
    cls = _BY_PROBLEM.get(name) or _BY_STATUS.get(status, BatchgateError)
    message = str(doc.get("detail") or doc.get("title") or f"HTTP {status}")
    exc: BatchgateError
    if issubclass(cls, Overloaded):
        seconds = parse_retry_after(retry_after)
        exc = cls(message, retry_after_s=1 if seconds is None else round(seconds))
    else:
        exc = cls(message)
    drop = {"detail", "title", "status"} | ({"type"} if cls.problem == name else set())
    exc.extra = {k: v for k, v in doc.items() if k not in drop}
    return exc


def error_from_answer(status: int, headers: Mapping[str, str], body: bytes) -> BatchgateError:
    """The exception for an error response, a problem document or not.

    `headers` is looked up in lower case (an httpx.Headers, or a dict of lower-case names).
    """
    doc: Any = None
    if "json" in headers.get("content-type", ""):
        with contextlib.suppress(ValueError):
            doc = json.loads(body)
    if not isinstance(doc, dict):
        text = body.decode("utf-8", "replace").strip()[:200]
        doc = {"detail": f"HTTP {status}" + (f": {text}" if text else "")}
    return error_from_problem(doc, status, headers.get("retry-after"))
