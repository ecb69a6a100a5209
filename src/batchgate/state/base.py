"""The State port: job records with compare-and-set transitions, counters and notices."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from batchgate.attempts import PLAIN, Attempt
from batchgate.models import Job, JobError, JobStatus, Progress


class Watch(Protocol):
    """A subscription to one job's notices, registered before the job can change."""

    async def wait_notice(self, timeout_s: float) -> bool:
        """Block until a notice arrives (True) or `timeout_s` passes (False).

        A notice that arrived since the last call is returned at once. Notices may be lost
        (a reconnect, another host): callers re-read the job after a False too.
        """
        ...


class State(Protocol):
    """Job records. Every transition is a compare-and-set and publishes a notice.

    Fencing: `start_attempt` is fenced by the queue's delivery number and numbers the
    task's attempts; `finish` (of a plain job) and `requeue` with an older attempt number
    change nothing, so a stale worker cannot overwrite a newer one. `reopen` and
    `delete_jobs` forget the job's attempt records too.
    """

    async def create_job(self, job: Job) -> tuple[Job, bool]:
        """Store a new job; returns (job, True).

        With `job.idempotency_key` set and a job already stored for the same owner, function
        and key, stores nothing and returns (that job, False). A job whose id is already
        stored stores nothing and returns (the stored job, True): ids are unguessable, so
        only the same write retried after its reply was lost repeats one. Atomic.
        """
        ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def start_attempt(
        self, job_id: str, delivery: int, task: int = PLAIN, crash_retries: int = 3
    ) -> Attempt | None:
        """Count an attempt of one of the job's tasks (`task`: PLAIN, or a map job's chunk
        number) as its function starts on an executor, by `batchgate.attempts.start`.

        None, and nothing changes, if the job is unknown or terminal, the chunk is already
        counted (`record_chunk`), or a later queue `delivery` of the task already started.
        Past the crash budget nothing is counted either: the Attempt says `started=False`.
        Otherwise the job is running, and its `attempts` is the task's attempt number (for a
        map job: the highest of any chunk). Atomic; publishes a notice when it changes.
        """
        ...

    async def requeue(
        self,
        job_id: str,
        attempt: int,
        error: JobError,
        task: int = PLAIN,
        by_function: bool = True,
    ) -> Job | None:
        """Report that attempt number `attempt` of the task failed and will be retried, by
        `batchgate.attempts.fail` (`by_function`: the function raised; else the worker saw
        its infrastructure fail). A plain job goes back to queued, keeping the error; a map
        job is left as it is. None if the job is terminal or a later attempt started."""
        ...

    async def finish(
        self,
        job_id: str,
        attempt: int | None,
        status: JobStatus,
        *,
        result: bytes | None = None,
        result_ref: str | None = None,
        error: JobError | None = None,
    ) -> Job | None:
        """The terminal transition, once: None if the job is already terminal or, with an
        `attempt`, if a newer attempt owns it. Publishes a notice."""
        ...

    async def reopen(self, job_id: str) -> Job | None:
        """A failed job back to queued with attempts, error and finish time cleared (a DLQ
        re-drive); None unless it was failed."""
        ...

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job that is not terminal; None if it already is. Publishes a notice."""
        ...

    async def record_chunk(
        self, job_id: str, chunk: int, done: int, failed: int
    ) -> tuple[Progress, bool] | None:
        """Count a finished chunk of a map job exactly once.

        Returns (progress after, True) the first time `chunk` is recorded and (progress,
        False) on a repeat; None for an unknown job. Publishes a notice when it counts.
        """
        ...

    def watch(self, job_id: str) -> AbstractAsyncContextManager[Watch]:
        """Subscribe to one job's notices for the duration of the block."""
        ...

    async def expired_jobs(self, finished_before: float, limit: int) -> list[Job]:
        """Terminal jobs that finished before the given epoch time."""
        ...

    async def delete_jobs(self, job_ids: Sequence[str]) -> None: ...

    async def put_manifest(self, data: bytes) -> None:
        """Publish the workers' function registry for gateways that do not import the app."""
        ...

    async def get_manifest(self) -> bytes | None: ...

    async def check_health(self) -> None:
        """Raise BackendError if this backend could not take writes now (its disk is full).

        Cheap and side-effect free: readiness probes call it. Backends with nothing to
        check beyond answering at all return at once.
        """
        ...

    async def aclose(self) -> None: ...
