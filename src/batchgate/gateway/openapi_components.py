"""The shared parts of the OpenAPI document: schemas, headers, parameters and responses.

Route entries (`openapi.py`) refer to these by `$ref` and build their responses with
`response()` and `problem()`, so every response carries `X-Request-Id` and every error is
an `application/problem+json` document with the one `Problem` schema.
"""

from __future__ import annotations

from typing import Any

from batchgate.context import REQUEST_ID_PATTERN
from batchgate.errors import PROBLEM_BASE
from batchgate.gateway.prefer import (
    IDEMPOTENCY_KEY_MAX_CHARS,
    IDEMPOTENCY_KEY_PATTERN,
    PREFER_PATTERN,
)
from batchgate.models import JOB_ID_PATTERN, JobStatus

PROBLEM_JSON = "application/problem+json"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
# Every spelling of NDJSON a map function takes; answers use NDJSON's own.
NDJSON_REQUEST_TYPES = (
    NDJSON,
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
)


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def header(name: str) -> dict[str, str]:
    return ref("headers", name)


def param(name: str) -> dict[str, str]:
    return ref("parameters", name)


def schema(name: str) -> dict[str, str]:
    return ref("schemas", name)


def response(
    description: str,
    content: dict[str, Any] | None = None,
    headers: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    links: dict[str, Any] | None = None,
    inline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A response object with the named headers of `HEADERS` (`headers` always sent,
    `optional` sometimes) and the `inline` header objects. Every response carries
    `X-Request-Id`."""
    described: dict[str, Any] = {name: header(name) for name in ("X-Request-Id", *headers)}
    described.update({name: {**HEADERS[name], "required": False} for name in optional})
    described.update(inline or {})
    entry: dict[str, Any] = {"description": description, "headers": described}
    if content is not None:
        entry["content"] = content
    if links:
        entry["links"] = links
    return entry


def json_content(
    body_schema: dict[str, Any], media_type: str = "application/json"
) -> dict[str, Any]:
    return {media_type: {"schema": body_schema}}


def problem(
    description: str, headers: tuple[str, ...] = (), optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """An error response: an RFC 9457 problem document."""
    return response(description, json_content(schema("Problem"), PROBLEM_JSON), headers, optional)


def status_response(
    description: str, headers: tuple[str, ...] = (), links: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A response with the job's status document."""
    return response(description, json_content(schema("JobStatus")), headers, links=links)


PRESIGNED_LOCATION = {
    "description": "A presigned URL of the result in the store, valid for an hour.",
    "required": True,
    "schema": {"type": "string", "format": "uri"},
}


def _string_header(description: str, body_schema: dict[str, Any], required: bool) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": body_schema}


HEADERS: dict[str, Any] = {
    "X-Request-Id": _string_header(
        "The request's id: the client's `X-Request-Id` when it was acceptable, else a new one.",
        {"type": "string", "pattern": REQUEST_ID_PATTERN},
        required=True,
    ),
    "Job-Id": _string_header(
        "The job's id.", {"type": "string", "pattern": JOB_ID_PATTERN}, required=True
    ),
    "Location": _string_header(
        "Where the job's status is: `/v1/jobs/{id}`.",
        {"type": "string", "pattern": "^/v1/jobs/[A-Za-z0-9_-]{22}$"},
        required=True,
    ),
    "Retry-After": _string_header(
        "Seconds to wait before asking again.",
        {"type": "integer", "minimum": 0},
        required=True,
    ),
    "Preference-Applied": _string_header(
        "The `Prefer` preference the server honoured: `respond-async`, or `wait=N` with N "
        "capped at the server's maximum wait.",
        {"type": "string", "pattern": "^(respond-async|wait=[0-9.e+]+)$"},
        required=True,
    ),
    "WWW-Authenticate": _string_header(
        "The authentication scheme to use: `Bearer`.",
        {"type": "string", "pattern": "^Bearer( |$)"},
        required=True,
    ),
    "Allow": _string_header("The methods the path supports.", {"type": "string"}, required=True),
}


def _header_param(
    name: str, description: str, body_schema: dict[str, Any], examples: list[str] | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": body_schema,
    }
    if examples:
        entry["examples"] = {value: {"value": value} for value in examples}
    return entry


PARAMETERS: dict[str, Any] = {
    "JobId": {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "The job's id, from the `Job-Id` header of its submission.",
        "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
    },
    "Wait": {
        "name": "wait",
        "in": "query",
        "required": False,
        "description": "Block up to this many seconds (capped at the server's maximum wait) "
        "for the job to finish.",
        "schema": {"type": "number", "minimum": 0},
    },
    "Redirect": {
        "name": "redirect",
        "in": "query",
        "required": False,
        "description": "Answer `303` to a presigned URL when the result is in a store that can "
        "sign URLs (S3), so the bytes skip the gateway.",
        "schema": {"type": "boolean"},
    },
    "Prefer": _header_param(
        "Prefer",
        "RFC 7240 preferences: `wait=N` blocks at most N seconds (capped at the server's "
        "maximum wait; the default is that maximum), `respond-async` answers `202` at once. "
        "Other preferences are ignored; a `wait` that is not a number of seconds is a `400`.",
        {"type": "string", "pattern": PREFER_PATTERN},
        ["respond-async", "wait=0", "wait=5"],
    ),
    "Idempotency-Key": _header_param(
        "Idempotency-Key",
        "A repeat with the same key and body attaches to the first job (same `Job-Id`); "
        "with a different body it is a `422`.",
        {
            "type": "string",
            "minLength": 1,
            "maxLength": IDEMPOTENCY_KEY_MAX_CHARS,
            "pattern": IDEMPOTENCY_KEY_PATTERN,
        },
    ),
    "Accept-Submit": _header_param(
        "Accept",
        "`text/event-stream` streams progress events and then one terminal event instead of "
        "waiting; anything else waits for the result.",
        {"type": "string"},
        ["text/event-stream", "application/json"],
    ),
    "Accept-Result": _header_param(
        "Accept",
        "For a map job: `application/x-ndjson` for one result per line, else a JSON array.",
        {"type": "string"},
        ["application/json", NDJSON],
    ),
    "Last-Event-ID": _header_param(
        "Last-Event-ID",
        "Resume a stream: the id of the last event seen. Progress events up to that count "
        "of finished items are not repeated; `end` (or nothing) starts over.",
        {"type": "string", "pattern": "^(end|[0-9]{1,18})?$"},
        ["0", "end"],
    ),
    "X-Request-Id": _header_param(
        "X-Request-Id",
        "Your id for this request, shown in logs and problem documents: up to 128 of "
        "`A-Z a-z 0-9 . _ : / + = @ -`. Any other value is replaced by a new id.",
        {"type": "string"},
    ),
}

_PROGRESS = {
    "type": "object",
    "description": "Items finished so far (map jobs); all 0 for a plain job.",
    "required": ["done", "failed", "total"],
    "properties": {
        "done": {"type": "integer", "minimum": 0},
        "failed": {"type": "integer", "minimum": 0},
        "total": {"type": "integer", "minimum": 0},
    },
}
_TIME = {"type": "string", "format": "date-time"}
_JOB_ERROR = {
    "type": "object",
    "description": "The error of the last failed attempt.",
    "required": ["type", "message"],
    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "An RFC 9457 problem document. `type` names the problem: "
        f"`{PROBLEM_BASE}<name>`.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "request_id": {"type": "string", "pattern": REQUEST_ID_PATTERN},
            "job_id": {"type": "string", "description": "The job concerned, as named."},
            "error": schema("JobError"),
        },
    },
    "JobError": _JOB_ERROR,
    "Progress": _PROGRESS,
    "JobStatus": {
        "type": "object",
        "required": [
            "id",
            "function",
            "status",
            "attempts",
            "progress",
            "created_at",
            "started_at",
            "finished_at",
        ],
        "properties": {
            "id": {"type": "string", "pattern": JOB_ID_PATTERN},
            "function": {"type": "string"},
            "status": {"enum": [s.value for s in JobStatus]},
            "attempts": {"type": "integer", "minimum": 0},
            "progress": schema("Progress"),
            "error": schema("JobError"),
            "created_at": _TIME,
            "started_at": {**_TIME, "type": ["string", "null"]},
            "finished_at": {**_TIME, "type": ["string", "null"]},
        },
    },
    "FunctionInfo": {
        "type": "object",
        "required": ["name", "kind", "timeout_s", "retries", "chunk_size", "batched", "errors"],
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": ["function", "map"]},
            "timeout_s": {"type": "number"},
            "retries": {"type": "integer", "minimum": 0},
            "chunk_size": {"type": "integer", "minimum": 1},
            "batched": {"type": "boolean"},
            "errors": {"enum": ["fail", "collect"]},
            "input_schema": {
                "type": "object",
                "description": "JSON Schema the body is checked against",
            },
            "output_schema": {"type": "object", "description": "JSON Schema of a result"},
        },
    },
    "FunctionList": {
        "type": "object",
        "required": ["functions"],
        "properties": {"functions": {"type": "array", "items": schema("FunctionInfo")}},
    },
}


def sse_event(name: str, data: dict[str, Any], event_id: dict[str, Any]) -> dict[str, Any]:
    """One Server-Sent Event: its `event` name, `id`, and `data` (a JSON document)."""
    return {
        "type": "object",
        "required": ["event", "data", "id"],
        "properties": {
            "event": {"const": name},
            "id": event_id,
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
        },
    }


def job_events_content() -> dict[str, Any]:
    """A job's event stream; the schema describes one event (one of four kinds)."""
    succeeded = {
        "type": "object",
        "required": ["id", "status", "progress", "result"],
        "properties": {
            "id": {"type": "string", "pattern": JOB_ID_PATTERN},
            "status": {"const": "succeeded"},
            "progress": schema("Progress"),
            "result": {"type": "string", "description": "Where the result is."},
        },
    }
    end = {"const": "end"}
    return {
        SSE: {
            "schema": {
                "description": "One event: `progress` (id: the count of finished items) any "
                "number of times, then exactly one terminal event `succeeded`, `failed` or "
                "`cancelled` (id: `end`). Comment lines keep a quiet stream open.",
                "oneOf": [
                    sse_event(
                        "progress", schema("Progress"), {"type": "string", "pattern": "^[0-9]+$"}
                    ),
                    sse_event("succeeded", succeeded, end),
                    sse_event("failed", schema("Problem"), end),
                    sse_event("cancelled", schema("Problem"), end),
                ],
            }
        }
    }


SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key as a bearer token.",
    },
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def components(api_keys: bool) -> dict[str, Any]:
    parts: dict[str, Any] = {
        "schemas": SCHEMAS,
        "headers": HEADERS,
        "parameters": PARAMETERS,
        "responses": {
            "MethodNotAllowed": problem(
                "The path does not support the method; `Allow` lists those it does.",
                ("Allow",),
            ),
        },
    }
    if api_keys:
        parts["securitySchemes"] = SECURITY_SCHEMES
    return parts
