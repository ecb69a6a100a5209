"""A job whose task cannot be queued is rolled back, or, failing that, queued later.

State lives on one real redis-server, the queue on another that the test stops: the
request stores the job, fails to enqueue it and gets a BackendError (a 503 over HTTP).
Normally the job is removed again, so the 503 accepted nothing and a retry starts afresh.
If the removal fails too, the 503 names the job, and the gateway queues it once the
queue is back; a retry with the same Idempotency-Key attaches to it.
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


async def test_a_job_that_cannot_be_enqueued_is_rolled_back(
    bg: LocalBatchgate, queue_server: RedisServer
) -> None:
    info = bg.jobs.registry.get("echo")
    body = dumps({"n": 7})
    queue_server.stop()
    with pytest.raises(BackendError) as refused:
        await bg.jobs.submit(info, body, idempotency_key="k-plain", wait_s=0)
    assert "job_id" not in refused.value.extra  # the 503 accepted nothing
    queue_server.start()

    retried = await bg.jobs.submit(info, body, idempotency_key="k-plain", wait_s=0)
    assert not bg.jobs._rescues  # a new job, queued at once: the first one is gone
    job = await bg.jobs.wait(retried.id, 30)
    assert job.status is JobStatus.SUCCEEDED
    assert json.loads(await bg.jobs.result_bytes(job)) == {"n": 7}


async def test_a_map_job_that_cannot_be_enqueued_is_rolled_back(
    bg: LocalBatchgate, queue_server: RedisServer
) -> None:
    info = bg.jobs.registry.get("square")
    values = [1, 2, 3]
    queue_server.stop()
    with pytest.raises(BackendError) as refused:
        await bg.jobs.submit_map(info, items(values), idempotency_key="k-map", wait_s=0)
    assert "job_id" not in refused.value.extra
    queue_server.start()

    retried = await bg.jobs.submit_map(info, items(values), idempotency_key="k-map", wait_s=0)
    job = await bg.jobs.wait(retried.id, 30)
    assert job.status is JobStatus.SUCCEEDED
    out = [json.loads(line) async for chunk in bg.jobs.map_result_chunks(job)
           for line in chunk.splitlines()]  # fmt: skip
    assert out == [1, 4, 9]


@pytest.mark.parametrize("keyed_retry", [True, False])
async def test_a_job_neither_queued_nor_removed_runs_once_the_queue_is_back(
    bg: LocalBatchgate,
    queue_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    keyed_retry: bool,
) -> None:
    # The state refuses the rollback too (a full disk takes both down at once).
    async def refuse(job_ids: object) -> None:
        raise BackendError("state down")

    monkeypatch.setattr(bg.state, "delete_jobs", refuse)
    info = bg.jobs.registry.get("echo")
    queue_server.stop()
    with pytest.raises(BackendError) as refused:
        await bg.jobs.submit(info, dumps(5), idempotency_key="k-stuck", wait_s=0)
    job_id = refused.value.extra["job_id"]  # the 503 names the job it stored
    assert refused.value.headers()["Location"] == f"/v1/jobs/{job_id}"
    assert job_id in bg.jobs._rescues
    queue_server.start()
    if keyed_retry:  # attaches to the stored job, whose rescue is under way
        again = await bg.jobs.submit(info, dumps(5), idempotency_key="k-stuck", wait_s=0)
        assert again.id == job_id

    job = await bg.jobs.wait(job_id, 30)  # queued by the rescue, a lease after the 503

    assert job.status is JobStatus.SUCCEEDED
    assert json.loads(await bg.jobs.result_bytes(job)) == 5


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
