"""A job stored while its queue was down is enqueued again by the client's retry.

State lives on one real redis-server, the queue on another that the test stops: the first
request stores the job, fails to enqueue it and gets a BackendError (a 503 over HTTP). The
retry with the same Idempotency-Key comes at once, before the job is a lease old, and must
still get the job done instead of waiting on a task that was never queued.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from batchgate.errors import BackendError
from batchgate.models import JobStatus, dumps
from batchgate.testing import LocalBatchgate, local_batchgate
from tests.fixtures.redis_server import RedisServer, start_redis_server

pytestmark = pytest.mark.anyio

TEST_APP = str(Path(__file__).parents[1] / "apps" / "testapp.py")
# Longer than a failed put takes (redis-py retries the connection), so that the retry
# comes while the job is younger than a lease: the case a timer must cover.
LEASE_S = 6.0


@pytest.fixture
def queue_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis_server(tmp_path / "queue-redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def bg(
    redis_url: str, queue_server: RedisServer, tmp_path: Path
) -> AsyncIterator[LocalBatchgate]:
    async with local_batchgate(
        TEST_APP,
        backends=redis_url,
        queue_url=queue_server.url,
        store_url=f"file://{tmp_path}/store",
        lease_s=LEASE_S,
        max_queue_depth=0,  # no depth check before the job is stored
    ) as running:
        yield running


async def items(values: list[int]) -> AsyncIterator[bytes]:
    yield b"".join(b"%d\n" % v for v in values)


async def test_plain_job_stored_but_never_enqueued_runs_on_retry(
    bg: LocalBatchgate, queue_server: RedisServer
) -> None:
    info = bg.jobs.registry.get("echo")
    body = dumps({"n": 7})
    queue_server.stop()
    with pytest.raises(BackendError):
        await bg.jobs.submit(info, body, idempotency_key="k-plain", wait_s=0)
    queue_server.start()

    retried = await bg.jobs.submit(info, body, idempotency_key="k-plain", wait_s=0)
    assert retried.status is JobStatus.QUEUED
    assert retried.id in bg.jobs._rescues  # too young to enqueue again yet
    job = await bg.jobs.wait(retried.id, 30)

    assert job.status is JobStatus.SUCCEEDED
    assert json.loads(await bg.jobs.result_bytes(job)) == {"n": 7}


async def test_map_job_stored_but_never_enqueued_runs_on_retry(
    bg: LocalBatchgate, queue_server: RedisServer
) -> None:
    info = bg.jobs.registry.get("square")
    values = [1, 2, 3]
    queue_server.stop()
    with pytest.raises(BackendError):
        await bg.jobs.submit_map(info, items(values), idempotency_key="k-map", wait_s=0)
    queue_server.start()

    retried = await bg.jobs.submit_map(info, items(values), idempotency_key="k-map", wait_s=0)
    assert retried.id in bg.jobs._rescues
    job = await bg.jobs.wait(retried.id, 30)

    assert job.status is JobStatus.SUCCEEDED
    assert job.progress.done == 3
    out = [json.loads(line) async for chunk in bg.jobs.map_result_chunks(job)
           for line in chunk.splitlines()]  # fmt: skip
    assert out == [1, 4, 9]


async def test_a_settled_job_is_not_enqueued_again(bg: LocalBatchgate) -> None:
    info = bg.jobs.registry.get("echo")
    first = await bg.jobs.submit(info, dumps(1), idempotency_key="k-done", wait_s=30)
    assert first.status is JobStatus.SUCCEEDED

    again = await bg.jobs.submit(info, dumps(1), idempotency_key="k-done", wait_s=0)

    assert again.id == first.id
    assert again.attempts == 1
    assert not bg.jobs._rescues
    depth = await bg.queue.depth()
    assert depth.ready == depth.in_flight == 0
