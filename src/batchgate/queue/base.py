"""The Queue port: durable at-least-once delivery with fenced, renewable leases."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One received message and the lease that fences every later call on it.

    `attempt` counts deliveries of this message, starting at 1. `receipt` is opaque to
    callers; a backend refuses it once the lease has passed to a newer delivery.
    """

    message_id: str
    body: bytes
    attempt: int
    receipt: str


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    message_id: str
    body: bytes
    attempts: int
    reason: str
    failed_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class QueueDepth:
    ready: int
    in_flight: int
    delayed: int
    dead: int


class Queue(Protocol):
    """Durable delivery of task messages to workers.

    Delivery is at least once: a message whose lease lapses is delivered again with a
    higher `attempt`. Every call that takes a Delivery is fenced: it returns False (and
    changes nothing) when the lease is no longer the caller's.

    Points marked "backend-dependent" may be weaker on some backends (SQS: see its module
    docstring); the contract tests skip those backends by name (`QUEUE_LACKS`).
    """

    async def put(self, bodies: Sequence[bytes], delay_s: float = 0.0) -> list[str]:
        """Enqueue messages atomically (all or none); returns their ids.

        Backend-dependent: SQS is all or none per batch of 10 only. One producer's messages
        are delivered in order, except on SQS (best effort).
        """
        ...

    async def receive(self, max_messages: int, wait_s: float, lease_s: float) -> list[Delivery]:
        """Lease up to `max_messages` ready messages, blocking up to `wait_s` for the first.

        Cancelling a waiting receive leaves nothing leased, though a backend whose long poll
        outlives it (SQS) may take a moment to give back what the poll got. Backend-dependent:
        SQS rounds `wait_s` and `lease_s` up to whole seconds.
        """
        ...

    async def ack(self, delivery: Delivery) -> bool:
        """Delete a message for good, only while the caller still holds its lease."""
        ...

    async def extend(self, delivery: Delivery, lease_s: float) -> bool:
        """Renew the lease for `lease_s` seconds from now (a heartbeat)."""
        ...

    async def retry(self, delivery: Delivery, delay_s: float) -> bool:
        """Give the message back, deliverable again after `delay_s` seconds."""
        ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        """Move the message to the dead-letter set with a reason."""
        ...

    async def release_all(self) -> int:
        """Make every leased message ready at once, not counting the lost attempt.

        Only for a process that owns the queue alone and restarts (the embedded server):
        the leases it held died with it. Returns how many; backend-dependent: SQS cannot and
        returns 0 (the leases lapse on their own).
        """
        ...

    async def depth(self) -> QueueDepth:
        """Counts of ready, leased, delayed and dead messages.

        Backend-dependent: SQS's counts are approximate, and count a message waiting out a
        retry delay as leased.
        """
        ...

    async def list_dead(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        ...

    async def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        """Move dead letters (all, or the named ones) back to ready with attempts reset."""
        ...

    async def check_health(self) -> None:
        """Raise BackendError if this backend could not take writes now (its disk is full).

        Cheap and side-effect free: readiness probes call it. Backends with nothing to
        check beyond answering at all return at once.
        """
        ...

    async def aclose(self) -> None: ...


def check_receive_args(max_messages: int, wait_s: float, lease_s: float) -> None:
    """Raise ValueError for arguments no backend accepts."""
    if max_messages < 1:
        raise ValueError(f"max_messages must be >= 1, got {max_messages}")
    if wait_s < 0:
        raise ValueError(f"wait_s must be >= 0, got {wait_s}")
    if lease_s <= 0:
        raise ValueError(f"lease_s must be > 0, got {lease_s}")


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for `event` up to `timeout_s`; True if it was set."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
