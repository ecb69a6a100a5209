"""Shared parts of the HTTP clients: problem -> exception, SSE parsing, request helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx

from batchgate import errors
from batchgate.batches import NDJSON_MEDIA_TYPES, BatchFormat
from batchgate.errors import PROBLEM_BASE, BatchgateError, Overloaded
from batchgate.models import Progress

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled"})
_PIECE_BYTES = 64 * 1024  # upload piece size
_EVENT_RECONNECTS = 3  # reconnects in a row that bring no event before events() gives up
_MISSING: Any = object()
_STREAM_DROPPED = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)


class Readable(Protocol):
    """A binary file, or anything with its `read`."""

    def read(self, size: int = -1, /) -> bytes: ...


FileSource = str | os.PathLike[str] | Readable


# -- problem documents -> exceptions ------------------------------------------------------


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
        seconds = retry_after.strip() if retry_after else ""
        exc = cls(message, retry_after_s=int(seconds) if seconds.isdigit() else 1)
    else:
        exc = cls(message)
    drop = {"detail", "title", "status"} | ({"type"} if cls.problem == name else set())
    exc.extra = {k: v for k, v in doc.items() if k not in drop}
    return exc


def _error(response: httpx.Response) -> BatchgateError:
    """The exception for a (read) error response, problem document or not."""
    doc: Any = None
    if "json" in response.headers.get("content-type", ""):
        with contextlib.suppress(ValueError):
            doc = response.json()
    if not isinstance(doc, dict):
        text = response.text.strip()[:200]
        doc = {"detail": f"HTTP {response.status_code}" + (f": {text}" if text else "")}
    return error_from_problem(doc, response.status_code, response.headers.get("retry-after"))


# -- Server-Sent Events ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class JobEvent:
    """One Server-Sent Event of a job: `event` name, `data` (decoded JSON, else text), `id`."""

    event: str
    data: Any
    id: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether this is the job's last event (succeeded, failed or cancelled)."""
        return self.event in TERMINAL_EVENTS

    @property
    def progress(self) -> Progress | None:
        """Item counts: the data of a `progress` event, or a status document's `progress`."""
        doc = self.data
        if self.event != "progress" and isinstance(doc, dict):
            doc = doc.get("progress")
        if not isinstance(doc, dict):
            return None
        return Progress(
            done=int(doc.get("done", 0)),
            failed=int(doc.get("failed", 0)),
            total=int(doc.get("total", 0)),
        )


class SSEParser:
    """Turns `text/event-stream` lines into JobEvents, by the WHATWG parsing rules."""

    def __init__(self) -> None:
        self.last_id: str | None = None  # the last `id:` seen; send as Last-Event-ID
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> JobEvent | None:
        """Take one line (without its end); the event a blank line completes, else None."""
        line = line.rstrip("\r\n")
        if not line:
            event, data = self._event or "message", self._data
            self._event, self._data = "", []
            if not data:
                return None
            text = "\n".join(data)
            try:
                value: Any = json.loads(text)
            except ValueError:
                value = text
            return JobEvent(event, value, self.last_id)
        if line.startswith(":"):
            return None  # a comment, e.g. a keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


def parse_sse(lines: Iterable[str]) -> Iterator[JobEvent]:
    """The events in a sequence of lines; an event left unfinished at the end is dropped."""
    parser = SSEParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


# -- shared request and response pieces -----------------------------------------------------


def _headers(
    fmt: BatchFormat, wait_s: float, respond_async: bool, idempotency_key: str | None
) -> dict[str, str]:
    headers = {"Content-Type": fmt.value, **_accept(fmt)}
    headers["Prefer"] = "respond-async" if respond_async else f"wait={wait_s:g}"
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def _as_format(value: BatchFormat | str) -> BatchFormat:
    """A BatchFormat from itself, its media type, or `json` / `ndjson` / `jsonl`."""
    short = {"json": BatchFormat.JSON, "ndjson": BatchFormat.NDJSON, "jsonl": BatchFormat.NDJSON}
    if isinstance(value, str) and value.lower() in short:
        return short[value.lower()]
    return BatchFormat.from_content_type(value)


def _file_format(source: FileSource, fmt: BatchFormat | str | None) -> BatchFormat:
    """The explicit format, else `.ndjson`/`.jsonl` -> NDJSON, else JSON."""
    if fmt is not None:
        return _as_format(fmt)
    name = source if isinstance(source, str | os.PathLike) else getattr(source, "name", "")
    suffix = Path(os.fsdecode(name)).suffix.lower() if isinstance(name, str | os.PathLike) else ""
    return BatchFormat.NDJSON if suffix in (".ndjson", ".jsonl") else BatchFormat.JSON


def _accept(fmt: BatchFormat) -> dict[str, str]:
    return {"Accept": fmt.value} if fmt == BatchFormat.NDJSON else {}


def _dump_line(item: Any) -> bytes:
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _ndjson_pieces(items: Iterable[Any]) -> Iterator[bytes]:
    """Items as NDJSON, in pieces of about 64 KiB: never the whole batch in memory."""
    lines: list[bytes] = []
    size = 0
    for item in items:
        line = _dump_line(item) + b"\n"
        lines.append(line)
        size += len(line)
        if size >= _PIECE_BYTES:
            yield b"".join(lines)
            lines, size = [], 0
    if lines:
        yield b"".join(lines)


def _file_pieces(source: FileSource) -> Iterator[bytes]:
    if not isinstance(source, str | os.PathLike):
        yield from iter(lambda: source.read(_PIECE_BYTES), b"")
        return
    with open(source, "rb") as file:
        yield from iter(lambda: file.read(_PIECE_BYTES), b"")


def _decode_result(response: httpx.Response) -> Any:
    """A read 200 response's body: JSON decoded, NDJSON as a list, anything else as bytes."""
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in NDJSON_MEDIA_TYPES:
        return [json.loads(line) for line in response.content.split(b"\n") if line.strip()]
    if not media or media == "application/json" or media.endswith("+json"):
        return json.loads(response.content)
    return response.content


def _as_list(result: Any) -> list[Any]:
    if not isinstance(result, list):
        raise BatchgateError(f"a map job answered with {type(result).__name__}, not a list")
    return result


def _job_id(response: httpx.Response) -> tuple[str, str]:
    job_id = response.headers.get("job-id")
    if not job_id:
        raise BatchgateError(f"HTTP {response.status_code} without a Job-Id header")
    return job_id, response.headers.get("location") or f"/v1/jobs/{job_id}"


class _Base:
    """What the two clients share: settings and the shape of every request."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float, poll_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.poll_s = poll_s
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _wait_timeout(self, wait_s: float) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=wait_s + self.timeout)

    def _submission(
        self,
        payload: Any = _MISSING,
        source: Any = None,
        format: BatchFormat | str | None = None,
        wait: float | None = None,
        respond_async: bool = False,
        idempotency_key: str | None = None,
    ) -> tuple[dict[str, Any], BatchFormat]:
        """Keyword arguments for the POST of a payload or a batch, and the batch's format."""
        if payload is not _MISSING:
            content, fmt = _dump_line(payload), BatchFormat.JSON
        elif isinstance(source, str | os.PathLike) or hasattr(source, "read"):
            content, fmt = self._file_body(source), _file_format(source, format)
        else:
            content, fmt = self._items_body(source), BatchFormat.NDJSON
        # Without a wait, ask for poll_s anyway: no request outlives a proxy's patience.
        wait_s = 0.0 if respond_async else self.poll_s if wait is None else wait
        headers = _headers(fmt, wait_s, respond_async, idempotency_key)
        return {"content": content, "headers": headers, "timeout": self._wait_timeout(wait_s)}, fmt

    def _file_body(self, source: FileSource) -> Any:
        raise NotImplementedError

    def _items_body(self, items: Any) -> Any:
        raise NotImplementedError

    def _result_request(self, location: str, wait_s: float, fmt: BatchFormat) -> dict[str, Any]:
        return {
            "method": "GET",
            "url": f"{location}/result",
            "params": {"wait": f"{wait_s:g}"},
            "headers": _accept(fmt),
            "timeout": self._wait_timeout(wait_s),
        }

    def _events_request(self, location: str, last_id: str | None) -> dict[str, Any]:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        url = f"{location}/events"
        return {
            "method": "GET",
            "url": url,
            "headers": headers,
            "timeout": self._wait_timeout(self.poll_s),
        }


def _check_one_source(payload: Any, items: Any, file: Any) -> Any:
    if (payload is not _MISSING) + (items is not None) + (file is not None) != 1:
        raise TypeError("submit() takes exactly one of payload, items or file")
    return items if file is None else file


class _Poll:
    """The wait budget of one result fetch: long polls of poll_s until an optional deadline."""

    def __init__(self, location: str, poll_s: float, wait: float | None) -> None:
        self.location = location
        self.poll_s = poll_s
        self.wait = wait
        self.deadline = None if wait is None else time.monotonic() + wait
        self.started = 0.0

    def next_wait(self) -> float:
        self.started = time.monotonic()
        if self.deadline is None:
            return self.poll_s
        return max(0.0, min(self.poll_s, self.deadline - self.started))

    def pause(self, wait_s: float) -> float:
        """Seconds to sleep after a 202: none after a full wait, the rest of min(1 s,
        wait) after an early answer (a draining server); TimeoutError past the deadline."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            raise TimeoutError(f"job {self.location} still running after {self.wait:g} s")
        return max(0.0, min(1.0, wait_s) - (now - self.started))


class _HandleBase:
    def __init__(self, job_id: str, location: str, format: BatchFormat) -> None:
        self.id = job_id
        self.location = location
        self.format = format  # the format a map job's result comes back in

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    def _status_request(self, wait: float | None, timeout: httpx.Timeout) -> dict[str, Any]:
        params = {"wait": f"{wait:g}"} if wait else {}
        return {"url": self.location, "params": params, "timeout": timeout}

    def _cancel_outcome(self, response: httpx.Response) -> dict[str, Any] | None:
        """The status after DELETE; None for an already finished job (ask for its status)."""
        if response.status_code == 200:
            status: dict[str, Any] = response.json()
            return status
        exc = _error(response)
        if response.status_code == 409 and str(exc.extra.get("type", "")).endswith("job-finished"):
            return None
        raise exc


def _status(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise _error(response)
    status: dict[str, Any] = response.json()
    return status


def _functions(response: httpx.Response) -> list[dict[str, Any]]:
    functions: list[dict[str, Any]] = _status(response)["functions"]
    return functions


# -- the blocking client ----------------------------------------------------------------------
