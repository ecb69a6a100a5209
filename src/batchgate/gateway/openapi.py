"""The OpenAPI 3.1 description of the HTTP API (`GET /openapi.json`).

One small builder per route returns that route's operation; `ROUTES` lists them, and the
functions of the registry each get a `POST /v1/functions/{name}` of their own, typed from
their annotations. Whoever adds a route adds its builder here in the same style, so the
conformance run (Schemathesis, `tests/e2e/test_openapi_conformance.py`) covers it.

With API keys on, every protected operation declares the two security schemes and a `401`;
the public ones (health, readiness, metrics, this document) declare none.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from batchgate import __version__
from batchgate.app import FunctionInfo, Registry
from batchgate.gateway.openapi_components import (
    NDJSON,
    NDJSON_REQUEST_TYPES,
    PRESIGNED_LOCATION,
    components,
    job_events_content,
    json_content,
    param,
    problem,
    response,
    schema,
    status_response,
)
from batchgate.models import FunctionKind

DESCRIPTION = """\
Submit a job and wait for its result in the same response. Every error is an RFC 9457
problem document (`application/problem+json`). A method a path does not support is a
`405` problem with `Allow`. Event streams (`text/event-stream`) are described one event at
a time: the schema of such a response is the schema of each of its events."""


@dataclasses.dataclass(frozen=True, slots=True)
class Doc:
    """What the route builders need to know about the server they describe."""

    api_keys: bool

    def protected(self, operation: dict[str, Any]) -> dict[str, Any]:
        """`operation`, needing an API key when keys are on (security + `401`)."""
        if self.api_keys:
            operation["security"] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
            operation["responses"]["401"] = problem(
                "A missing or unknown API key.", ("WWW-Authenticate",)
            )
        return operation

    def public(self, operation: dict[str, Any]) -> dict[str, Any]:
        """`operation`, open to anyone even when API keys are on."""
        if self.api_keys:
            operation["security"] = []
        return operation


RouteBuilder = Callable[[Doc], dict[str, Any]]

_JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.header.Job-Id"}}
    for name, operation in (
        ("status", "get_job"),
        ("result", "get_job_result"),
        ("events", "get_job_events"),
        ("cancel", "cancel_job"),
    )
}
_JOB_HEADERS = ("Job-Id", "Location")
_UNEXPECTED = "An unexpected error (`internal-error`): quote its `request_id`."


def _job_lookup_failures() -> dict[str, Any]:
    """What any job route can answer besides its own outcomes."""
    return {
        "404": problem("No such job (or it has expired, or is another key's)."),
        "500": problem(_UNEXPECTED),
        "503": problem("A backend did not answer (`backend-unavailable`); retry."),
    }


def submit(doc: Doc, info: FunctionInfo) -> dict[str, Any]:
    """`POST /v1/functions/{name}`: run the function and wait for its result."""
    is_map = info.kind is FunctionKind.MAP
    if is_map:
        items = {"type": "array", "items": {}}
        body = {
            "description": "The batch: a JSON array of items, or NDJSON (one JSON item per "
            "line). The answer uses the same format.",
            "content": {
                "application/json": {"schema": items},
                **{media: {"schema": items} for media in NDJSON_REQUEST_TYPES},
            },
        }
        results = {"type": "array", "items": info.output_schema}
        result_content = {"application/json": {"schema": results}, NDJSON: {"schema": results}}
        summary = f"Run {info.name} on every item of a batch and wait for the results"
    else:
        body = {
            "description": f"The argument of {info.name}: a JSON value of this type "
            "(`application/json`, or any `+json` type; no `Content-Type` means JSON).",
            "content": json_content(info.input_schema),
        }
        result_content = json_content(info.output_schema)
        summary = f"Run {info.name} and wait for its result"
    ok = "The results, in input order" if is_map else "The function's result"
    operation = {
        "operationId": f"submit_{info.name}",
        "summary": summary,
        "tags": ["functions"],
        "parameters": [
            param("Prefer"),
            param("Idempotency-Key"),
            param("Accept-Submit"),
            param("X-Request-Id"),
        ],
        "requestBody": {"required": True, **body},
        "responses": {
            "200": response(
                f"{ok}; with `Accept: text/event-stream`, the job's events.",
                {**result_content, **job_events_content()},
                _JOB_HEADERS,
                ("Preference-Applied",),
                _JOB_LINKS,
            ),
            "202": status_response(
                "The wait ran out, or `respond-async` was asked: the job's status. Keep "
                "waiting with `GET /v1/jobs/{id}?wait=N`.",
                (*_JOB_HEADERS, "Retry-After"),
                _JOB_LINKS,
            ),
            "400": problem(
                "The body is empty, not JSON, "
                + ("not a batch" if is_map else "not of the function's type")
                + ", or a header is malformed."
            ),
            "404": problem("The function is not registered (any more)."),
            "408": problem("The body did not arrive in time (`BATCHGATE_BODY_TIMEOUT`)."),
            "409": problem("The job was cancelled while the request waited.", _JOB_HEADERS),
            "413": problem("The body is over the size limit (or the batch over the item limit)."),
            "415": problem("A media type the function does not take."),
            "422": problem("The Idempotency-Key was first used with a different body."),
            "500": problem(
                "The job failed (`job-failed`, with `error`), or an unexpected error.",
                optional=_JOB_HEADERS,
            ),
            "503": problem(
                "Overloaded, or a backend did not answer: retry, with the same Idempotency-Key.",
                optional=("Retry-After",),
            ),
        },
    }
    return doc.protected(operation)


def get_job(doc: Doc) -> dict[str, Any]:
    return doc.protected(
        {
            "operationId": "get_job",
            "summary": "The job's status",
            "tags": ["jobs"],
            "parameters": [param("JobId"), param("Wait"), param("X-Request-Id")],
            "responses": {
                "200": status_response("The job's status (once finished, with `wait`)."),
                "400": problem("A `wait` that is not a number of seconds."),
                **_job_lookup_failures(),
            },
        }
    )


def cancel_job(doc: Doc) -> dict[str, Any]:
    return doc.protected(
        {
            "operationId": "cancel_job",
            "summary": "Cancel the job",
            "description": "Pending work is dropped and waiting requests get `409`. The job "
            "stays readable with the status `cancelled`.",
            "tags": ["jobs"],
            "parameters": [param("JobId"), param("X-Request-Id")],
            "responses": {
                "200": status_response("The job's status: `cancelled`."),
                **_job_lookup_failures(),
                "409": problem("The job had already finished (`job-finished`)."),
            },
        }
    )


def get_job_result(doc: Doc) -> dict[str, Any]:
    anything = {"description": "The function's result (a map job's: one per item)"}
    return doc.protected(
        {
            "operationId": "get_job_result",
            "summary": "The job's result",
            "tags": ["jobs"],
            "parameters": [
                param("JobId"),
                param("Wait"),
                param("Redirect"),
                param("Accept-Result"),
                param("X-Request-Id"),
            ],
            "responses": {
                "200": response(
                    "The result.",
                    {"application/json": {"schema": anything}, NDJSON: {"schema": anything}},
                    _JOB_HEADERS,
                ),
                "202": status_response(
                    "Not finished yet: the job's status.", (*_JOB_HEADERS, "Retry-After")
                ),
                "303": response(
                    "The result is in the store: fetch it from `Location`.",
                    headers=("Job-Id",),
                    inline={"Location": PRESIGNED_LOCATION},
                ),
                "400": problem("A `wait` or `redirect` that is malformed."),
                **_job_lookup_failures(),
                "409": problem("The job was cancelled (`job-cancelled`).", _JOB_HEADERS),
                "500": problem(
                    "The job failed (`job-failed`, with `error`), or an unexpected error.",
                    optional=_JOB_HEADERS,
                ),
            },
        }
    )


def get_job_events(doc: Doc) -> dict[str, Any]:
    return doc.protected(
        {
            "operationId": "get_job_events",
            "summary": "The job's progress as Server-Sent Events",
            "tags": ["jobs"],
            "parameters": [param("JobId"), param("Last-Event-ID"), param("X-Request-Id")],
            "responses": {
                "200": response("The job's events, until it finishes.", job_events_content()),
                "400": problem("A `Last-Event-ID` that is no event id of this stream."),
                **_job_lookup_failures(),
            },
        }
    )


def list_functions(doc: Doc) -> dict[str, Any]:
    return doc.protected(
        {
            "operationId": "list_functions",
            "summary": "The registered functions",
            "tags": ["functions"],
            "parameters": [param("X-Request-Id")],
            "responses": {
                "200": response("The functions.", json_content(schema("FunctionList"))),
                "500": problem(_UNEXPECTED),
            },
        }
    )


def _public(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    """An operational endpoint: no key needed, no parameters but `X-Request-Id`."""
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["operations"],
        "parameters": [param("X-Request-Id")],
        "responses": responses,
    }


def healthz(doc: Doc) -> dict[str, Any]:
    alive = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
    return doc.public(
        _public("healthz", "Liveness", {"200": response("Alive.", json_content(alive))})
    )


def readyz(doc: Doc) -> dict[str, Any]:
    counts = ("ready", "in_flight", "delayed", "dead")
    ready = {
        "type": "object",
        "required": ["status", "queue"],
        "properties": {
            "status": {"const": "ready"},
            "queue": {
                "type": "object",
                "required": list(counts),
                "properties": {name: {"type": "integer", "minimum": 0} for name in counts},
            },
        },
    }
    unready = {
        "type": "object",
        "required": ["status", "detail"],
        "properties": {"status": {"const": "unavailable"}, "detail": {"type": "string"}},
    }
    responses = {
        "200": response("Ready, with the queue's depth.", json_content(ready)),
        "503": response("Not ready: a backend does not answer.", json_content(unready)),
    }
    return doc.public(_public("readyz", "Readiness: the queue and state answer", responses))


def metrics(doc: Doc) -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    return doc.public(
        _public(
            "metrics",
            "Prometheus metrics",
            {"200": response("Metrics in the Prometheus text format.", text)},
        )
    )


def openapi(doc: Doc) -> dict[str, Any]:
    return doc.public(
        _public(
            "openapi",
            "This document",
            {"200": response("OpenAPI 3.1.", json_content({"type": "object"}))},
        )
    )


# Every fixed route: (path, method, builder). Function routes come from the registry.
ROUTES: list[tuple[str, str, RouteBuilder]] = [
    ("/v1/functions", "get", list_functions),
    ("/v1/jobs/{job_id}", "get", get_job),
    ("/v1/jobs/{job_id}", "delete", cancel_job),
    ("/v1/jobs/{job_id}/result", "get", get_job_result),
    ("/v1/jobs/{job_id}/events", "get", get_job_events),
    ("/healthz", "get", healthz),
    ("/readyz", "get", readyz),
    ("/metrics", "get", metrics),
    ("/openapi.json", "get", openapi),
]


def openapi_document(registry: Registry, *, api_keys: bool = False) -> dict[str, Any]:
    """The OpenAPI document of a gateway serving `registry`, with or without API keys."""
    doc = Doc(api_keys)
    paths: dict[str, dict[str, Any]] = {}
    for info in registry:
        paths[f"/v1/functions/{info.name}"] = {"post": submit(doc, info)}
    for path, method, build in ROUTES:
        paths.setdefault(path, {})[method] = build(doc)
    return {
        "openapi": "3.1.0",
        "info": {"title": "batchgate", "version": __version__, "description": DESCRIPTION},
        "paths": paths,
        # A copy: the shared parts stay untouched whatever the caller does with it.
        "components": copy.deepcopy(components(api_keys)),
    }
