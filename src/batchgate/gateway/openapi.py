"""The OpenAPI description of the v1 HTTP API, built from the function registry."""

from __future__ import annotations

from typing import Any

from batchgate import __version__
from batchgate.app import Registry

_PROBLEM = {
    "description": "Problem details (RFC 9457)",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_STATUS = {
    "description": "Job status",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobStatus"}}},
}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_WAIT = {
    "name": "wait",
    "in": "query",
    "schema": {"type": "number", "minimum": 0},
    "description": "Block up to this many seconds for the job to finish.",
}


def openapi_document(registry: Registry) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for info in registry:
        paths[f"/v1/functions/{info.name}"] = {
            "post": {
                "summary": f"Run {info.name} and wait for its result",
                "parameters": [
                    {
                        "name": "Prefer",
                        "in": "header",
                        "schema": {"type": "string"},
                        "description": "wait=N (seconds) or respond-async",
                    },
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}},
                "responses": {
                    "200": {
                        "description": "The function's result",
                        "content": {"application/json": {"schema": {}}},
                    },
                    "202": _STATUS,
                    "400": _PROBLEM,
                    "404": _PROBLEM,
                    "413": _PROBLEM,
                    "415": _PROBLEM,
                    "422": _PROBLEM,
                    "500": _PROBLEM,
                    "409": _PROBLEM,
                    "503": _PROBLEM,
                },
            }
        }
    paths["/v1/jobs/{job_id}"] = {
        "get": {
            "summary": "Job status",
            "parameters": [_JOB_ID, _WAIT],
            "responses": {"200": _STATUS, "404": _PROBLEM},
        },
        "delete": {
            "summary": "Cancel a job",
            "parameters": [_JOB_ID],
            "responses": {"200": _STATUS, "404": _PROBLEM, "409": _PROBLEM},
        },
    }
    paths["/v1/jobs/{job_id}/result"] = {
        "get": {
            "summary": "Job result",
            "parameters": [_JOB_ID, _WAIT],
            "responses": {
                "200": {"description": "The result"},
                "202": _STATUS,
                "404": _PROBLEM,
                "409": _PROBLEM,
                "500": _PROBLEM,
            },
        }
    }
    paths["/v1/functions"] = {
        "get": {
            "summary": "Registered functions",
            "responses": {"200": {"description": "Functions"}},
        }
    }
    for path, summary in (
        ("/healthz", "Liveness"),
        ("/readyz", "Readiness"),
        ("/metrics", "Prometheus metrics"),
    ):
        paths[path] = {"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "batchgate", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "job_id": {"type": "string"},
                        "error": {
                            "type": "object",
                            "properties": {
                                "type": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
                "JobStatus": {
                    "type": "object",
                    "required": ["id", "function", "status"],
                    "properties": {
                        "id": {"type": "string"},
                        "function": {"type": "string"},
                        "status": {
                            "enum": ["queued", "running", "succeeded", "failed", "cancelled"]
                        },
                        "attempts": {"type": "integer"},
                        "progress": {
                            "type": "object",
                            "properties": {
                                "done": {"type": "integer"},
                                "failed": {"type": "integer"},
                                "total": {"type": "integer"},
                            },
                        },
                        "error": {"type": "object"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "started_at": {"type": ["string", "null"], "format": "date-time"},
                        "finished_at": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
            }
        },
    }
