"""A Queue wrapper that remembers how each delivery was settled.

An SQS event source mapping deletes every message its Lambda does not report as failed. A
worker settles most messages itself (ack or dead-letter delete them; a retry hides them for
the backoff delay), so the handler must report as failed exactly those it did not delete:
the ones it retried, released, or never got to.
"""

from __future__ import annotations

from collections.abc import Sequence

from batchgate.queue.base import DeadLetter, Delivery, Queue, QueueDepth


class SettlementLog:
    """Delegates to `queue`, noting the receipts whose message left the queue for good."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.deleted: set[str] = set()

    def removed(self, delivery: Delivery) -> bool:
        """True if `delivery`'s message was acked or dead-lettered through this wrapper."""
        return delivery.receipt in self.deleted

    async def check_health(self) -> None:
        await self.queue.check_health()

    async def put(self, bodies: Sequence[bytes], delay_s: float = 0.0) -> list[str]:
        return await self.queue.put(bodies, delay_s)

    async def receive(self, max_messages: int, wait_s: float, lease_s: float) -> list[Delivery]:
        return await self.queue.receive(max_messages, wait_s, lease_s)

    async def ack(self, delivery: Delivery) -> bool:
        done = await self.queue.ack(delivery)
        if done:
            self.deleted.add(delivery.receipt)
        return done

    async def extend(self, delivery: Delivery, lease_s: float) -> bool:
        return await self.queue.extend(delivery, lease_s)

    async def retry(self, delivery: Delivery, delay_s: float) -> bool:
        return await self.queue.retry(delivery, delay_s)

    async def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        done = await self.queue.dead_letter(delivery, reason)
        if done:
            self.deleted.add(delivery.receipt)
        return done

    async def release_all(self) -> int:
        return await self.queue.release_all()

    async def depth(self) -> QueueDepth:
        return await self.queue.depth()

    async def list_dead(self, limit: int = 100) -> list[DeadLetter]:
        return await self.queue.list_dead(limit)

    async def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        return await self.queue.redrive(message_ids)

    async def aclose(self) -> None:
        await self.queue.aclose()
