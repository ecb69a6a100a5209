"""In-memory Queue: the SQLite backend's twin for tests, one process, nothing persisted."""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import secrets
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from batchgate.errors import BackendError, ConfigError
from batchgate.queue.base import DeadLetter, Delivery, QueueDepth, check_receive_args, wait_set

__all__ = ["MemoryQueue", "open"]


@dataclasses.dataclass(slots=True)
class _Message:
    id: str
    body: bytes
    seq: int
    visible_at: float = 0.0
    attempt: int = 0
    lease_token: str | None = None
    leased_until: float = 0.0
    # Bumped on every reschedule; heap entries with an older version are stale.
    version: int = 0


class MemoryQueue:
    """A Queue held in this process's memory; every instance is a separate, empty queue.

    Leases and delays use the monotonic clock; dead letters' `failed_at` is wall time.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._messages: dict[str, _Message] = {}
        # (visible_at, seq, id, version): the next message to become deliverable on top.
        self._schedule: list[tuple[float, int, str, int]] = []
        self._dead: dict[str, DeadLetter] = {}  # insertion order is oldest first
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._closed = False

    async def put(self, bodies: Sequence[bytes], delay_s: float = 0.0) -> list[str]:
        """Enqueue messages atomically (all or none); returns their ids."""
        self._check_open()
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        visible_at = time.monotonic() + delay_s
        messages = [_Message(secrets.token_urlsafe(12), bytes(body), 0) for body in bodies]
        for message in messages:
            message.seq = next(self._seq)
            self._messages[message.id] = message
            self._reschedule(message, visible_at)
        self._wakeup.set()
        return [message.id for message in messages]

    async def receive(self, max_messages: int, wait_s: float, lease_s: float) -> list[Delivery]:
        """Lease up to `max_messages` ready messages, blocking up to `wait_s` for the first."""
        check_receive_args(max_messages, wait_s, lease_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            self._check_open()
            self._wakeup.clear()
            deliveries = self._claim(max_messages, lease_s)
            if deliveries:
                return deliveries
            timeout_s = deadline - loop.time()
            if timeout_s <= 0:
                return []
            earliest = self._earliest()
            if earliest is not None:
                timeout_s = min(timeout_s, earliest - time.monotonic())
            await wait_set(self._wakeup, timeout_s)

    async def ack(self, delivery: Delivery) -> bool:
        """Delete a message for good, only while the caller still holds its lease."""
        message = self._leased(delivery)
        if message is None:
            return False
        del self._messages[message.id]
        return True

    async def extend(self, delivery: Delivery, lease_s: float) -> bool:
        """Renew the lease for `lease_s` seconds from now (a heartbeat)."""
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        message = self._leased(delivery)
        if message is None:
            return False
        message.leased_until = time.monotonic() + lease_s
        self._reschedule(message, message.leased_until)
        return True

    async def retry(self, delivery: Delivery, delay_s: float) -> bool:
        """Give the message back, deliverable again after `delay_s` seconds."""
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        message = self._leased(delivery)
        if message is None:
            return False
        message.lease_token = None
        self._reschedule(message, time.monotonic() + delay_s)
        self._wakeup.set()
        return True

    async def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        """Move the message to the dead-letter set with a reason."""
        message = self._leased(delivery)
        if message is None:
            return False
        del self._messages[message.id]
        self._dead[message.id] = DeadLetter(
            message.id, message.body, message.attempt, reason, time.time()
        )
        return True

    async def release_all(self) -> int:
        """Make every leased message ready at once, not counting the lost attempt."""
        self._check_open()
        now = time.monotonic()
        released = 0
        for message in self._messages.values():
            if message.lease_token is not None:
                message.lease_token = None
                message.attempt = max(message.attempt - 1, 0)
                self._reschedule(message, now)
                released += 1
        if released:
            self._wakeup.set()
        return released

    async def depth(self) -> QueueDepth:
        """Counts of ready, leased, delayed and dead messages."""
        self._check_open()
        now = time.monotonic()
        ready = in_flight = delayed = 0
        for message in self._messages.values():
            if message.visible_at <= now:
                ready += 1
            elif message.lease_token is not None:
                in_flight += 1
            else:
                delayed += 1
        return QueueDepth(ready, in_flight, delayed, len(self._dead))

    async def list_dead(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        self._check_open()
        return list(itertools.islice(self._dead.values(), limit))

    async def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        """Move dead letters (all, or the named ones) back to ready with attempts reset."""
        self._check_open()
        wanted = None if message_ids is None else set(message_ids)
        chosen = [mid for mid in self._dead if wanted is None or mid in wanted]
        now = time.monotonic()
        for mid in chosen:
            dead = self._dead.pop(mid)
            message = _Message(mid, dead.body, next(self._seq))
            self._messages[mid] = message
            self._reschedule(message, now)
        if chosen:
            self._wakeup.set()
        return len(chosen)

    async def check_health(self) -> None:
        """Fails once the queue is closed."""
        self._check_open()

    async def aclose(self) -> None:
        """Close the queue; waiting receives fail with BackendError."""
        self._closed = True
        self._wakeup.set()

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"memory queue {self.name!r} is closed")

    def _reschedule(self, message: _Message, visible_at: float) -> None:
        message.visible_at = visible_at
        message.version += 1
        heapq.heappush(self._schedule, (visible_at, message.seq, message.id, message.version))

    def _earliest(self) -> float | None:
        """When the next message becomes deliverable (past for one that is ready now)."""
        schedule = self._schedule
        while schedule:
            visible_at, _, mid, version = schedule[0]
            message = self._messages.get(mid)
            if message is not None and message.version == version:
                return visible_at
            heapq.heappop(schedule)
        return None

    def _claim(self, max_messages: int, lease_s: float) -> list[Delivery]:
        now = time.monotonic()
        token = secrets.token_urlsafe(12)
        deliveries: list[Delivery] = []
        while len(deliveries) < max_messages:
            earliest = self._earliest()
            if earliest is None or earliest > now:
                break
            message = self._messages[heapq.heappop(self._schedule)[2]]
            message.attempt += 1
            message.lease_token = token
            message.leased_until = now + lease_s
            self._reschedule(message, message.leased_until)
            deliveries.append(
                Delivery(message.id, message.body, message.attempt, f"{message.id}:{token}")
            )
        return deliveries

    def _leased(self, delivery: Delivery) -> _Message | None:
        """The message if `delivery` still holds its unlapsed lease, else None."""
        self._check_open()
        mid, _, token = delivery.receipt.rpartition(":")
        message = self._messages.get(mid)
        if (
            message is None
            or message.lease_token != token
            or message.leased_until <= time.monotonic()
        ):
            return None
        return message


async def open(url: str) -> MemoryQueue:
    """Open a new, empty in-memory queue for `memory://` or `memory://name`."""
    parts = urlsplit(url)
    if parts.scheme != "memory":
        raise ConfigError(f"not a memory:// URL: {url!r}")
    return MemoryQueue(name=parts.netloc + parts.path)
