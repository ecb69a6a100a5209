"""Redis Queue: a stream with one consumer group, leases fenced by token, in Lua.

`redis://host:port/db?prefix=…` (or `rediss://`); keys under `<prefix>q:`:

- `stream`: ready and leased messages, fields `i` (message id), `b` (body), `a` (attempts
  before this entry). Consumer group `batchgate`; a leased message is in its pending list.
- `leases`: hash, stream entry id -> "attempt token" of the current lease.
- `expiry`: sorted set, stream entry id -> lease end (ms, Redis clock).
- `delayed`: sorted set of "attempt|id|body" by visible time; due ones move to the stream.
- `dead`, `dead_ids`: dead-letter stream (fields `i b a r t`) and message id -> its entry.

Lapsed leases are found in `expiry`, not by XAUTOCLAIM's idle time: each delivery has a
lease of its own length, renewed by heartbeats, which one min-idle-time cannot express.

`receive` leases in one Lua call (due delayed messages, lapsed leases, new entries), then
blocks in XREADGROUP for new entries, at most until the next delay or lease is due (or
`POLL_MAX_S`, for delays and leases written meanwhile). An entry a blocking read handed
to a client that vanished before leasing it is an orphan, re-delivered by a periodic scan.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from batchgate.queue import redis_lua
from batchgate.queue.base import DeadLetter, Delivery, QueueDepth, check_receive_args
from batchgate.redis_db import (
    LuaScript,
    PipelinedClient,
    client,
    has_error_code,
    split_url,
    translate,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.typing import KeyT, StreamIdT

__all__ = ["RedisQueue", "open"]

# Stream entries as redis-py parses them: (entry id, {field: value}).
_Entries = list[tuple[bytes, dict[bytes, bytes]]]

PUT = LuaScript.of(redis_lua.PUT)
CLAIM = LuaScript.of(redis_lua.CLAIM)
LEASE = LuaScript.of(redis_lua.LEASE)
ACK = LuaScript.of(redis_lua.ACK)
EXTEND = LuaScript.of(redis_lua.EXTEND)
RETRY = LuaScript.of(redis_lua.RETRY)
DEAD_LETTER = LuaScript.of(redis_lua.DEAD_LETTER)
RELEASE_ALL = LuaScript.of(redis_lua.RELEASE_ALL)
DEPTH = LuaScript.of(redis_lua.DEPTH)
REDRIVE = LuaScript.of(redis_lua.REDRIVE)
SCRIPTS = (PUT, CLAIM, LEASE, ACK, EXTEND, RETRY, DEAD_LETTER, RELEASE_ALL, DEPTH, REDRIVE)

GROUP = "batchgate"
# One consumer name for every client: leases, not consumers, say who holds a message.
CONSUMER = "batchgate"
# A string value is at most 512 MB (https://redis.io/docs/latest/develop/data-types/strings/).
MAX_BODY_BYTES = 512 * 1024 * 1024
# Longest single XREADGROUP BLOCK: bounds the wait for delays and leases set meanwhile.
POLL_MAX_S = 1.0
# A pending entry idle this long without a lease is an orphan (the lease step follows the
# blocking read within milliseconds).
ORPHAN_IDLE_S = 10.0
ORPHAN_SCAN_INTERVAL_S = 5.0
ORPHAN_SCAN_COUNT = 100
# Bounds on the work one Lua call does, so Redis is never blocked for long.
PROMOTE_BATCH = 1000
PUT_BATCH = 1000
REDRIVE_BATCH = 1000


class RedisQueue:
    """A Queue on one Redis database; any number of processes and hosts may share it."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        # Blocking reads and MULTI go through redis-py's pool, everything else is pipelined.
        self._redis = redis
        self._mux = PipelinedClient(redis.connection_pool)
        self.prefix = prefix
        base = prefix + "q:"
        self._stream = base + "stream"
        self._leases = base + "leases"
        self._expiry = base + "expiry"
        self._delayed = base + "delayed"
        self._dead = base + "dead"
        self._dead_ids = base + "dead_ids"
        self._lease_keys = [self._stream, self._leases, self._expiry]
        # Tunable for tests of orphan recovery.
        self.orphan_idle_s = ORPHAN_IDLE_S
        self.orphan_scan_interval_s = ORPHAN_SCAN_INTERVAL_S
        self._orphan_scan_at = 0.0

    @translate("queue")
    async def put(self, bodies: Sequence[bytes], delay_s: float = 0.0) -> list[str]:
        """Enqueue messages atomically (all or none); returns their ids."""
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        for body in bodies:
            if len(body) > MAX_BODY_BYTES:
                raise ValueError(f"a message body is at most {MAX_BODY_BYTES} bytes")
        ids = [secrets.token_urlsafe(12) for _ in bodies]
        keys = [self._stream, self._delayed]
        batches: list[list[Any]] = []
        for start in range(0, len(bodies), PUT_BATCH):
            args: list[Any] = [math.ceil(delay_s * 1000)]
            chunk = bodies[start : start + PUT_BATCH]
            for message_id, body in zip(ids[start : start + PUT_BATCH], chunk, strict=True):
                args += (message_id, body)
            batches.append(args)
        if len(batches) == 1:
            await self._mux.run_script(PUT, keys, batches[0])
        elif batches:
            # MULTI/EXEC keeps a large put all-or-none across its Lua calls (EVAL, not
            # EVALSHA: a script missing inside MULTI would fail alone, not the whole).
            async with self._redis.pipeline(transaction=True) as pipe:
                for args in batches:
                    pipe.eval(PUT.source, len(keys), *keys, *args)
                await pipe.execute()
        return ids

    @translate("queue")
    async def receive(self, max_messages: int, wait_s: float, lease_s: float) -> list[Delivery]:
        """Lease up to `max_messages` ready messages, blocking up to `wait_s` for the first."""
        check_receive_args(max_messages, wait_s, lease_s)
        lease_ms = max(1, math.ceil(lease_s * 1000))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            next_due_ms, deliveries = await self._claim_ready(max_messages, lease_ms)
            if deliveries:
                return deliveries
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                return []
            block_s = min(remaining_s, POLL_MAX_S)
            if next_due_ms >= 0:
                block_s = min(block_s, next_due_ms / 1000)
            deliveries = await self._wait_new(max_messages, lease_ms, block_s)
            if deliveries:
                return deliveries

    @translate("queue")
    async def ack(self, delivery: Delivery) -> bool:
        """Delete a message for good, only while the caller still holds its lease."""
        return await self._fenced(ACK, delivery)

    @translate("queue")
    async def extend(self, delivery: Delivery, lease_s: float) -> bool:
        """Renew the lease for `lease_s` seconds from now (a heartbeat)."""
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        return await self._fenced(EXTEND, delivery, CONSUMER, max(1, math.ceil(lease_s * 1000)))

    @translate("queue")
    async def retry(self, delivery: Delivery, delay_s: float) -> bool:
        """Give the message back, deliverable again after `delay_s` seconds."""
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        delay_ms = math.ceil(delay_s * 1000)
        return await self._fenced(RETRY, delivery, delay_ms, keys=[self._delayed])

    @translate("queue")
    async def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        """Move the message to the dead-letter set with a reason."""
        keys = [self._dead, self._dead_ids]
        return await self._fenced(DEAD_LETTER, delivery, reason, keys=keys)

    @translate("queue")
    async def release_all(self) -> int:
        """Make every leased message ready at once, not counting the lost attempt."""
        return int(await self._mux.run_script(RELEASE_ALL, [self._leases, self._expiry], []))

    @translate("queue")
    async def depth(self) -> QueueDepth:
        """Counts of ready, leased, delayed and dead messages."""
        keys = [self._stream, self._expiry, self._delayed, self._dead]
        counts = await self._with_group(DEPTH, keys, [GROUP])
        return QueueDepth(*(int(count) for count in counts))

    @translate("queue")
    async def list_dead(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        entries = await self._mux.execute("XRANGE", self._dead, "-", "+", "COUNT", limit)
        dead = []
        for _, flat in entries:
            f = dict(zip(flat[::2], flat[1::2], strict=True))
            dead.append(
                DeadLetter(
                    message_id=f[b"i"].decode(),
                    body=f[b"b"],
                    attempts=int(f[b"a"]),
                    reason=f[b"r"].decode(),
                    failed_at=float(f[b"t"]),
                )
            )
        return dead

    @translate("queue")
    async def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        """Move dead letters (all, or the named ones) back to ready with attempts reset."""
        keys = [self._stream, self._dead, self._dead_ids]
        if message_ids is not None:
            return int(await self._mux.run_script(REDRIVE, keys, ["some", 0, *message_ids]))
        moved = 0
        while True:
            batch = int(await self._mux.run_script(REDRIVE, keys, ["all", REDRIVE_BATCH]))
            moved += batch
            if batch < REDRIVE_BATCH:
                return moved

    async def check_health(self) -> None:
        """Nothing to check beyond answering (depth and reads show that)."""

    async def aclose(self) -> None:
        """Close the connections; later calls raise BackendError."""
        await self._mux.aclose()
        await self._redis.aclose()

    async def ping(self) -> None:
        await self._redis.ping()

    async def load_scripts(self) -> None:
        """Load every script into Redis in one round trip (else each loads on first use)."""
        await asyncio.gather(*(self._mux.execute("SCRIPT", "LOAD", s.source) for s in SCRIPTS))

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group unless they exist."""
        try:
            await self._mux.execute("XGROUP", "CREATE", self._stream, GROUP, "0", "MKSTREAM")
        except Exception as exc:
            if not has_error_code(exc, "BUSYGROUP"):
                raise

    async def _with_group(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        """Run a script that needs the consumer group, recreating it once if it is gone
        (a Redis restart without persistence, a FLUSHDB)."""
        try:
            return await self._mux.run_script(script, keys, args)
        except Exception as exc:
            if not has_error_code(exc, "NOGROUP"):
                raise
        await self.ensure_group()
        return await self._mux.run_script(script, keys, args)

    async def _claim_ready(self, max_messages: int, lease_ms: int) -> tuple[int, list[Delivery]]:
        token = secrets.token_urlsafe(12)
        orphan_idle_ms = 0
        if time.monotonic() >= self._orphan_scan_at:
            self._orphan_scan_at = time.monotonic() + self.orphan_scan_interval_s
            orphan_idle_ms = max(1, math.ceil(self.orphan_idle_s * 1000))
        args = [max_messages, lease_ms, token, GROUP, CONSUMER, orphan_idle_ms]
        args += [PROMOTE_BATCH, ORPHAN_SCAN_COUNT]
        keys = [*self._lease_keys, self._delayed]
        reply = await self._with_group(CLAIM, keys, args)
        next_due_ms = int(reply[0])
        deliveries = [
            Delivery(
                message_id=reply[i + 1].decode(),
                body=reply[i + 2],
                attempt=int(reply[i + 3]),
                receipt=f"{reply[i].decode()} {int(reply[i + 3])} {token}",
            )
            for i in range(1, len(reply), 4)
        ]
        return next_due_ms, deliveries

    async def _wait_new(self, max_messages: int, lease_ms: int, block_s: float) -> list[Delivery]:
        """Block in XREADGROUP for new entries, then lease what it hands over."""
        block_ms = max(1, math.ceil(block_s * 1000))  # BLOCK 0 would wait forever
        streams: dict[KeyT, StreamIdT] = {self._stream: ">"}
        task = asyncio.current_task()
        cancelling = 0 if task is None else task.cancelling()
        try:
            reply = cast(
                "list[tuple[bytes, _Entries]]",
                await self._redis.xreadgroup(
                    GROUP, CONSUMER, streams, count=max_messages, block=block_ms
                ),
            )
        except Exception as exc:
            if not has_error_code(exc, "NOGROUP"):
                raise
            await self.ensure_group()
            return []
        finally:
            # redis-py 8.1 can swallow a cancellation that lands while it sets up a pooled
            # connection; honour it here (what the read got is recovered as an orphan).
            if task is not None and task.cancelling() > cancelling:
                raise asyncio.CancelledError
        if not reply:
            return []
        [(_, entries)] = reply
        token = secrets.token_urlsafe(12)
        args: list[Any] = [lease_ms, token, GROUP, CONSUMER]
        for sid, f in entries:
            args += (sid, f[b"a"])
        leased = set(await self._mux.run_script(LEASE, self._lease_keys, args))
        deliveries = []
        for sid, f in entries:
            if sid in leased:
                attempt = int(f[b"a"]) + 1
                receipt = f"{sid.decode()} {attempt} {token}"
                deliveries.append(Delivery(f[b"i"].decode(), f[b"b"], attempt, receipt))
        return deliveries

    async def _fenced(
        self, script: LuaScript, delivery: Delivery, *extra: Any, keys: Sequence[str] = ()
    ) -> bool:
        sid, _, lease = delivery.receipt.partition(" ")
        if not lease:
            return False
        args = [sid, lease, GROUP, *extra]
        return bool(await self._mux.run_script(script, [*self._lease_keys, *keys], args))


@translate("queue")
async def open(url: str) -> RedisQueue:
    """Open the queue at `redis://host:port/db?prefix=…`, creating its group if needed."""
    plain, prefix, _ = split_url(url, frozenset())
    queue = RedisQueue(client(plain), prefix)
    try:
        # The PING also warms redis-py's pool, which the blocking reads use.
        await asyncio.gather(queue.ensure_group(), queue.load_scripts(), queue.ping())
    except BaseException:
        await queue.aclose()
        raise
    return queue
