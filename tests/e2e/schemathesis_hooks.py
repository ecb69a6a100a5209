"""Schemathesis hooks for the conformance run: NDJSON bodies both ways.

Loaded by the `schemathesis` process through `SCHEMATHESIS_HOOKS`. The OpenAPI document
describes an NDJSON body as the array of its items; these turn such an array into lines
for a request, and a response's lines back into the array its schema describes.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis

NDJSON_TYPES = (
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
)


@schemathesis.serializer(*NDJSON_TYPES)
def to_ndjson(ctx: Any, value: Any) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in value)


@schemathesis.deserializer("application/x-ndjson")
def from_ndjson(ctx: Any, response: Any) -> list[Any]:
    return [json.loads(line) for line in response.content.splitlines() if line.strip()]


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """Drop generated non-array bodies sent as NDJSON: they have no NDJSON form."""
    return case.media_type not in NDJSON_TYPES or isinstance(case.body, list)
