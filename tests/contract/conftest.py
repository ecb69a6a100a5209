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


# A factory opens a fresh, empty queue for one test; it may pull other fixtures (a server
# URL, a unique key prefix) through `request.getfixturevalue`.
QUEUE_BACKENDS: dict[str, QueueFactory] = {
    "memory": _memory_queue,
    "sqlite": _sqlite_queue,
}


@pytest.fixture(params=list(QUEUE_BACKENDS))
async def queue(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Queue]:
    """An opened, empty Queue of each backend, closed after the test."""
    opened = await QUEUE_BACKENDS[request.param](request)
    try:
        yield opened
    finally:
        await opened.aclose()
