"""Backends for the contract suites: add a backend by adding one factory to its table."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from batchgate.queue import Queue, open_queue

QueueFactory = Callable[[pytest.FixtureRequest], Awaitable[Queue]]


async def _memory_queue(request: pytest.FixtureRequest) -> Queue:
    return await open_queue("memory://contract")


async def _sqlite_queue(request: pytest.FixtureRequest) -> Queue:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return await open_queue(f"sqlite:///{tmp_path / 'queue.db'}")


async def _redis_queue(request: pytest.FixtureRequest) -> Queue:
    return await open_queue(request.getfixturevalue("redis_url"))


async def _sqs_queue(request: pytest.FixtureRequest) -> Queue:
    return await open_queue(request.getfixturevalue("sqs_url"))


# A factory opens a fresh, empty queue for one test; it may pull other fixtures (a server
# URL, a unique key prefix) through `request.getfixturevalue`.
QUEUE_BACKENDS: dict[str, QueueFactory] = {
    "memory": _memory_queue,
    "sqlite": _sqlite_queue,
    "redis": _redis_queue,
    "sqs": _sqs_queue,
}

# Guarantees beyond the Queue protocol's common core (see queue/base.py). A contract test
# that covers one of them asserts the weaker, documented behaviour for a backend listed
# here as lacking it (the `queue_lacks` fixture); every other backend gets the full check.
QUEUE_LACKS: dict[str, dict[str, str]] = {
    "sqs": {
        "atomic_put": "SQS enqueues all or none per SendMessageBatch of 10 messages only",
        "delayed_retry_depth": (
            "SQS counts a message waiting out a retry delay (a visibility change) as not "
            "visible, i.e. in flight, not as delayed"
        ),
        "fifo": "an SQS standard queue keeps order best effort only",
        "release_all": (
            "SQS cannot end another consumer's visibility timeout; leased messages come back "
            "when their leases lapse"
        ),
        "subsecond_leases": (
            "SQS timeouts are whole seconds: a 0.1 s lease hides the message for 1 s, so it "
            "is fenced at 0.1 s but not deliverable again before 1 s"
        ),
    },
}


@pytest.fixture(params=list(QUEUE_BACKENDS))
async def queue(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Queue]:
    """An opened, empty Queue of each backend, closed after the test."""
    opened = await QUEUE_BACKENDS[request.param](request)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
def queue_lacks(request: pytest.FixtureRequest) -> frozenset[str]:
    """The guarantees the current `queue` backend lacks (see QUEUE_LACKS)."""
    backend = request.node.callspec.params["queue"]
    return frozenset(QUEUE_LACKS.get(backend, {}))
