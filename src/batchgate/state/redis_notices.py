"""Job notices over Redis pub/sub: one shared subscriber connection per RedisState.

Each job has a channel `<prefix>job:<id>`. The first watch of a job subscribes its channel
and returns only once Redis has confirmed the subscription, so a notice published after
`watch` is entered cannot be missed; the last watch to leave unsubscribes. Subscribes and
unsubscribes made during one event-loop turn go out in one write.

A background task owns the connection: a reader dispatches messages to the watches'
mailboxes. If the connection drops (or stops answering PING), it reconnects, subscribes
every watched channel again and then wakes every watch, since notices published in the
gap are lost: a lost notice costs a re-read, never a hang.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

from batchgate.errors import BackendError
from batchgate.redis_db import ReplyReader, connect, is_connection_error, pack_command
from batchgate.state.notices import LocalWatch

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

# No traffic for this long and the reader sends a PING; no reply by the next period and
# the connection counts as dead.
PING_INTERVAL_S = 30.0
# How long entering `watch` waits for Redis to confirm the subscription.
SUBSCRIBE_TIMEOUT_S = 10.0
RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 2.0


class RedisNotices:
    """Watches of job channels multiplexed on one pub/sub connection."""

    def __init__(self, connect: Callable[[], AbstractConnection], channel_prefix: str) -> None:
        self._connect = connect
        self._channel_prefix = channel_prefix
        self._watches: dict[bytes, set[LocalWatch]] = {}
        # Channels the connection should be subscribed to -> confirmation of the SUBSCRIBE.
        self._subscribed: dict[bytes, asyncio.Future[None]] = {}
        # Ordered (command, channel) changes not yet written, and the futures of the
        # subscribes written but not yet confirmed, per channel in sending order.
        self._pending: list[tuple[bytes, bytes, asyncio.Future[None] | None]] = []
        self._unconfirmed: dict[bytes, collections.deque[asyncio.Future[None]]] = {}
        self._resubscribing = 0
        self._reconnecting = False
        self._flush_scheduled = False
        # The connection's stream while it is up and subscribed; writes go straight to it.
        self._stream: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[LocalWatch]:
        """Subscribe to a job's channel for the block; returns once Redis confirmed it."""
        if self._closed:
            raise BackendError("redis state is closed")
        self._start()
        channel = (self._channel_prefix + job_id).encode()
        mailbox = LocalWatch()
        watches = self._watches.setdefault(channel, set())
        watches.add(mailbox)
        try:
            confirmed = self._subscribed.get(channel)
            if confirmed is None:
                confirmed = asyncio.get_running_loop().create_future()
                self._subscribed[channel] = confirmed
                self._change(b"SUBSCRIBE", channel, confirmed)
            if not confirmed.done():
                try:
                    async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                        await asyncio.shield(confirmed)
                except TimeoutError:
                    raise BackendError(
                        f"redis did not confirm a subscription within {SUBSCRIBE_TIMEOUT_S} s"
                    ) from None
            yield mailbox
        finally:
            watches.discard(mailbox)
            if not watches and self._watches.get(channel) is watches:
                del self._watches[channel]
                self._subscribed.pop(channel, None)
                self._change(b"UNSUBSCRIBE", channel, None)

    async def aclose(self) -> None:
        """Stop the background task and close the connection."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for confirmed in self._subscribed.values():
            confirmed.cancel()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-notices")
        elif self._task.done():
            exc = None if self._task.cancelled() else self._task.exception()
            raise BackendError(f"the redis notice reader stopped: {exc!r}")

    def _change(
        self, command: bytes, channel: bytes, confirmed: asyncio.Future[None] | None
    ) -> None:
        if self._task is not None and not self._closed:
            self._pending.append((command, channel, confirmed))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self) -> None:
        """Keep a subscribed connection: connect, resubscribe, read, and again on a drop."""
        backoff_s = RECONNECT_MIN_S
        while not self._closed:
            conn = self._connect()
            try:
                await connect(conn)
                self._stream = conn._writer
                self._resubscribe()
                self._reconnecting = True  # from now on, a resubscribe follows a drop
                backoff_s = RECONNECT_MIN_S
                await self._read(conn)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
            finally:
                self._stream = None
                await conn.disconnect()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)

    def _resubscribe(self) -> None:
        """On a new connection: subscribe every wanted channel; changes queued for the
        old connection are covered by it."""
        self._pending.clear()
        self._unconfirmed = {ch: collections.deque([f]) for ch, f in self._subscribed.items()}
        # Wake every watch once these confirmations are in, unless this is the first
        # connection (nothing can have been missed yet).
        self._resubscribing = len(self._subscribed) if self._reconnecting else 0
        if self._subscribed:
            self._send([[b"SUBSCRIBE", *self._subscribed]])

    def _flush(self) -> None:
        """Write the (un)subscribes of this loop turn, merged into as few commands as can be."""
        self._flush_scheduled = False
        if self._stream is None:
            return  # the next connection subscribes to whatever is wanted then
        changes, self._pending = self._pending, []
        commands: list[list[bytes]] = []
        for command, channel, confirmed in changes:
            if confirmed is not None:
                self._unconfirmed.setdefault(channel, collections.deque()).append(confirmed)
            if commands and commands[-1][0] == command:
                commands[-1].append(channel)
            else:
                commands.append([command, channel])
        self._send(commands)

    def _send(self, commands: list[list[bytes]]) -> None:
        # Plain buffered writes, no await: a broken connection shows up in the reader,
        # which reconnects and resubscribes.
        if self._stream is not None:
            self._stream.writelines(chunk for cmd in commands for chunk in pack_command(cmd))

    async def _read(self, conn: AbstractConnection) -> None:
        replies = ReplyReader(conn)
        ping_sent = False
        while True:
            try:
                async with asyncio.timeout(PING_INTERVAL_S):
                    batch = await replies.read()
            except TimeoutError:  # quiet for a whole interval
                if ping_sent:
                    raise ConnectionError(
                        "redis pub/sub connection stopped answering PING"
                    ) from None
                self._send([[b"PING"]])
                ping_sent = True
                continue
            ping_sent = False
            for reply in batch:
                if isinstance(reply, Exception):
                    raise reply
                if not isinstance(reply, list):
                    continue  # +PONG once no channel is subscribed
                kind, channel = reply[0], reply[1]
                if kind == b"message":
                    for mailbox in self._watches.get(channel, ()):
                        mailbox.notify()
                elif kind == b"subscribe":
                    self._confirm(channel)

    def _confirm(self, channel: bytes) -> None:
        queue = self._unconfirmed.get(channel)
        if queue:
            confirmed = queue.popleft()
            if not confirmed.done():
                confirmed.set_result(None)
            if not queue:
                del self._unconfirmed[channel]
        if self._resubscribing:
            self._resubscribing -= 1
            if not self._resubscribing:
                # Resubscribed after a drop: whatever was published meanwhile is lost.
                for watches in self._watches.values():
                    for mailbox in watches:
                        mailbox.notify()
