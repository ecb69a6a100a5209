"""The blocking client: `Client` and its `JobHandle`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from batchgate.batches import BatchFormat
from batchgate.client.common import (
    _EVENT_RECONNECTS,
    _MISSING,
    _STREAM_DROPPED,
    DEFAULT_URL,
    FileSource,
    JobEvent,
    SSEParser,
    _as_format,
    _as_list,
    _Base,
    _check_one_source,
    _decode_result,
    _error,
    _file_pieces,
    _functions,
    _HandleBase,
    _job_id,
    _ndjson_pieces,
    _Poll,
    _status,
)
from batchgate.errors import BatchgateError


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
