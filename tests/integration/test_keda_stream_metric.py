"""The number KEDA's redis-streams scaler reads for a pool (XLEN of `<prefix>q:stream`,
no consumer group) is the pool's tasks waiting plus running, on a real Redis: the
Kubernetes manifests size each worker Deployment on it."""

from __future__ import annotations

import pytest
import redis.asyncio as redis_asyncio

from batchgate.queue import open_queue
from batchgate.redis_db import split_url

pytestmark = pytest.mark.anyio


async def test_stream_length_counts_waiting_and_running_tasks(redis_url: str) -> None:
    queue = await open_queue(redis_url)
    plain_url, prefix, _ = split_url(redis_url, frozenset())
    stream = f"{prefix}q:stream"
    client = redis_asyncio.Redis.from_url(plain_url)
    try:
        await queue.put([b"1", b"2", b"3", b"4"])
        assert await client.xlen(stream) == 4  # all waiting

        running = await queue.receive(max_messages=2, wait_s=1, lease_s=30)
        assert len(running) == 2
        assert await client.xlen(stream) == 4  # two waiting + two running

        assert await queue.ack(running[0])
        assert await client.xlen(stream) == 3  # done: gone from the count

        # A retry waiting out its backoff leaves the stream: the scaler does not see it,
        # which is why a pool that scales to zero needs cooldownPeriod > the longest backoff.
        assert await queue.retry(running[1], delay_s=60)
        assert await client.xlen(stream) == 2
        assert (await queue.depth()).delayed == 1
    finally:
        await client.aclose()
        await queue.aclose()
