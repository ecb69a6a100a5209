"""The asyncio client, `AsyncClient` and its `AsyncJobHandle`: a thin shell over
httpx.AsyncClient.

It only performs the steps of `ClientCore`'s flows (see `steps.py`) with awaited I/O
(anyio for files and sleeps); everything else is the blocking client's logic, written once
in the core.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar, Unpack

import anyio
import anyio.to_thread
import httpx

from batchgate.batches import BatchFormat
from batchgate.client.bodies import PIECE_BYTES, Body, FileSource, FileTarget, Items, ndjson_apieces
from batchgate.client.core import MISSING
from batchgate.client.files import FileRun, run_file
from batchgate.client.options import FileOptions, MapOptions, RunOptions, SubmitOptions
from batchgate.client.shells import ClientBase, HandleBase
from batchgate.client.sse import JobEvent
from batchgate.client.steps import Driver, Emit, Flow, Next, Reply, Save, Send, Sleep, Slurp, Step

T = TypeVar("T")


class AsyncClient(ClientBase[httpx.AsyncClient]):
    """The asyncio twin of Client: the same constructor and methods, awaited.

    Items may also be an async iterable; `events()` and `stream_result()` of its handles
    are async iterators; `run_file` calls its progress callbacks on the event loop.
    """

    def _new_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def functions(self) -> list[dict[str, Any]]:
        """The gateway's functions (see Client.functions)."""
        return await self._run(self.core.functions())

    async def run(self, name: str, payload: Any, **options: Unpack[RunOptions]) -> Any:
        """Run a function on one JSON payload and return its result (see Client.run)."""
        return await self._run(self.core.run(name, payload, **options))

    async def map(
        self, name: str, items: Items | FileSource, **options: Unpack[MapOptions]
    ) -> list[Any]:
        """Run a map function over items; the results in input order (see Client.map)."""
        return await self._run(self.core.map(name, items, **options))

    async def submit(
        self, name: str, payload: Any = MISSING, **batch: Unpack[SubmitOptions]
    ) -> AsyncJobHandle:
        """Start a job without waiting and return its handle (see Client.submit)."""
        return AsyncJobHandle(self, await self._run(self.core.submit(name, payload, **batch)))

    def job(self, job_id: str, format: BatchFormat | str = BatchFormat.JSON) -> AsyncJobHandle:
        """A handle on an existing job."""
        return AsyncJobHandle(self, self.core.job(job_id, format))

    async def run_file(
        self, name: str, source: FileSource, output: FileTarget, **options: Unpack[FileOptions]
    ) -> FileRun:
        """Run a function on a file and write its result to `output` (see Client.run_file)."""
        return await self._run(run_file(self.core, name, source, output, **options))

    # -- performing the core's steps -------------------------------------------------------

    async def _run(self, flow: Flow[T]) -> T:
        with Driver(flow) as driver:
            async with contextlib.AsyncExitStack() as opened:
                while (step := driver.step) is not None:
                    await self._advance(driver, step, opened)
                return driver.result()

    async def _iterate(self, flow: Flow[None]) -> AsyncIterator[Any]:
        with Driver(flow) as driver:
            async with contextlib.AsyncExitStack() as opened:
                while (step := driver.step) is not None:
                    if not isinstance(step, Emit):
                        await self._advance(driver, step, opened)
                        continue
                    yield step.value
                    driver.resume(None)

    async def _advance(
        self, driver: Driver[Any], step: Step, opened: contextlib.AsyncExitStack
    ) -> None:
        try:
            outcome = await self._perform(step, opened)
        except httpx.TransportError as exc:
            driver.fail(exc)
        else:
            driver.resume(outcome)

    async def _perform(self, step: Step, opened: contextlib.AsyncExitStack) -> Any:
        if isinstance(step, Send):
            await opened.aclose()  # a flow is done with its previous answer once it sends again
            content = step.call.content(_pieces)
            request = self._http.build_request(**step.call.options, content=content)
            response = await self._http.send(request, stream=True)
            opened.push_async_callback(response.aclose)
            return Reply.of(response, response.aiter_bytes())
        if isinstance(step, Next):
            return await anext(step.reply.stream, b"")
        if isinstance(step, Sleep):
            return await anyio.sleep(step.seconds)
        if isinstance(step, Save):
            return await _save(step)
        if isinstance(step, Slurp):
            return b"".join([piece async for piece in _pieces(step.body)])
        raise TypeError(f"the asyncio client cannot perform {step!r} here")


async def _pieces(body: Body) -> AsyncIterator[bytes]:
    """A file's or items' bytes, read in pieces as they are sent (files in a worker thread)."""
    if body.path is not None:
        async with await anyio.open_file(body.path, "rb") as file:
            while piece := await file.read(PIECE_BYTES):
                yield body.count(piece)
    elif body.file is not None:
        while piece := await anyio.to_thread.run_sync(body.file.read, PIECE_BYTES):
            yield body.count(piece)
    elif body.items is not None:
        async for piece in ndjson_apieces(body.items):
            yield body.count(piece)


async def _save(save: Save) -> None:
    out = save.output
    if out.path is not None:
        file = await anyio.open_file(out.path, "wb")
    else:
        file = anyio.wrap_file(out.file)  # type: ignore[arg-type]  # set when path is not
    try:
        async for piece in save.reply.stream:
            await file.write(out.take(piece))
        await file.write(out.ending())
        await file.flush()
    finally:
        if out.path is not None:
            await file.aclose()


class AsyncJobHandle(HandleBase[AsyncClient]):
    """A submitted job, followed through an AsyncClient (JobHandle's methods, awaited)."""

    async def status(self, wait: float | None = None) -> dict[str, Any]:
        """The status document; `wait` blocks up to N seconds for the job to finish first."""
        return await self.client._run(self.client.core.status(self.ref, wait))

    async def result(self, wait: float | None = None) -> Any:
        """The result once the job is done (a list for map jobs); TimeoutError after `wait` s."""
        return await self.client._run(self.client.core.result(self.ref, wait))

    def stream_result(
        self, format: BatchFormat | str | None = None, wait: float | None = None
    ) -> AsyncIterator[bytes]:
        """The raw result body in pieces once the job is done (an async iterator)."""
        return self.client._iterate(self.client.core.stream_result(self.ref, format, wait))

    async def cancel(self) -> dict[str, Any]:
        """Cancel the job and return its status (a job already finished stays finished)."""
        return await self.client._run(self.client.core.cancel(self.ref))

    def events(self) -> AsyncIterator[JobEvent]:
        """The job's Server-Sent Events (an async iterator; see JobHandle.events)."""
        return self.client._iterate(self.client.core.events(self.ref))
