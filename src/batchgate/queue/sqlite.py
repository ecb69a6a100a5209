"""SQLite Queue: the embedded default, one WAL-mode file shared by the processes of a host.

Reads run on the event loop's thread; writes are group-committed (see
`batchgate.sqlite_db`): every put, claim, ack and heartbeat made during one loop turn
shares one `BEGIN IMMEDIATE` transaction, so claims are atomic across processes.

A waiting `receive` wakes at once for puts made through the same SqliteQueue instance, and
polls (50 ms backing off to 250 ms) for puts made by other processes or instances.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from batchgate.errors import BackendError
from batchgate.queue.base import DeadLetter, Delivery, QueueDepth, check_receive_args, wait_set
from batchgate.sqlite_db import SqliteDatabase
from batchgate.urls import local_path

__all__ = ["SqliteQueue", "open"]

T = TypeVar("T")

POLL_MIN_S = 0.05
POLL_MAX_S = 0.25

# `seq` is the rowid: it orders messages FIFO-ish, and receipts name it, so every fenced
# call finds its row by rowid. `id` is the public random id; nothing looks a live message
# up by id, so it has no index (one fewer random page write per put). A leased message's
# visible_at equals its leased_until, so one index on visible_at finds both ready
# messages and lapsed leases.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL,
    body         BLOB NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 0,
    visible_at   REAL NOT NULL,
    lease_token  TEXT,
    leased_until REAL,
    enqueued_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_visible_at ON messages (visible_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq        INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    body       BLOB NOT NULL,
    attempts   INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    failed_at  REAL NOT NULL
);
"""

_PUT = "INSERT INTO messages (id, body, visible_at, enqueued_at) VALUES (?, ?, ?, ?)"

# ?1 token, ?2 leased_until, ?3 now, ?4 limit
_CLAIM = """
UPDATE messages SET attempt = attempt + 1, lease_token = ?1, leased_until = ?2, visible_at = ?2
WHERE seq IN (SELECT seq FROM messages WHERE visible_at <= ?3 ORDER BY visible_at, seq LIMIT ?4)
RETURNING seq, id, body, attempt
"""

_EARLIEST = "SELECT min(visible_at) FROM messages"

# The fence: the caller's token is the row's current one and its lease has not lapsed.
# ?1 seq, ?2 token, ?3 now
_FENCE = "seq = ?1 AND lease_token = ?2 AND leased_until > ?3"

_ACK = f"DELETE FROM messages WHERE {_FENCE}"

_EXTEND = f"UPDATE messages SET leased_until = ?4, visible_at = ?4 WHERE {_FENCE}"

_RETRY = (
    f"UPDATE messages SET lease_token = NULL, leased_until = NULL, visible_at = ?4 WHERE {_FENCE}"
)

_TAKE_FOR_DEAD = f"DELETE FROM messages WHERE {_FENCE} RETURNING id, body, attempt"

_PUT_DEAD = (
    "INSERT INTO dead_letters (message_id, body, attempts, reason, failed_at)"
    " VALUES (?, ?, ?, ?, ?)"
)

_RELEASE_ALL = """
UPDATE messages
SET attempt = max(attempt - 1, 0), lease_token = NULL, leased_until = NULL, visible_at = ?1
WHERE lease_token IS NOT NULL
"""

# Index-only counts where possible: a full scan would read every body.
_DEPTH = """
SELECT
    (SELECT count(*) FROM messages WHERE visible_at <= ?1),
    (SELECT count(*) FROM messages WHERE visible_at > ?1 AND lease_token IS NOT NULL),
    (SELECT count(*) FROM messages WHERE visible_at > ?1 AND lease_token IS NULL),
    (SELECT count(*) FROM dead_letters)
"""

_LIST_DEAD = (
    "SELECT message_id, body, attempts, reason, failed_at FROM dead_letters ORDER BY seq LIMIT ?"
)

# ?1 now, ?2 JSON array of ids, or NULL for every dead letter
_CHOSEN_DEAD = "(?2 IS NULL OR message_id IN (SELECT value FROM json_each(?2)))"

_REDRIVE = f"""
INSERT INTO messages (id, body, visible_at, enqueued_at)
SELECT message_id, body, ?1, ?1 FROM dead_letters WHERE {_CHOSEN_DEAD} ORDER BY seq
"""

_DROP_DEAD = f"DELETE FROM dead_letters WHERE {_CHOSEN_DEAD}"


class SqliteQueue:
    """A Queue in one SQLite file; several processes on one host may share the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = SqliteDatabase(path, _SCHEMA, "queue")
        self._wakeup = asyncio.Event()

    async def put(self, bodies: Sequence[bytes], delay_s: float = 0.0) -> list[str]:
        """Enqueue messages atomically (all or none); returns their ids."""
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        if not bodies:
            return []
        now = time.time()
        ids = [secrets.token_urlsafe(12) for _ in bodies]
        rows = [(mid, body, now + delay_s, now) for mid, body in zip(ids, bodies, strict=True)]
        await self._db.write(lambda conn: conn.executemany(_PUT, rows))
        self._wakeup.set()
        return ids

    async def receive(self, max_messages: int, wait_s: float, lease_s: float) -> list[Delivery]:
        """Lease up to `max_messages` ready messages, blocking up to `wait_s` for the first."""
        check_receive_args(max_messages, wait_s, lease_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        poll_s = POLL_MIN_S
        while True:
            self._wakeup.clear()
            # A read first: an empty claim would still cost a write transaction.
            earliest = self._db.read_one(_EARLIEST)[0]
            now = time.time()
            if earliest is not None and earliest <= now:
                deliveries = await self._claim(max_messages, lease_s)
                if deliveries:
                    return deliveries
                continue  # another consumer took them; look again
            # Sleep until a wakeup from this instance, the next delayed message or lapsing
            # lease is due, or the next poll for other processes' puts; then look again.
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                return []
            timeout_s = min(remaining_s, poll_s)
            if earliest is not None:
                timeout_s = min(timeout_s, earliest - now)
            if await wait_set(self._wakeup, timeout_s):
                poll_s = POLL_MIN_S
            else:
                poll_s = min(poll_s * 2, POLL_MAX_S)

    async def ack(self, delivery: Delivery) -> bool:
        """Delete a message for good, only while the caller still holds its lease."""
        fence = _fence_args(delivery)
        return fence is not None and await self._db.execute(_ACK, fence) == 1

    async def extend(self, delivery: Delivery, lease_s: float) -> bool:
        """Renew the lease for `lease_s` seconds from now (a heartbeat)."""
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        fence = _fence_args(delivery)
        return (
            fence is not None and await self._db.execute(_EXTEND, (*fence, fence[2] + lease_s)) == 1
        )

    async def retry(self, delivery: Delivery, delay_s: float) -> bool:
        """Give the message back, deliverable again after `delay_s` seconds."""
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        fence = _fence_args(delivery)
        if fence is None or await self._db.execute(_RETRY, (*fence, fence[2] + delay_s)) != 1:
            return False
        self._wakeup.set()
        return True

    async def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        """Move the message to the dead-letter set with a reason."""
        fence = _fence_args(delivery)
        if fence is None:
            return False

        def move(conn: sqlite3.Connection) -> bool:
            taken = conn.execute(_TAKE_FOR_DEAD, fence).fetchall()
            if not taken:
                return False
            [(message_id, body, attempt)] = taken
            conn.execute(_PUT_DEAD, (message_id, body, attempt, reason, time.time()))
            return True

        return bool(await self._db.write(move))

    async def release_all(self) -> int:
        """Make every leased message ready at once, not counting the lost attempt."""
        released: int = await self._db.execute(_RELEASE_ALL, (time.time(),))
        if released:
            self._wakeup.set()
        return released

    async def depth(self) -> QueueDepth:
        """Counts of ready, leased, delayed and dead messages."""
        row = self._db.read_one(_DEPTH, (time.time(),))
        return QueueDepth(*row)

    async def list_dead(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        return [DeadLetter(*row) for row in self._db.read(_LIST_DEAD, (limit,))]

    async def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        """Move dead letters (all, or the named ones) back to ready with attempts reset."""
        args = (time.time(), None if message_ids is None else json.dumps(list(message_ids)))

        def move(conn: sqlite3.Connection) -> int:
            moved = conn.execute(_REDRIVE, args).rowcount
            conn.execute(_DROP_DEAD, args)
            return moved

        moved = int(await self._db.write(move))
        if moved:
            self._wakeup.set()
        return moved

    async def check_health(self) -> None:
        """Fails when the queue file's disk is (nearly) full."""
        self._db.check_free_space()

    async def aclose(self) -> None:
        """Close the connection; waiting receives then fail with BackendError."""
        self._db.close()
        self._wakeup.set()

    async def _claim(self, max_messages: int, lease_s: float) -> list[Delivery]:
        now = time.time()
        token = secrets.token_urlsafe(12)
        args = (token, now + lease_s, now, max_messages)
        rows = await self._db.execute_returning(_CLAIM, args)
        rows.sort()  # RETURNING order is unspecified; seq order is FIFO-ish
        return [Delivery(mid, body, attempt, f"{seq}:{token}") for seq, mid, body, attempt in rows]


def _fence_args(delivery: Delivery) -> tuple[int, str, float] | None:
    """(seq, lease token, now) from a receipt "seq:token", or None for a malformed one."""
    seq, _, token = delivery.receipt.partition(":")
    try:
        return int(seq), token, time.time()
    except ValueError:
        return None


async def open(url: str) -> SqliteQueue:
    """Open (creating if needed) the queue in the file named by `sqlite:///path.db`."""
    path = local_path(url)
    try:
        return SqliteQueue(path)
    except OSError as exc:
        raise BackendError(
            f"cannot open sqlite queue {str(path)!r}: {exc}",
            public=f"the embedded queue could not be opened: {os.strerror(exc.errno or 0)}",
        ) from exc
