"""One WAL-mode SQLite file shared by the processes of a host, with group commit.

Used by the embedded queue and state backends. Reads run directly on the event loop's
thread (a few microseconds each). Writes are *group-committed*: every write submitted
during one turn of the event loop runs in a single `BEGIN IMMEDIATE … COMMIT`, each in its
own savepoint so one failing write does not undo the others. A commit costs about ten
times a statement, so under load this multiplies write throughput; a lone write costs the
same as before. A caller's write is visible to it only after the batch has committed.

WAL with synchronous=NORMAL survives a crash or kill -9 of any process; surviving power
loss or an OS crash needs synchronous=FULL (an fsync per commit). SQLite's automatic
checkpoint (every 1000 WAL pages) runs inside a commit, on the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from batchgate.diskspace import check_free_space
from batchgate.errors import BackendError

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5_000

_PRAGMAS = (
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    # RETURNING and IN (subquery) use scratch tables; on disk each would cost a temp file.
    "PRAGMA temp_store = MEMORY",
)

Work = Callable[[sqlite3.Connection], Any]


class SqliteDatabase:
    """A connection, its schema, group-committed writes and background checkpoints."""

    def __init__(self, path: Path, schema: str, label: str) -> None:
        self.path = path
        self.label = label
        self._pending: list[tuple[Work, bool, asyncio.Future[Any]]] = []
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = _connect(path)
            self._transaction(lambda conn: _run_script(conn, schema))
        except sqlite3.Error as exc:
            raise self.error(exc) from exc

    def error(self, exc: BaseException) -> BackendError:
        # SQLite's own messages ("database or disk is full") name no file; OSError's do.
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
        return BackendError(
            f"sqlite {self.label} {str(self.path)!r}: {exc}",
            public=f"the embedded {self.label} database failed: {reason}",
        )

    def check_free_space(self) -> None:
        """Raise BackendError when the file's disk is (nearly) full."""
        check_free_space(self.path.parent, f"embedded {self.label} database")

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Every row of one read statement."""
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self.error(exc) from exc

    def read_one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """The first row of one read statement, or None."""
        try:
            return self._conn.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise self.error(exc) from exc

    async def write(self, work: Work, single_statement: bool = False) -> Any:
        """Run `work(conn)` atomically in the next group commit; returns what it returned.

        `work` must only touch the database (it may run statements and raise to undo them).
        A `single_statement` work skips its savepoint: SQLite undoes a failed statement alone.
        """
        if self._closed:
            raise self.error(RuntimeError("the database is closed"))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((work, single_statement, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """One write statement in the next group commit; returns the rows it changed."""
        return int(await self.write(lambda conn: conn.execute(sql, args).rowcount, True))

    async def execute_returning(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """One write statement with RETURNING in the next group commit; returns its rows."""
        rows: list[Any] = await self.write(lambda conn: conn.execute(sql, args).fetchall(), True)
        return rows

    def close(self) -> None:
        self._closed = True
        for _, _, future in self._pending:
            if not future.done():
                future.set_exception(self.error(RuntimeError("database closed")))
        self._pending = []
        self._conn.close()

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        batch = [entry for entry in batch if not entry[2].cancelled()]
        if not batch:
            return
        conn = self._conn
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for work, single_statement, future in batch:
                if not single_statement:
                    conn.execute("SAVEPOINT op")
                try:
                    result = work(conn)
                except Exception as exc:
                    if not single_statement:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                    failed = self.error(exc) if isinstance(exc, sqlite3.Error) else exc
                    outcomes.append((future, None, failed))
                else:
                    if not single_statement:
                        conn.execute("RELEASE op")
                    outcomes.append((future, result, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = self.error(exc)
            outcomes = [(future, None, failure) for _, _, future in batch]
        for future, result, error in outcomes:
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def _transaction(self, work: Work) -> Any:
        """Run `work` in its own write transaction now (setup and rare maintenance)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        # Switching a new file to WAL takes an exclusive lock without calling the busy
        # handler, so processes opening a new file at once retry here themselves.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                for pragma in _PRAGMAS:
                    conn.execute(pragma)
                return conn
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)  # runs once per open, before the loop uses this file
    except BaseException:
        conn.close()
        raise


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would commit the open transaction; run the DDL one statement at a time
    # so that processes creating a new file at once create the schema once.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)
