"""The keyword options of the client methods, declared once for both clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

from batchgate.batches import BatchFormat
from batchgate.client.bodies import FileSource, Items, UploadCallback
from batchgate.models import Progress


class RunOptions(TypedDict, total=False):
    """`wait`: how long the gateway may hold the POST (`Prefer: wait=N`, default `poll_s`);
    after a 202 the client keeps waiting on the result. `idempotency_key`: sent as
    `Idempotency-Key` (a repeat attaches to the first job); with retries on, a random
    one is sent when none is given."""

    wait: float | None
    idempotency_key: str | None


class MapOptions(RunOptions, total=False):
    """`format` of a file: `json`, `ndjson` or a media type (default: from its suffix)."""

    format: BatchFormat | str | None


class SubmitOptions(TypedDict, total=False):
    """The batch to submit instead of a payload: `items` (streamed as NDJSON) or `file` (a
    path or binary file object, sent as it is), its `format`, and the `idempotency_key`."""

    items: Items | None
    file: FileSource | None
    format: BatchFormat | str | None
    idempotency_key: str | None


class FileOptions(TypedDict, total=False):
    """`format` and `idempotency_key` as for `map`, and progress callbacks, called on the
    caller's thread (or event loop): `on_upload(sent_bytes, total_bytes)` as the input goes
    up (total None for a pipe; from 0 again if a retry sends it again), `on_job(job_id)`
    once the gateway named the job, `on_progress(Progress)` as a map job's items finish."""

    format: BatchFormat | str | None
    idempotency_key: str | None
    on_upload: UploadCallback | None
    on_job: Callable[[str], object] | None
    on_progress: Callable[[Progress], object] | None
