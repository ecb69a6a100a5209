"""RFC 9457 problem details responses for every error the gateway returns."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from batchgate.context import current_request_id
from batchgate.errors import PROBLEM_BASE, BatchgateError, JobCancelled, JobFailed
from batchgate.models import Job, JobStatus, dumps

PROBLEM_JSON = "application/problem+json"


def problem_response(
    body: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> Response:
    """A problem details response; it names the request id, when there is one."""
    rid = current_request_id()
    if rid is not None:
        body = {**body, "request_id": rid}
    return Response(dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def error_response(exc: BatchgateError, instance: str | None = None) -> Response:
    return problem_response(exc.problem_details(instance), exc.status, exc.headers())


def job_error(job: Job) -> BatchgateError:
    """The error of a failed (500) or cancelled (409) job."""
    if job.error is not None and job.status is JobStatus.FAILED:
        detail = f"{job.error.type}: {job.error.message}"
        return JobFailed(detail, job_id=job.id, error=job.error.to_json())
    return JobCancelled(f"job {job.id} was cancelled", job_id=job.id)


def job_problem_details(job: Job) -> dict[str, Any]:
    return job_error(job).problem_details(f"/v1/jobs/{job.id}")


def job_problem(job: Job, headers: dict[str, str]) -> Response:
    """The problem response for a failed (500) or cancelled (409) job."""
    return problem_response(job_problem_details(job), job_error(job).status, headers)


async def batchgate_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatchgateError)
    return error_response(exc, request.url.path)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """The router's own errors (no route, method not allowed) as problems."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    path = request.url.path
    if exc.status_code == 404:
        detail = f"no endpoint at {path}; the API is described at /openapi.json"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {path}; allowed: {headers.get('Allow', '')}"
    else:
        detail = str(exc.detail)
    body = {
        "type": PROBLEM_BASE + ("not-found" if exc.status_code == 404 else "http-error"),
        "title": str(exc.detail),
        "status": exc.status_code,
        "detail": detail,
        "instance": path,
    }
    return problem_response(body, exc.status_code, headers)
