"""Schemathesis hooks for the conformance run: NDJSON bodies, and one key per body.

Loaded by the `schemathesis` process through `SCHEMATHESIS_HOOKS`. The OpenAPI document
describes an NDJSON body as the array of its items; these turn such an array into lines
for a request, and a response's lines back into the array its schema describes.

Schemathesis reuses a few generated `Idempotency-Key` values across many requests with
different bodies. The server rightly answers such a reuse with `422` at once, and that
answer would hide what every other check should see of the request (an invalid body
refused, a valid one run). So a valid key is made the body's own: the same key and body
still attach to one job, a different body gets a different key.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import schemathesis

from batchgate.gateway.prefer import IDEMPOTENCY_KEY_MAX_CHARS, IDEMPOTENCY_KEY_PATTERN

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


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """A valid Idempotency-Key gets a suffix derived from the body (invalid ones stay)."""
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if not isinstance(key, str) or not _is_valid_key(key):
        return case
    sent = json.dumps([case.media_type, case.body], sort_keys=True, default=repr)
    suffix = "." + hashlib.sha256(sent.encode()).hexdigest()[:12]
    headers["Idempotency-Key"] = key[: IDEMPOTENCY_KEY_MAX_CHARS - len(suffix)] + suffix
    return case


def _is_valid_key(key: str) -> bool:
    return (
        len(key) <= IDEMPOTENCY_KEY_MAX_CHARS and re.match(IDEMPOTENCY_KEY_PATTERN, key) is not None
    )
