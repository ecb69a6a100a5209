"""Jobs, tasks, progress, ids and the JSON codec shared by every part of batchgate."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from batchgate import strictjson
from batchgate.errors import BadRequest

JSON = Any


class JobStatus(enum.StrEnum):
    """Lifecycle of a job: queued -> running -> succeeded | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class FunctionKind(enum.StrEnum):
    FUNCTION = "function"
    MAP = "map"


# What new_job_id makes: 16 random bytes in URL-safe base64, unpadded.
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{22}$"


def new_job_id() -> str:
    """A 128-bit random, URL-safe job id (22 characters)."""
    return secrets.token_urlsafe(16)


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """An epoch timestamp as ISO 8601 UTC, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    done: int = 0
    failed: int = 0
    total: int = 0

    def to_json(self) -> dict[str, int]:
        return {"done": self.done, "failed": self.failed, "total": self.total}


@dataclasses.dataclass(frozen=True, slots=True)
class JobError:
    type: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One submission and everything known about it.

    `result` holds a small JSON result inline; a large one lives in the store under
    `result_ref`. `attempts` is the number of the newest attempt, which fences completions.
    """

    id: str
    function: str
    kind: FunctionKind = FunctionKind.FUNCTION
    status: JobStatus = JobStatus.QUEUED
    attempts: int = 0
    progress: Progress = Progress()
    error: JobError | None = None
    created_at: float = dataclasses.field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    owner: str = ""
    idempotency_key: str | None = None
    request_hash: str | None = None
    result: bytes | None = None
    result_ref: str | None = None

    def replace(self, **changes: Any) -> Job:
        return dataclasses.replace(self, **changes)

    def status_json(self) -> dict[str, Any]:
        """The public status document (`GET /v1/jobs/{id}`)."""
        body: dict[str, Any] = {
            "id": self.id,
            "function": self.function,
            "status": self.status.value,
            "attempts": self.attempts,
            "progress": self.progress.to_json(),
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }
        if self.error is not None:
            body["error"] = self.error.to_json()
        return body


@dataclasses.dataclass(frozen=True, slots=True)
class Task:
    """One queue message: a whole plain job, or chunk `chunk` of the `chunks` of a map job.

    The payload travels inline when small; otherwise `payload_ref` names a store key.
    `request_id` is the id of the HTTP request that submitted the job, for log lines.
    """

    job_id: str
    function: str
    payload: bytes | None = None
    payload_ref: str | None = None
    chunk: int | None = None
    chunks: int | None = None
    request_id: str | None = None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"job": self.job_id, "fn": self.function}
        if self.request_id is not None:
            doc["rid"] = self.request_id
        if self.chunk is not None:
            doc["chunk"] = self.chunk
            doc["of"] = self.chunks
        if self.payload_ref is not None:
            doc["ref"] = self.payload_ref
        # The payload is already JSON text; splice it in rather than parse and re-dump it.
        head = json.dumps(doc, separators=(",", ":"))
        if self.payload is None:
            return head.encode()
        return head[:-1].encode() + b',"payload":' + self.payload + b"}"

    @classmethod
    def decode(cls, data: bytes) -> Task:
        """Parse a task message under the strict JSON rules (`batchgate.strictjson`).

        Raises ValueError (a UnicodeDecodeError, a JSON syntax error or a rule broken),
        KeyError or TypeError for a message that is not a task.
        """
        doc = strictjson.loads(data, extra_depth=1)  # the payload sits one level down
        if not isinstance(doc, dict):
            raise TypeError(f"a task message is a JSON object, not {type(doc).__name__}")
        payload = doc.get("payload", _MISSING)
        return cls(
            job_id=doc["job"],
            function=doc["fn"],
            payload=None if payload is _MISSING else dumps(payload),
            payload_ref=doc.get("ref"),
            chunk=doc.get("chunk"),
            chunks=doc.get("of"),
            request_id=doc.get("rid"),
        )


_MISSING = object()
# The job id of a task message, found without parsing it (job ids are URL-safe base64).
_JOB_ID_FIELD = re.compile(rb'^\{"job":"([A-Za-z0-9_-]{1,64})"')


def peek_job_id(data: bytes) -> str | None:
    """The job id at the head of a task message, even one that does not decode."""
    match = _JOB_ID_FIELD.match(data)
    return match.group(1).decode() if match else None


def dumps(value: JSON) -> bytes:
    """Compact JSON bytes; non-JSON values (NaN and infinities too) raise an error."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def loads(data: bytes | str) -> JSON:
    """Parse a request body under the strict JSON rules, raising BadRequest when it breaks
    them (malformed, not UTF-8, NaN, a number out of range, a lone surrogate, too deep)."""
    try:
        return strictjson.loads(data)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except ValueError as exc:
        raise BadRequest(f"body is not accepted: {exc}") from None
