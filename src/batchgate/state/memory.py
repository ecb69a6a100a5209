"""Job state in dicts (`memory://`): for tests and single-process experiments.

Same semantics as the durable backends. Each method runs without awaiting, so it is atomic
on the event loop. Nothing survives the process, and each `open` is a fresh, unshared
state: components that must see the same jobs need the same instance. Notices are
in-process (`LocalNotices`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from batchgate import attempts
from batchgate.attempts import PLAIN, Attempt, TaskAttempts, Verdict
from batchgate.models import Job, JobError, JobStatus, Progress, now
from batchgate.state.base import Watch
from batchgate.state.notices import LocalNotices

_IdempotencyKey = tuple[str, str, str]


async def open(url: str) -> MemoryState:
    """A new, empty in-memory state (`memory://`)."""
    return MemoryState()


class MemoryState:
    """The State port on plain dicts; see the module docstring."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._by_key: dict[_IdempotencyKey, str] = {}
        self._chunks: dict[str, set[int]] = {}
        self._attempts: dict[str, dict[int, TaskAttempts]] = {}
        self._manifest: bytes | None = None
        self._notices = LocalNotices()

    def _active(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        return None if job is None or job.status.terminal else job

    def _commit(self, job: Job) -> Job:
        self._jobs[job.id] = job
        self._notices.publish(job.id)
        return job

    async def create_job(self, job: Job) -> tuple[Job, bool]:
        """Store a new job, or return the one stored under the same idempotency key."""
        stored = self._jobs.get(job.id)
        if stored is not None:
            return stored, True  # the same write again
        key = None
        if job.idempotency_key is not None:
            key = (job.owner, job.function, job.idempotency_key)
            existing_id = self._by_key.get(key)
            if existing_id is not None:
                return self._jobs[existing_id], False
        self._jobs[job.id] = job
        if key is not None:
            self._by_key[key] = job.id
        return job, True

    async def get_job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def start_attempt(
        self, job_id: str, delivery: int, task: int = PLAIN, crash_retries: int = 3
    ) -> Attempt | None:
        """Count an attempt of the task as its function starts (see `batchgate.attempts`)."""
        job = self._active(job_id)
        if job is None or (task != PLAIN and task in self._chunks.get(job_id, ())):
            return None
        records = self._attempts.setdefault(job_id, {})
        before = records.get(task, TaskAttempts())
        verdict, after = attempts.start(before, delivery, crash_retries)
        if verdict is Verdict.STALE:
            return None
        if verdict is Verdict.STARTED:
            records[task] = after
            number = after.started if task == PLAIN else max(job.attempts, after.started)
            started_at = now() if job.started_at is None else job.started_at
            job = self._commit(
                job.replace(status=JobStatus.RUNNING, attempts=number, started_at=started_at)
            )
        return Attempt.of(job, before, after, verdict)

    async def requeue(
        self,
        job_id: str,
        attempt: int,
        error: JobError,
        task: int = PLAIN,
        by_function: bool = True,
    ) -> Job | None:
        """Report a failed attempt that will be retried; None if fenced off or terminal."""
        job = self._active(job_id)
        if job is None:
            return None
        record = self._attempts.get(job_id, {}).get(task, TaskAttempts())
        after = attempts.fail(record, attempt, error, by_function=by_function)
        if after is None:
            return None
        self._attempts.setdefault(job_id, {})[task] = after
        if task != PLAIN:
            return job
        return self._commit(job.replace(status=JobStatus.QUEUED, error=error))

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
        """The terminal transition, once; None if terminal already or fenced off."""
        if not status.terminal:
            raise ValueError(f"finish needs a terminal status, not {status.value!r}")
        job = self._active(job_id)
        if job is None or (attempt is not None and job.attempts != attempt):
            return None
        return self._commit(
            job.replace(
                status=status,
                finished_at=now(),
                result=result,
                result_ref=result_ref,
                error=error,
            )
        )

    async def reopen(self, job_id: str) -> Job | None:
        """A failed job back to queued, attempts/error/finish time cleared; else None."""
        job = self._jobs.get(job_id)
        if job is None or job.status is not JobStatus.FAILED:
            return None
        self._attempts.pop(job_id, None)
        return self._commit(
            job.replace(status=JobStatus.QUEUED, attempts=0, error=None, finished_at=None)
        )

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job that is not terminal; None if it already is."""
        job = self._active(job_id)
        if job is None:
            return None
        return self._commit(job.replace(status=JobStatus.CANCELLED, finished_at=now()))

    async def record_chunk(
        self, job_id: str, chunk: int, done: int, failed: int
    ) -> tuple[Progress, bool] | None:
        """Count a finished chunk of a map job exactly once."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        seen = self._chunks.setdefault(job_id, set())
        if chunk in seen:
            return job.progress, False
        seen.add(chunk)
        progress = job.progress
        progress = Progress(progress.done + done, progress.failed + failed, progress.total)
        self._commit(job.replace(progress=progress))
        return progress, True

    def watch(self, job_id: str) -> AbstractAsyncContextManager[Watch]:
        """Subscribe to one job's notices."""
        return self._notices.watch(job_id)

    async def expired_jobs(self, finished_before: float, limit: int) -> list[Job]:
        """Terminal jobs that finished before `finished_before`, oldest first."""
        expired = [
            job
            for job in self._jobs.values()
            if job.finished_at is not None and job.finished_at < finished_before
        ]
        expired.sort(key=lambda job: job.finished_at or 0.0)
        return expired[:limit]

    async def delete_jobs(self, job_ids: Sequence[str]) -> None:
        """Delete jobs and their chunk records; unknown ids are ignored."""
        for job_id in job_ids:
            job = self._jobs.pop(job_id, None)
            self._chunks.pop(job_id, None)
            self._attempts.pop(job_id, None)
            if job is not None and job.idempotency_key is not None:
                key = (job.owner, job.function, job.idempotency_key)
                if self._by_key.get(key) == job_id:
                    del self._by_key[key]

    async def put_manifest(self, data: bytes) -> None:
        """Replace the published function registry."""
        self._manifest = bytes(data)

    async def get_manifest(self) -> bytes | None:
        return self._manifest

    async def check_health(self) -> None:
        """Nothing to check beyond answering in memory."""

    async def aclose(self) -> None:
        """Nothing to release; the data stays readable until the object is dropped."""
