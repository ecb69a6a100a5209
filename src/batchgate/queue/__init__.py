"""Queue backends, chosen by URL scheme."""

from __future__ import annotations

from batchgate.queue.base import DeadLetter, Delivery, Queue, QueueDepth
from batchgate.urls import load_backend

BACKENDS = {
    "memory": "batchgate.queue.memory",
    "sqlite": "batchgate.queue.sqlite",
    "redis": "batchgate.queue.redis",
    "rediss": "batchgate.queue.redis",
    "sqs": "batchgate.queue.sqs",
}

__all__ = ["BACKENDS", "DeadLetter", "Delivery", "Queue", "QueueDepth", "open_queue"]


async def open_queue(url: str) -> Queue:
    """Open the queue backend named by `url` (sqlite:///…, redis://…, sqs://…, memory://)."""
    queue: Queue = await load_backend("queue", url, BACKENDS)
    return queue
