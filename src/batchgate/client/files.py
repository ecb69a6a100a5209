"""Run a function on a file and write its result to a file: `batchgate submit`'s flow.

A map function gets the file streamed up as a batch (`Prefer: respond-async`), its
progress is followed on the job's event stream, and its result is streamed into the
output in the input's format. Any other function gets the file's one JSON value, checked
before it is sent. The output file is created only once the result arrives, so a job
that fails leaves none behind; a connection lost while the result is written to a path
fetches it again and rewrites the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable

from batchgate.batches import BatchFormat
from batchgate.client.answers import JobRef
from batchgate.client.bodies import (
    Body,
    FileSource,
    FileTarget,
    Output,
    UploadCallback,
    source_name,
)
from batchgate.client.core import ClientCore
from batchgate.client.retry import RETRYABLE_ERRORS, Retries
from batchgate.client.sse import JobEvent
from batchgate.client.steps import Flow, Reply, Save, Sleep, Slurp, observe
from batchgate.errors import BatchgateError, NotFound
from batchgate.models import Progress


class InvalidInput(ValueError):
    """A plain function's input file does not hold one JSON value."""


@dataclasses.dataclass(frozen=True, slots=True)
class FileRun:
    """What `run_file` did: the job it ran, and how many bytes it wrote."""

    job_id: str
    kind: str
    written_bytes: int


def run_file(
    core: ClientCore,
    name: str,
    source: FileSource,
    output: FileTarget,
    *,
    format: BatchFormat | str | None = None,
    idempotency_key: str | None = None,
    on_upload: UploadCallback | None = None,
    on_job: Callable[[str], object] | None = None,
    on_progress: Callable[[Progress], object] | None = None,
) -> Flow[FileRun]:
    """The flow of `Client.run_file` (see there)."""
    kinds = {f["name"]: f.get("kind") for f in (yield from core.functions())}
    if name not in kinds:
        known = ", ".join(sorted(kinds)) or "none"
        raise NotFound(f"the gateway has no function {name!r} (it has: {known})")
    kind = "map" if kinds[name] == "map" else "function"
    if kind == "map":
        body = Body.of_source(source, format, on_upload)
    else:
        raw = yield Slurp(Body.of_source(source, BatchFormat.JSON))
        try:
            json.loads(raw)
        except ValueError as exc:
            raise InvalidInput(f"{source_name(source)} is not valid JSON: {exc}") from None
        body = Body(BatchFormat.JSON, data=raw, on_upload=on_upload)
    reply, _ = yield from core.post(
        name, body, respond_async=kind == "map", idempotency_key=idempotency_key
    )
    if reply.status not in (200, 202):
        raise core.error(reply, (yield from core.read(reply)))
    job = core.accepted(reply, body.format)
    if on_job is not None:
        on_job(job.id)
    out = Output(output)
    if reply.status == 202:
        yield from core.drain(reply)
        if kind == "map" and on_progress is not None:
            yield from _follow_progress(core, job, on_progress)
        reply = (yield from core.finished(job, read=False)).reply
    yield from _save(core, job, reply, out)
    return FileRun(job.id, kind, out.written_bytes)


def _follow_progress(
    core: ClientCore, job: JobRef, report: Callable[[Progress], object]
) -> Flow[None]:
    def take(event: JobEvent) -> None:
        if (progress := event.progress) is not None:
            report(progress)

    # The result fetch that follows reports the job's outcome, failures included.
    with contextlib.suppress(BatchgateError):
        yield from observe(core.events(job), take)


def _save(core: ClientCore, job: JobRef, reply: Reply, out: Output) -> Flow[None]:
    """Write the result; a cut-off download into a path is fetched and written again."""
    retries = Retries(core.config.retry, core.config.clock, core.config.draw)
    while True:
        try:
            yield Save(reply, out)
            return
        except RETRYABLE_ERRORS:
            delay_s = None if out.path is None else retries.next_delay_s()
            if delay_s is None:
                raise  # what went to a pipe cannot be taken back
            yield Sleep(delay_s)
        out.restart()
        reply = (yield from core.finished(job, read=False)).reply
