"""Job state in a SQLite file (`sqlite:///relative.db`, `sqlite:////absolute.db`).

The embedded default. Several processes may open the same file; each transition is one
compare-and-set statement (or one atomic group of statements), so transitions stay
exactly-once across processes. Reads run on the event loop's thread; writes are
group-committed with every other write of the same loop turn (see `batchgate.sqlite_db`,
which also states the durability: WAL, synchronous=NORMAL).

Notices are in-process (`LocalNotices`): a waiter in another process on the same file
hears nothing, so callers re-read the job at a slow interval as a safety net.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from batchgate import attempts
from batchgate.attempts import PLAIN, Attempt, TaskAttempts, Verdict
from batchgate.errors import ConfigError
from batchgate.models import FunctionKind, Job, JobError, JobStatus, Progress, now
from batchgate.sqlite_db import SqliteDatabase
from batchgate.state.base import Watch
from batchgate.state.notices import LocalNotices
from batchgate.urls import local_path

# RETURNING arrived in SQLite 3.35 (https://sqlite.org/lang_returning.html).
MIN_SQLITE_VERSION = (3, 35, 0)
MANIFEST_KEY = "manifest"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    progress_done INTEGER NOT NULL,
    progress_failed INTEGER NOT NULL,
    progress_total INTEGER NOT NULL,
    error_type TEXT,
    error_message TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    owner TEXT NOT NULL,
    idempotency_key TEXT,
    request_hash TEXT,
    result BLOB,
    result_ref TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (owner, function, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    PRIMARY KEY (job_id, chunk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL,
    task INTEGER NOT NULL,
    started INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    delivery INTEGER NOT NULL,
    running INTEGER NOT NULL,
    error_type TEXT,
    error_message TEXT,
    PRIMARY KEY (job_id, task)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
"""

# Column order shared by every statement that yields a whole job; see _job().
COLUMNS = (
    "id, function, kind, status, attempts, progress_done, progress_failed, progress_total, "
    "error_type, error_message, created_at, started_at, finished_at, owner, "
    "idempotency_key, request_hash, result, result_ref"
)
ACTIVE = "status IN ('queued', 'running')"

INSERT_JOB = f"INSERT INTO jobs ({COLUMNS}) VALUES ({', '.join('?' * 18)})"
INSERT_JOB_IF_NEW = INSERT_JOB + " ON CONFLICT DO NOTHING"
SELECT_JOB = f"SELECT {COLUMNS} FROM jobs WHERE id = ?"
SELECT_BY_KEY = (
    f"SELECT {COLUMNS} FROM jobs WHERE owner = ? AND function = ? AND idempotency_key = ?"
)
# The attempt rules run in Python (batchgate.attempts) inside the write's transaction.
START_ATTEMPT = (
    "UPDATE jobs SET status = 'running', attempts = ?, started_at = COALESCE(started_at, ?) "
    f"WHERE id = ? RETURNING {COLUMNS}"
)
REQUEUE = (
    "UPDATE jobs SET status = 'queued', error_type = ?, error_message = ? "
    f"WHERE id = ? RETURNING {COLUMNS}"
)
SELECT_ATTEMPTS = (
    "SELECT started, failed, delivery, running, error_type, error_message FROM attempts "
    "WHERE job_id = ? AND task = ?"
)
PUT_ATTEMPTS = (
    "INSERT INTO attempts (job_id, task, started, failed, delivery, running, error_type, "
    "error_message) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, task) DO UPDATE SET "
    "started = excluded.started, failed = excluded.failed, delivery = excluded.delivery, "
    "running = excluded.running, error_type = excluded.error_type, "
    "error_message = excluded.error_message"
)
SELECT_CHUNK = "SELECT 1 FROM chunks WHERE job_id = ? AND chunk = ?"
DELETE_ATTEMPTS = "DELETE FROM attempts WHERE job_id = ?"
FINISH = (
    "UPDATE jobs SET status = ?, finished_at = ?, result = ?, result_ref = ?, "
    "error_type = ?, error_message = ? "
    f"WHERE id = ? AND {ACTIVE} AND (? IS NULL OR attempts = ?) RETURNING {COLUMNS}"
)
REOPEN = (
    "UPDATE jobs SET status = 'queued', attempts = 0, error_type = NULL, error_message = NULL, "
    f"finished_at = NULL WHERE id = ? AND status = 'failed' RETURNING {COLUMNS}"
)
CANCEL = (
    "UPDATE jobs SET status = 'cancelled', finished_at = ? "
    f"WHERE id = ? AND {ACTIVE} RETURNING {COLUMNS}"
)
INSERT_CHUNK = "INSERT OR IGNORE INTO chunks (job_id, chunk) VALUES (?, ?)"
ADD_PROGRESS = (
    "UPDATE jobs SET progress_done = progress_done + ?, progress_failed = progress_failed + ? "
    "WHERE id = ? RETURNING progress_done, progress_failed, progress_total"
)
SELECT_PROGRESS = "SELECT progress_done, progress_failed, progress_total FROM jobs WHERE id = ?"
SELECT_EXPIRED = f"SELECT {COLUMNS} FROM jobs WHERE finished_at < ? ORDER BY finished_at LIMIT ?"
DELETE_CHUNKS = "DELETE FROM chunks WHERE job_id = ?"
DELETE_JOB = "DELETE FROM jobs WHERE id = ?"
PUT_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
GET_META = "SELECT value FROM meta WHERE key = ?"

_KINDS = {k.value: k for k in FunctionKind}
_STATUSES = {s.value: s for s in JobStatus}


async def open(url: str) -> SqliteState:
    """Open (creating if needed) the SQLite state file named by `url`."""
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        raise ConfigError(
            f"the sqlite state backend needs SQLite >= 3.35 (RETURNING); "
            f"this Python links {sqlite3.sqlite_version}"
        )
    path = local_path(url)
    try:
        return SqliteState(SqliteDatabase(path, SCHEMA, "state"))
    except OSError as exc:
        raise ConfigError(f"{url!r}: cannot create {path}: {exc}") from exc


def _job_params(job: Job) -> tuple[Any, ...]:
    error = job.error
    progress = job.progress
    return (
        job.id,
        job.function,
        job.kind.value,
        job.status.value,
        job.attempts,
        progress.done,
        progress.failed,
        progress.total,
        None if error is None else error.type,
        None if error is None else error.message,
        job.created_at,
        job.started_at,
        job.finished_at,
        job.owner,
        job.idempotency_key,
        job.request_hash,
        job.result,
        job.result_ref,
    )


def _job(row: tuple[Any, ...]) -> Job:
    (
        id_,
        function,
        kind,
        status,
        attempts,
        done,
        failed,
        total,
        error_type,
        error_message,
        created_at,
        started_at,
        finished_at,
        owner,
        idempotency_key,
        request_hash,
        result,
        result_ref,
    ) = row
    return Job(
        id=id_,
        function=function,
        kind=_KINDS[kind],
        status=_STATUSES[status],
        attempts=attempts,
        progress=Progress(done, failed, total),
        error=None if error_type is None else JobError(error_type, error_message),
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        owner=owner,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        result=result,
        result_ref=result_ref,
    )


class SqliteState:
    """The State port on one SQLite file; see the module docstring."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._notices = LocalNotices()

    async def _transition(self, job_id: str, sql: str, params: Sequence[Any]) -> Job | None:
        rows = await self._db.execute_returning(sql, params)
        if not rows:
            return None
        self._notices.publish(job_id)
        return _job(rows[0])

    async def create_job(self, job: Job) -> tuple[Job, bool]:
        """Store a new job, or return the one stored under the same idempotency key."""
        params = _job_params(job)

        def insert(conn: sqlite3.Connection) -> tuple[Any, bool]:
            if conn.execute(INSERT_JOB_IF_NEW, params).rowcount == 1:
                return None, True
            same_id = conn.execute(SELECT_JOB, (job.id,)).fetchone()
            if same_id is not None:
                return same_id, True  # the same write again
            key = (job.owner, job.function, job.idempotency_key)
            return conn.execute(SELECT_BY_KEY, key).fetchone(), False

        row, created = await self._db.write(insert)
        return (job, True) if row is None else (_job(row), created)

    async def get_job(self, job_id: str) -> Job | None:
        row = self._db.read_one(SELECT_JOB, (job_id,))
        return None if row is None else _job(row)

    async def start_attempt(
        self, job_id: str, delivery: int, task: int = PLAIN, crash_retries: int = 3
    ) -> Attempt | None:
        """Count an attempt of the task as its function starts (see `batchgate.attempts`)."""
        started_at = now()

        def start(conn: sqlite3.Connection) -> Attempt | None:
            job = _active_job(conn, job_id)
            if job is None or (task != PLAIN and conn.execute(SELECT_CHUNK, (job_id, task))
                               .fetchone() is not None):  # fmt: skip
                return None
            before = _attempts(conn, job_id, task)
            verdict, after = attempts.start(before, delivery, crash_retries)
            if verdict is Verdict.STALE:
                return None
            if verdict is Verdict.STARTED:
                _put_attempts(conn, job_id, task, after)
                number = after.started if task == PLAIN else max(job.attempts, after.started)
                row = conn.execute(START_ATTEMPT, (number, started_at, job_id)).fetchone()
                job = _job(row)
            return Attempt.of(job, before, after, verdict)

        attempt: Attempt | None = await self._db.write(start)
        if attempt is not None and attempt.started:
            self._notices.publish(job_id)
        return attempt

    async def requeue(
        self,
        job_id: str,
        attempt: int,
        error: JobError,
        task: int = PLAIN,
        by_function: bool = True,
    ) -> Job | None:
        """Report a failed attempt that will be retried; None if fenced off or terminal."""

        def report(conn: sqlite3.Connection) -> Job | None:
            job = _active_job(conn, job_id)
            if job is None:
                return None
            after = attempts.fail(
                _attempts(conn, job_id, task), attempt, error, by_function=by_function
            )
            if after is None:
                return None
            _put_attempts(conn, job_id, task, after)
            if task != PLAIN:
                return job
            return _job(conn.execute(REQUEUE, (error.type, error.message, job_id)).fetchone())

        job: Job | None = await self._db.write(report)
        if job is not None and task == PLAIN:
            self._notices.publish(job_id)
        return job

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
        params = (
            status.value,
            now(),
            result,
            result_ref,
            None if error is None else error.type,
            None if error is None else error.message,
            job_id,
            attempt,
            attempt,
        )
        return await self._transition(job_id, FINISH, params)

    async def reopen(self, job_id: str) -> Job | None:
        """A failed job back to queued, attempts/error/finish time cleared; else None."""

        def reopen(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(REOPEN, (job_id,)).fetchone()
            if row is None:
                return None
            conn.execute(DELETE_ATTEMPTS, (job_id,))
            return _job(row)

        job: Job | None = await self._db.write(reopen)
        if job is not None:
            self._notices.publish(job_id)
        return job

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job that is not terminal; None if it already is."""
        return await self._transition(job_id, CANCEL, (now(), job_id))

    async def record_chunk(
        self, job_id: str, chunk: int, done: int, failed: int
    ) -> tuple[Progress, bool] | None:
        """Count a finished chunk exactly once (chunk row and progress in one transaction)."""

        def count(conn: sqlite3.Connection) -> tuple[Any, bool] | None:
            counted = conn.execute(INSERT_CHUNK, (job_id, chunk)).rowcount == 1
            query, args = (
                (ADD_PROGRESS, (done, failed, job_id)) if counted else (SELECT_PROGRESS, (job_id,))
            )
            row = conn.execute(query, args).fetchone()
            if row is None:
                # Unknown job: undo the chunk row (the write's savepoint rolls back).
                raise _UnknownJob
            return row, counted

        try:
            row, counted = await self._db.write(count)
        except _UnknownJob:
            return None
        if counted:
            self._notices.publish(job_id)
        return Progress(*row), counted

    def watch(self, job_id: str) -> AbstractAsyncContextManager[Watch]:
        """Subscribe to this process's notices for one job."""
        return self._notices.watch(job_id)

    async def expired_jobs(self, finished_before: float, limit: int) -> list[Job]:
        """Terminal jobs that finished before `finished_before`, oldest first."""
        rows = self._db.read(SELECT_EXPIRED, (finished_before, limit))
        return [_job(row) for row in rows]

    async def delete_jobs(self, job_ids: Sequence[str]) -> None:
        """Delete jobs and their chunk records; unknown ids are ignored."""
        if not job_ids:
            return
        params = [(job_id,) for job_id in job_ids]

        def delete(conn: sqlite3.Connection) -> None:
            conn.executemany(DELETE_CHUNKS, params)
            conn.executemany(DELETE_ATTEMPTS, params)
            conn.executemany(DELETE_JOB, params)

        await self._db.write(delete)

    async def put_manifest(self, data: bytes) -> None:
        """Replace the published function registry."""
        await self._db.execute(PUT_META, (MANIFEST_KEY, data))

    async def get_manifest(self) -> bytes | None:
        row = self._db.read_one(GET_META, (MANIFEST_KEY,))
        return None if row is None else bytes(row[0])

    async def check_health(self) -> None:
        """Fails when the state file's disk is (nearly) full."""
        self._db.check_free_space()

    async def aclose(self) -> None:
        """Close the connection; later calls raise BackendError."""
        self._db.close()


def _active_job(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(SELECT_JOB, (job_id,)).fetchone()
    job = None if row is None else _job(row)
    return None if job is None or job.status.terminal else job


def _attempts(conn: sqlite3.Connection, job_id: str, task: int) -> TaskAttempts:
    row = conn.execute(SELECT_ATTEMPTS, (job_id, task)).fetchone()
    if row is None:
        return TaskAttempts()
    started, failed, delivery, running, error_type, error_message = row
    error = None if error_type is None else JobError(error_type, error_message)
    return TaskAttempts(started, failed, delivery, bool(running), error)


def _put_attempts(conn: sqlite3.Connection, job_id: str, task: int, record: TaskAttempts) -> None:
    error = record.error
    conn.execute(
        PUT_ATTEMPTS,
        (job_id, task, record.started, record.failed, record.delivery, int(record.running),
         None if error is None else error.type, None if error is None else error.message),
    )  # fmt: skip


class _UnknownJob(Exception):
    """Raised inside a write to undo it: the job does not exist."""
