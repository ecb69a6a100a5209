"""The asyncio client: `AsyncClient` and its `AsyncJobHandle`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

import anyio
import anyio.to_thread
import httpx

from batchgate.batches import BatchFormat
from batchgate.client.common import (
    _EVENT_RECONNECTS,
    _MISSING,
    _PIECE_BYTES,
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
    _dump_line,
    _error,
    _functions,
    _HandleBase,
    _job_id,
    _ndjson_pieces,
    _Poll,
    _status,
)
from batchgate.errors import BatchgateError


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
