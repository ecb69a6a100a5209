"""Job state in a SQLite file (`sqlite:///relative.db`, `sqlite:////absolute.db`).

The embedded default. WAL mode with synchronous=NORMAL: a committed transition survives a
crash of any process; surviving power loss would need synchronous=FULL. Several processes
may open the same file; each transition is one compare-and-set statement (or one
BEGIN IMMEDIATE transaction), so they stay exactly-once across processes.

Calls run synchronously on the event loop thread. Each is one short statement on a local
file (tens of µs); a hop to a worker thread costs more than that, and one connection
serializes the calls anyway. The loop blocks longer only while another process holds the
write lock (up to BUSY_TIMEOUT_MS; WAL keeps those holds short), and in the commit that
runs SQLite's automatic checkpoint (every ~1000 pages written; it waits for fsync).

Notices are in-process (`LocalNotices`): a waiter in another process on the same file
hears nothing, so callers re-read the job at a slow interval as a safety net.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

from batchgate.errors import BackendError, ConfigError
from batchgate.models import FunctionKind, Job, JobError, JobStatus, Progress, now
from batchgate.state.base import Watch
from batchgate.state.notices import LocalNotices
from batchgate.urls import local_path

# RETURNING arrived in SQLite 3.35 (https://sqlite.org/lang_returning.html).
MIN_SQLITE_VERSION = (3, 35, 0)
BUSY_TIMEOUT_MS = 5_000
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
START_ATTEMPT = (
    "UPDATE jobs SET status = 'running', attempts = ?, started_at = COALESCE(started_at, ?) "
    f"WHERE id = ? AND {ACTIVE} AND attempts <= ? RETURNING {COLUMNS}"
)
REQUEUE = (
    "UPDATE jobs SET status = 'queued', error_type = ?, error_message = ? "
    f"WHERE id = ? AND {ACTIVE} AND attempts = ? RETURNING {COLUMNS}"
)
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
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{url!r}: cannot create {path.parent}: {exc}") from exc
    try:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise BackendError(f"cannot open SQLite state {str(path)!r}: {exc}") from exc
    state = SqliteState(db)
    try:
        state._setup()
    except BaseException:
        db.close()
        raise
    return state


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


def _backend_error(exc: sqlite3.Error) -> BackendError:
    return BackendError(f"SQLite state: {exc}")


class SqliteState:
    """The State port on one SQLite connection; see the module docstring."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._notices = LocalNotices()

    def _setup(self) -> None:
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._immediate() as db:
                # executescript() would commit our transaction first; run the DDL one by one
                # so that processes opening a new file at once create the schema once.
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
        except sqlite3.Error as exc:
            raise _backend_error(exc) from exc

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front, so a read-modify-write cannot interleave."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if db.in_transaction:  # the body may have rolled back itself
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _backend_error(exc) from exc

    def _one(self, sql: str, params: Sequence[Any]) -> Any:
        try:
            return self._db.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise _backend_error(exc) from exc

    def _transition(self, job_id: str, sql: str, params: Sequence[Any]) -> Job | None:
        row = self._one(sql, params)
        if row is None:
            return None
        self._notices.publish(job_id)
        return _job(row)

    async def create_job(self, job: Job) -> tuple[Job, bool]:
        """Store a new job, or return the one stored under the same idempotency key."""
        params = _job_params(job)
        if job.idempotency_key is None:
            try:
                self._db.execute(INSERT_JOB, params)
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"job id {job.id!r} is already stored") from exc
            except sqlite3.Error as exc:
                raise _backend_error(exc) from exc
            return job, True
        with self._immediate() as db:
            if db.execute(INSERT_JOB_IF_NEW, params).rowcount == 1:
                return job, True
            row = db.execute(
                SELECT_BY_KEY, (job.owner, job.function, job.idempotency_key)
            ).fetchone()
        if row is None:
            raise ValueError(f"job id {job.id!r} is already stored")
        return _job(row), False

    async def get_job(self, job_id: str) -> Job | None:
        row = self._one(SELECT_JOB, (job_id,))
        return None if row is None else _job(row)

    async def start_attempt(self, job_id: str, attempt: int) -> Job | None:
        """Mark the job running under `attempt`; None if it is terminal or `attempt` is stale."""
        return self._transition(job_id, START_ATTEMPT, (attempt, now(), job_id, attempt))

    async def requeue(self, job_id: str, attempt: int, error: JobError) -> Job | None:
        """Back to queued with the attempt's error; None if fenced off or terminal."""
        return self._transition(job_id, REQUEUE, (error.type, error.message, job_id, attempt))

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
        return self._transition(job_id, FINISH, params)

    async def reopen(self, job_id: str) -> Job | None:
        """A failed job back to queued, attempts/error/finish time cleared; else None."""
        return self._transition(job_id, REOPEN, (job_id,))

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job that is not terminal; None if it already is."""
        return self._transition(job_id, CANCEL, (now(), job_id))

    async def record_chunk(
        self, job_id: str, chunk: int, done: int, failed: int
    ) -> tuple[Progress, bool] | None:
        """Count a finished chunk exactly once (chunk row and progress in one transaction)."""
        with self._immediate() as db:
            counted = db.execute(INSERT_CHUNK, (job_id, chunk)).rowcount == 1
            if counted:
                row = db.execute(ADD_PROGRESS, (done, failed, job_id)).fetchone()
                if row is None:
                    # Unknown job: leave no orphan chunk row behind.
                    db.execute("ROLLBACK")
                    return None
            else:
                row = db.execute(SELECT_PROGRESS, (job_id,)).fetchone()
                if row is None:
                    return None
        if counted:
            self._notices.publish(job_id)
        return Progress(*row), counted

    def watch(self, job_id: str) -> AbstractAsyncContextManager[Watch]:
        """Subscribe to this process's notices for one job."""
        return self._notices.watch(job_id)

    async def expired_jobs(self, finished_before: float, limit: int) -> list[Job]:
        """Terminal jobs that finished before `finished_before`, oldest first."""
        try:
            rows = self._db.execute(SELECT_EXPIRED, (finished_before, limit)).fetchall()
        except sqlite3.Error as exc:
            raise _backend_error(exc) from exc
        return [_job(row) for row in rows]

    async def delete_jobs(self, job_ids: Sequence[str]) -> None:
        """Delete jobs and their chunk records; unknown ids are ignored."""
        if not job_ids:
            return
        params = [(job_id,) for job_id in job_ids]
        with self._immediate() as db:
            db.executemany(DELETE_CHUNKS, params)
            db.executemany(DELETE_JOB, params)

    async def put_manifest(self, data: bytes) -> None:
        """Replace the published function registry."""
        self._one(PUT_META, (MANIFEST_KEY, data))

    async def get_manifest(self) -> bytes | None:
        row = self._one(GET_META, (MANIFEST_KEY,))
        return None if row is None else bytes(row[0])

    async def aclose(self) -> None:
        """Close the connection; later calls raise BackendError."""
        self._db.close()
