"""The batchgate exception tree: every error knows its HTTP status and problem type."""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://batchgate.dev/problems/"


class BatchgateError(Exception):
    """Root of every error batchgate raises on purpose."""

    status: ClassVar[int] = 500
    problem: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def problem_details(self, instance: str | None = None) -> dict[str, Any]:
        """Render this error as an RFC 9457 problem details object."""
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.problem,
            "title": self.title,
            "status": self.status,
            "detail": self.message,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def headers(self) -> dict[str, str]:
        """Response headers this error's problem carries besides its body."""
        return {}


class ConfigError(BatchgateError):
    """A setting, URL or app reference is wrong; raised before anything starts."""

    problem = "config-error"
    title = "Configuration error"


class BadRequest(BatchgateError):
    status = 400
    problem = "bad-request"
    title = "Bad request"


class Unauthorized(BatchgateError):
    status = 401
    problem = "unauthorized"
    title = "Missing or invalid API key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="batchgate"'}


class NotFound(BatchgateError):
    status = 404
    problem = "not-found"
    title = "Not found"


class RequestTimeout(BatchgateError):
    """The request body came too slowly (BATCHGATE_BODY_TIMEOUT)."""

    status = 408
    problem = "request-timeout"
    title = "Request body too slow"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}  # the rest of the body is not read


class PayloadTooLarge(BatchgateError):
    status = 413
    problem = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(BatchgateError):
    status = 415
    problem = "unsupported-media-type"
    title = "Unsupported media type"


class IdempotencyConflict(BatchgateError):
    status = 422
    problem = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"


class Overloaded(BatchgateError):
    status = 503
    problem = "overloaded"
    title = "Service overloaded"

    def __init__(self, message: str, retry_after_s: int = 1, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class JobFailed(BatchgateError):
    status = 500
    problem = "job-failed"
    title = "Job failed"


class JobCancelled(BatchgateError):
    status = 409
    problem = "job-cancelled"
    title = "Job cancelled"


class BackendError(BatchgateError):
    """A queue, store or state backend failed in a way the caller cannot fix."""

    status = 503
    problem = "backend-unavailable"
    title = "Backend unavailable"


class LeaseLost(BatchgateError):
    """A fenced operation was refused: another attempt owns the task now."""

    status = 409
    problem = "lease-lost"
    title = "Lease lost"


def missing_extra(package: str, extra: str) -> ConfigError:
    """The error for an optional dependency that is not installed."""
    return ConfigError(
        f"the {package!r} package is needed for this backend: pip install 'batchgate[{extra}]'"
    )
