"""The blocking client, `Client` and its `JobHandle`: a thin shell over httpx.Client.

It only performs the steps of `ClientCore`'s flows (see `steps.py`) with blocking I/O;
what is sent, what an answer means and when to retry are decided there, once for both
clients.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar, Unpack, cast

import httpx

from batchgate.batches import BatchFormat
from batchgate.client.bodies import PIECE_BYTES, Body, FileSource, FileTarget, ndjson_pieces
from batchgate.client.core import MISSING
from batchgate.client.files import FileRun, run_file
from batchgate.client.options import FileOptions, MapOptions, RunOptions, SubmitOptions
from batchgate.client.shells import ClientBase, HandleBase
from batchgate.client.sse import JobEvent
from batchgate.client.steps import Driver, Emit, Flow, Next, Reply, Save, Send, Sleep, Slurp, Step

T = TypeVar("T")


class Client(ClientBase[httpx.Client]):
    """A blocking client: `with Client(url, api_key=KEY) as bg: bg.run("fn", payload)`.

    The constructor is ClientBase's: `Client(base_url=None, api_key=None, *, http=None,
    timeout_s=30, poll_s=60, retry=RetryPolicy())`.
    """

    def _new_http(self) -> httpx.Client:
        return httpx.Client()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def functions(self) -> list[dict[str, Any]]:
        """The gateway's functions: name, kind (function/map), timeout_s, retries…"""
        return self._run(self.core.functions())

    def run(self, name: str, payload: Any, **options: Unpack[RunOptions]) -> Any:
        """Run a function on one JSON payload and return its result, however long it takes.

        A failed job raises JobFailed (`.extra["job_id"]`, `.extra["error"]`), a cancelled
        one JobCancelled; see RunOptions for `wait` and `idempotency_key`.
        """
        return self._run(self.core.run(name, payload, **options))

    def map(
        self, name: str, items: Iterable[Any] | FileSource, **options: Unpack[MapOptions]
    ) -> list[Any]:
        """Run a map function over items and return the results in input order.

        Items stream out as NDJSON, never all in memory. A path or binary file object is
        sent as it is: NDJSON for `.ndjson`/`.jsonl` or `format="ndjson"`, else a JSON array.
        """
        return self._run(self.core.map(name, items, **options))

    def submit(
        self, name: str, payload: Any = MISSING, **batch: Unpack[SubmitOptions]
    ) -> JobHandle:
        """Start a job without waiting (`Prefer: respond-async`) and return its handle.

        Give exactly one of `payload` (a plain function's JSON argument), `items` or `file`.
        """
        return JobHandle(self, self._run(self.core.submit(name, payload, **batch)))

    def job(self, job_id: str, format: BatchFormat | str = BatchFormat.JSON) -> JobHandle:
        """A handle on an existing job (`format`: the one its result is asked for in)."""
        return JobHandle(self, self.core.job(job_id, format))

    def run_file(
        self, name: str, source: FileSource, output: FileTarget, **options: Unpack[FileOptions]
    ) -> FileRun:
        """Run a function on a file and write its result to `output` (a path or binary file).

        A map function gets the file as a batch and its result comes back in the input's
        format; any other function gets the file's one JSON value (InvalidInput if it is
        not). A path given as `output` is created only once the result arrives.
        """
        return self._run(run_file(self.core, name, source, output, **options))

    # -- performing the core's steps -------------------------------------------------------

    def _run(self, flow: Flow[T]) -> T:
        with Driver(flow) as driver, contextlib.ExitStack() as opened:
            while (step := driver.step) is not None:
                self._advance(driver, step, opened)
            return driver.result()

    def _iterate(self, flow: Flow[None]) -> Iterator[Any]:
        with Driver(flow) as driver, contextlib.ExitStack() as opened:
            while (step := driver.step) is not None:
                if isinstance(step, Emit):
                    yield step.value
                    driver.resume(None)
                else:
                    self._advance(driver, step, opened)

    def _advance(self, driver: Driver[Any], step: Step, opened: contextlib.ExitStack) -> None:
        try:
            outcome = self._perform(step, opened)
        except httpx.TransportError as exc:
            driver.fail(exc)
        else:
            driver.resume(outcome)

    def _perform(self, step: Step, opened: contextlib.ExitStack) -> Any:
        if isinstance(step, Send):
            opened.close()  # a flow is done with its previous answer once it sends again
            content = step.call.content(_pieces)
            request = self._http.build_request(**step.call.options, content=content)
            response = self._http.send(request, stream=True)
            opened.callback(response.close)
            return Reply.of(response, response.iter_bytes())
        if isinstance(step, Next):
            return next(step.reply.stream, b"")
        if isinstance(step, Sleep):
            return time.sleep(step.seconds)
        if isinstance(step, Save):
            return _save(step)
        if isinstance(step, Slurp):
            return b"".join(_pieces(step.body))
        raise TypeError(f"the blocking client cannot perform {step!r} here")


def _pieces(body: Body) -> Iterator[bytes]:
    """A file's or items' bytes, read in pieces as they are sent."""
    if body.path is not None:
        with open(body.path, "rb") as file:
            pieces = iter(functools.partial(file.read, PIECE_BYTES), b"")
            yield from map(body.count, pieces)
    elif body.file is not None:
        yield from map(body.count, iter(functools.partial(body.file.read, PIECE_BYTES), b""))
    else:
        yield from map(body.count, ndjson_pieces(cast(Iterable[Any], body.items)))


def _save(save: Save) -> None:
    out = save.output
    file = open(out.path, "wb") if out.path is not None else out.file  # noqa: SIM115
    assert file is not None
    try:
        for piece in save.reply.stream:
            file.write(out.take(piece))
        file.write(out.ending())
        file.flush()
    finally:
        if out.path is not None:
            file.close()


class JobHandle(HandleBase[Client]):
    """A submitted job, followed through a blocking Client."""

    def status(self, wait: float | None = None) -> dict[str, Any]:
        """The status document; `wait` blocks up to N seconds for the job to finish first."""
        return self.client._run(self.client.core.status(self.ref, wait))

    def result(self, wait: float | None = None) -> Any:
        """The result once the job is done (a list for map jobs); TimeoutError after `wait` s."""
        return self.client._run(self.client.core.result(self.ref, wait))

    def stream_result(
        self, format: BatchFormat | str | None = None, wait: float | None = None
    ) -> Iterator[bytes]:
        """The raw result body in pieces once the job is done (`format`: the one to ask for)."""
        return self.client._iterate(self.client.core.stream_result(self.ref, format, wait))

    def cancel(self) -> dict[str, Any]:
        """Cancel the job and return its status (a job already finished stays finished)."""
        return self.client._run(self.client.core.cancel(self.ref))

    def events(self) -> Iterator[JobEvent]:
        """The job's Server-Sent Events up to its terminal one; reconnects with Last-Event-ID."""
        return self.client._iterate(self.client.core.events(self.ref))
