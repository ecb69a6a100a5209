"""Python clients for a batchgate gateway over httpx: `Client` (blocking) and `AsyncClient`.

Both speak the v1 HTTP API: `run` a function and get its result, `map` a function over
items streamed as NDJSON, or `submit` a job and follow it through a `JobHandle`
(status, result, cancel, Server-Sent Events). Problem responses raise the matching
`batchgate.errors` exception (see `error_from_problem`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread
import httpx

from batchgate import errors
from batchgate.batches import NDJSON_MEDIA_TYPES, BatchFormat
from batchgate.errors import PROBLEM_BASE, BatchgateError, Overloaded
from batchgate.models import Progress

__all__ = [
    "AsyncClient",
    "AsyncJobHandle",
    "Client",
    "JobEvent",
    "JobHandle",
    "SSEParser",
    "error_from_problem",
    "parse_sse",
]

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


class Client(_Base):
    """A blocking client: `with Client(url, api_key=KEY) as bg: bg.run("fn", payload)`.

    `timeout` bounds connecting, sending, and an answer beyond a requested wait;
    `poll_s` is the longest one request blocks on a job (longer waits are a series of
    such requests). `transport` is for tests (httpx.MockTransport, WSGI...).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        poll_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, poll_s)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._auth, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def functions(self) -> list[dict[str, Any]]:
        """The gateway's functions: name, kind (function/map), timeout_s, retries…"""
        return _functions(self._http.get("/v1/functions"))

    def run(
        self,
        name: str,
        payload: Any,
        wait: float | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Any:
        """Run a function on one JSON payload and return its result, however long it takes.

        `wait` goes out as `Prefer: wait=N` (default `poll_s`): how long the server may
        hold the POST; after a 202 the client keeps waiting on the result. A failed job
        raises JobFailed (`.extra["job_id"]`, `.extra["error"]`), a cancelled one JobCancelled.
        """
        request, fmt = self._submission(payload, wait=wait, idempotency_key=idempotency_key)
        return self._finish(self._http.post(f"/v1/functions/{name}", **request), fmt)

    def map(
        self,
        name: str,
        items: Iterable[Any] | str | os.PathLike[str],
        wait: float | None = None,
        *,
        format: BatchFormat | str | None = None,
        idempotency_key: str | None = None,
    ) -> list[Any]:
        """Run a map function over items and return the results in input order.

        Items stream out as NDJSON, never all in memory. A path (str or PathLike) sends
        the file's bytes: NDJSON for `.ndjson`/`.jsonl` or `format="ndjson"`, else a JSON
        array. `wait` is as for `run`.
        """
        request, fmt = self._submission(
            source=items, format=format, wait=wait, idempotency_key=idempotency_key
        )
        return _as_list(self._finish(self._http.post(f"/v1/functions/{name}", **request), fmt))

    def submit(
        self,
        name: str,
        payload: Any = _MISSING,
        *,
        items: Iterable[Any] | None = None,
        file: FileSource | None = None,
        format: BatchFormat | str | None = None,
        idempotency_key: str | None = None,
    ) -> JobHandle:
        """Start a job without waiting (`Prefer: respond-async`) and return its handle.

        Give exactly one of `payload` (a plain function's JSON argument), `items` (an
        iterable, streamed as NDJSON) or `file` (a path or binary file object; see `map`).
        """
        source = _check_one_source(payload, items, file)
        request, fmt = self._submission(payload, source, format, None, True, idempotency_key)
        response = self._http.post(f"/v1/functions/{name}", **request)
        if response.status_code not in (200, 202):
            raise _error(response)
        return JobHandle(self, *_job_id(response), format=fmt)

    def job(self, job_id: str, format: BatchFormat | str = BatchFormat.JSON) -> JobHandle:
        """A handle on an existing job."""
        return JobHandle(self, job_id, f"/v1/jobs/{job_id}", _as_format(format))

    def _file_body(self, source: FileSource) -> Iterator[bytes]:
        return _file_pieces(source)

    def _items_body(self, items: Iterable[Any]) -> Iterator[bytes]:
        return _ndjson_pieces(items)

    def _finish(self, response: httpx.Response, fmt: BatchFormat) -> Any:
        if response.status_code == 200:
            return _decode_result(response)
        if response.status_code != 202:
            raise _error(response)
        with self._result(_job_id(response)[1], None, fmt) as final:
            final.read()
            return _decode_result(final)

    @contextlib.contextmanager
    def _result(
        self, location: str, wait: float | None, fmt: BatchFormat
    ) -> Iterator[httpx.Response]:
        """The job's 200 result response, open for streaming, once the job is done."""
        poll = _Poll(location, self.poll_s, wait)
        while True:
            wait_s = poll.next_wait()
            with self._http.stream(**self._result_request(location, wait_s, fmt)) as response:
                if response.status_code == 200:
                    yield response
                    return
                response.read()
                if response.status_code != 202:
                    raise _error(response)
            time.sleep(poll.pause(wait_s))


class JobHandle(_HandleBase):
    """A submitted job, followed through a blocking Client."""

    def __init__(
        self, client: Client, job_id: str, location: str, format: BatchFormat = BatchFormat.JSON
    ) -> None:
        super().__init__(job_id, location, format)
        self.client = client

    def status(self, wait: float | None = None) -> dict[str, Any]:
        """The status document; `wait` blocks up to N seconds for the job to finish first."""
        timeout = self.client._wait_timeout(wait or 0.0)
        return _status(self.client._http.get(**self._status_request(wait, timeout)))

    def result(self, wait: float | None = None) -> Any:
        """The result once the job is done (a list for map jobs); TimeoutError after `wait` s."""
        with self.client._result(self.location, wait, self.format) as response:
            response.read()
            return _decode_result(response)

    def stream_result(
        self, format: BatchFormat | str | None = None, wait: float | None = None
    ) -> Iterator[bytes]:
        """The raw result body in pieces once the job is done (`format`: the one to ask for)."""
        fmt = self.format if format is None else _as_format(format)
        with self.client._result(self.location, wait, fmt) as response:
            yield from response.iter_bytes()

    def cancel(self) -> dict[str, Any]:
        """Cancel the job and return its status (a job already finished stays finished)."""
        status = self._cancel_outcome(self.client._http.delete(self.location))
        return self.status() if status is None else status

    def events(self) -> Iterator[JobEvent]:
        """The job's Server-Sent Events up to its terminal one; reconnects with Last-Event-ID."""
        parser = SSEParser()
        idle = 0
        while idle <= _EVENT_RECONNECTS:
            idle += 1
            request = self.client._events_request(self.location, parser.last_id)
            try:
                with self.client._http.stream(**request) as response:
                    if response.status_code != 200:
                        response.read()
                        raise _error(response)
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            idle = 0
                            yield event
                            if event.terminal:
                                return
            except _STREAM_DROPPED:
                pass  # a quiet or dropped stream: reconnect
        raise BatchgateError(f"the event stream of job {self.id} ended without an outcome")


# -- the async client -------------------------------------------------------------------------


async def _aiter_items(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[bytes]:
    if not isinstance(items, AsyncIterable):
        for piece in _ndjson_pieces(items):
            yield piece
        return
    lines: list[bytes] = []
    size = 0
    async for item in items:
        lines.append(_dump_line(item) + b"\n")
        size += len(lines[-1])
        if size >= _PIECE_BYTES:
            yield b"".join(lines)
            lines, size = [], 0
    if lines:
        yield b"".join(lines)


async def _aiter_file(source: FileSource) -> AsyncIterator[bytes]:
    if isinstance(source, str | os.PathLike):
        async with await anyio.open_file(source, "rb") as file:
            while piece := await file.read(_PIECE_BYTES):
                yield piece
    else:
        while piece := await anyio.to_thread.run_sync(source.read, _PIECE_BYTES):
            yield piece


class AsyncClient(_Base):
    """The async twin of Client: the same constructor and methods, awaited."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        poll_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, poll_s)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._auth, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def functions(self) -> list[dict[str, Any]]:
        """The gateway's functions: name, kind (function/map), timeout_s, retries…"""
        return _functions(await self._http.get("/v1/functions"))

    async def run(
        self,
        name: str,
        payload: Any,
        wait: float | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Any:
        """Run a function on one JSON payload and return its result (see Client.run)."""
        request, fmt = self._submission(payload, wait=wait, idempotency_key=idempotency_key)
        return await self._finish(await self._http.post(f"/v1/functions/{name}", **request), fmt)

    async def map(
        self,
        name: str,
        items: Iterable[Any] | AsyncIterable[Any] | str | os.PathLike[str],
        wait: float | None = None,
        *,
        format: BatchFormat | str | None = None,
        idempotency_key: str | None = None,
    ) -> list[Any]:
        """Run a map function over items; the results in input order (see Client.map)."""
        request, fmt = self._submission(
            source=items, format=format, wait=wait, idempotency_key=idempotency_key
        )
        response = await self._http.post(f"/v1/functions/{name}", **request)
        return _as_list(await self._finish(response, fmt))

    async def submit(
        self,
        name: str,
        payload: Any = _MISSING,
        *,
        items: Iterable[Any] | AsyncIterable[Any] | None = None,
        file: FileSource | None = None,
        format: BatchFormat | str | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncJobHandle:
        """Start a job without waiting and return its handle (see Client.submit)."""
        source = _check_one_source(payload, items, file)
        request, fmt = self._submission(payload, source, format, None, True, idempotency_key)
        response = await self._http.post(f"/v1/functions/{name}", **request)
        if response.status_code not in (200, 202):
            raise _error(response)
        return AsyncJobHandle(self, *_job_id(response), format=fmt)

    def job(self, job_id: str, format: BatchFormat | str = BatchFormat.JSON) -> AsyncJobHandle:
        """A handle on an existing job."""
        return AsyncJobHandle(self, job_id, f"/v1/jobs/{job_id}", _as_format(format))

    def _file_body(self, source: FileSource) -> AsyncIterator[bytes]:
        return _aiter_file(source)

    def _items_body(self, items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[bytes]:
        return _aiter_items(items)

    async def _finish(self, response: httpx.Response, fmt: BatchFormat) -> Any:
        if response.status_code == 200:
            return _decode_result(response)
        if response.status_code != 202:
            raise _error(response)
        async with self._result(_job_id(response)[1], None, fmt) as final:
            await final.aread()
            return _decode_result(final)

    @contextlib.asynccontextmanager
    async def _result(
        self, location: str, wait: float | None, fmt: BatchFormat
    ) -> AsyncIterator[httpx.Response]:
        """The job's 200 result response, open for streaming, once the job is done."""
        poll = _Poll(location, self.poll_s, wait)
        while True:
            wait_s = poll.next_wait()
            async with self._http.stream(**self._result_request(location, wait_s, fmt)) as response:
                if response.status_code == 200:
                    yield response
                    return
                await response.aread()
                if response.status_code != 202:
                    raise _error(response)
            await anyio.sleep(poll.pause(wait_s))


class AsyncJobHandle(_HandleBase):
    """A submitted job, followed through an AsyncClient (JobHandle's methods, awaited)."""

    def __init__(
        self,
        client: AsyncClient,
        job_id: str,
        location: str,
        format: BatchFormat = BatchFormat.JSON,
    ) -> None:
        super().__init__(job_id, location, format)
        self.client = client

    async def status(self, wait: float | None = None) -> dict[str, Any]:
        """The status document; `wait` blocks up to N seconds for the job to finish first."""
        timeout = self.client._wait_timeout(wait or 0.0)
        return _status(await self.client._http.get(**self._status_request(wait, timeout)))

    async def result(self, wait: float | None = None) -> Any:
        """The result once the job is done (a list for map jobs); TimeoutError after `wait` s."""
        async with self.client._result(self.location, wait, self.format) as response:
            await response.aread()
            return _decode_result(response)

    async def stream_result(
        self, format: BatchFormat | str | None = None, wait: float | None = None
    ) -> AsyncIterator[bytes]:
        """The raw result body in pieces once the job is done (`format`: the one to ask for)."""
        fmt = self.format if format is None else _as_format(format)
        async with self.client._result(self.location, wait, fmt) as response:
            async for piece in response.aiter_bytes():
                yield piece

    async def cancel(self) -> dict[str, Any]:
        """Cancel the job and return its status (a job already finished stays finished)."""
        status = self._cancel_outcome(await self.client._http.delete(self.location))
        return await self.status() if status is None else status

    async def events(self) -> AsyncIterator[JobEvent]:
        """The job's Server-Sent Events up to its terminal one; reconnects with Last-Event-ID."""
        parser = SSEParser()
        idle = 0
        while idle <= _EVENT_RECONNECTS:
            idle += 1
            request = self.client._events_request(self.location, parser.last_id)
            try:
                async with self.client._http.stream(**request) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise _error(response)
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            idle = 0
                            yield event
                            if event.terminal:
                                return
            except _STREAM_DROPPED:
                pass  # a quiet or dropped stream: reconnect
        raise BatchgateError(f"the event stream of job {self.id} ended without an outcome")
