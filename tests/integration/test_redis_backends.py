"""The Redis queue and state against a real redis-server: faults, restarts, concurrency."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from batchgate import redis_db
from batchgate.errors import ConfigError
from batchgate.models import Job, JobStatus, new_job_id
from batchgate.queue import QueueDepth, open_queue
from batchgate.queue.redis import RedisQueue
from batchgate.state import open_state
from tests.fixtures.redis_server import RedisServer, start_redis_server

pytestmark = pytest.mark.anyio

GUARD_S = 10.0
LEASE_S = 60.0


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the session server, for poking at it from outside."""
    client = aioredis.Redis(port=redis_server.port, protocol=2)
    try:
        yield client
    finally:
        await client.aclose()


# --- pub/sub notices --------------------------------------------------------------------


async def test_killed_pubsub_connection_wakes_watch_and_resubscribes(
    redis_url: str, admin: aioredis.Redis
) -> None:
    state = await open_state(redis_url)
    try:
        job, _ = await state.create_job(Job(id=new_job_id(), function="f"))
        async with state.watch(job.id) as watch:
            assert not await watch.wait_notice(0.05)
            waiter = asyncio.create_task(watch.wait_notice(GUARD_S))
            await asyncio.sleep(0)

            assert await admin.client_kill_filter(_type="pubsub") >= 1

            async with asyncio.timeout(GUARD_S):
                assert await waiter  # woken once subscribed again, to re-read
            assert not await watch.wait_notice(0.05)
            await state.finish(job.id, None, JobStatus.SUCCEEDED)
            assert await watch.wait_notice(GUARD_S)  # the new connection hears notices
    finally:
        await state.aclose()


async def test_many_concurrent_watches_share_one_connection(
    redis_url: str, admin: aioredis.Redis
) -> None:
    state = await open_state(redis_url)
    try:
        jobs = [(await state.create_job(Job(id=new_job_id(), function="f")))[0] for _ in range(200)]

        async with contextlib.AsyncExitStack() as stack:
            watches = await asyncio.gather(
                *(stack.enter_async_context(state.watch(job.id)) for job in jobs)
            )
            [client] = await admin.client_list(_type="pubsub")
            assert int(client["sub"]) == len(jobs)
            await asyncio.gather(*(state.finish(j.id, None, JobStatus.SUCCEEDED) for j in jobs))
            assert all(await asyncio.gather(*(w.wait_notice(GUARD_S) for w in watches)))

        # The last watch of each job unsubscribed its channel. Unsubscribes are not
        # awaited, but a later subscribe on the same connection is confirmed after them.
        async with state.watch(new_job_id()):
            channels = [state_channel(redis_url, job.id) for job in jobs]
            assert all(count == 0 for _, count in await admin.pubsub_numsub(*channels))
            [client] = await admin.client_list(_type="pubsub")
            assert client["sub"] == "1"
    finally:
        await state.aclose()


def state_channel(redis_url: str, job_id: str) -> str:
    prefix = redis_url.split("prefix=", 1)[1]
    return f"{prefix}job:{job_id}"


# --- persistence --------------------------------------------------------------------------


async def test_restart_with_aof_keeps_messages_leases_and_jobs(
    redis_aof_server: RedisServer,
) -> None:
    url = f"{redis_aof_server.url}?prefix=aof:"
    queue = await open_queue(url)
    state = await open_state(url)
    try:
        await queue.put([b"held", b"ready-1", b"ready-2"])
        await queue.put([b"later"], delay_s=60)
        [held] = await queue.receive(1, wait_s=0, lease_s=LEASE_S)
        job, _ = await state.create_job(Job(id=new_job_id(), function="f", owner="o"))
        started = await state.start_attempt(job.id, 1)

        redis_aof_server.restart(kill=True)  # SIGKILL: appendfsync always kept every write

        assert await queue.depth() == QueueDepth(ready=2, in_flight=1, delayed=1, dead=0)
        assert await queue.ack(held)
        assert [d.body for d in await queue.receive(10, wait_s=0, lease_s=LEASE_S)] == [
            b"ready-1",
            b"ready-2",
        ]
        assert started is not None
        assert await state.get_job(job.id) == started.job
        async with state.watch(job.id) as watch:
            assert await state.finish(job.id, 1, JobStatus.SUCCEEDED, result=b"1") is not None
            assert await watch.wait_notice(GUARD_S)
    finally:
        await queue.aclose()
        await state.aclose()


async def test_restart_without_persistence_loses_work_but_recovers(tmp_path: Path) -> None:
    server = start_redis_server(tmp_path / "redis-volatile", appendonly=False)
    try:
        queue = await open_queue(f"{server.url}?prefix=v:")
        try:
            await queue.put([b"lost"])
            server.restart()

            # The consumer group went with the data; the queue recreates it.
            assert await queue.depth() == QueueDepth(ready=0, in_flight=0, delayed=0, dead=0)
            assert await queue.receive(1, wait_s=0.1, lease_s=LEASE_S) == []
            await queue.put([b"new"])
            [delivery] = await queue.receive(1, wait_s=0, lease_s=LEASE_S)
            assert delivery.body == b"new"
        finally:
            await queue.aclose()
    finally:
        server.stop()


# --- concurrent claims --------------------------------------------------------------------


async def test_two_instances_never_claim_the_same_message(redis_url: str) -> None:
    first, second = await open_queue(redis_url), await open_queue(redis_url)
    total = 600
    claimed: list[str] = []
    try:

        async def consume(index: int) -> None:
            queue = (first, second)[index % 2]
            wait_s = 0.3 if index % 3 else 0.0  # some block in XREADGROUP, some poll
            while batch := await queue.receive(1 + index % 7, wait_s=wait_s, lease_s=LEASE_S):
                claimed.extend(d.message_id for d in batch)
                for delivery in batch[::2]:
                    assert await queue.ack(delivery)

        async def produce() -> list[str]:
            ids: list[str] = []
            for start in range(0, total, 20):
                ids += await (first, second)[start % 2].put([b"%d" % i for i in range(20)])
                await asyncio.sleep(0.001)
            return ids

        async with asyncio.TaskGroup() as tasks:
            for index in range(24):
                tasks.create_task(consume(index))
            produced = tasks.create_task(produce())

        assert [id_ for id_, n in Counter(claimed).items() if n > 1] == []
        assert sorted(claimed) == sorted(produced.result())
    finally:
        await first.aclose()
        await second.aclose()


async def test_lapsed_leases_are_reclaimed_once_under_concurrency(redis_url: str) -> None:
    first, second = await open_queue(redis_url), await open_queue(redis_url)
    try:
        ids = await first.put([b"%d" % i for i in range(60)])
        assert len(await first.receive(60, wait_s=0, lease_s=0.2)) == 60
        await asyncio.sleep(0.3)  # let every lease lapse (time passing, not synchronisation)

        batches = await asyncio.gather(
            *((first, second)[i % 2].receive(5, wait_s=0, lease_s=LEASE_S) for i in range(30))
        )

        again = [d for batch in batches for d in batch]
        assert sorted(d.message_id for d in again) == sorted(ids)
        assert {d.attempt for d in again} == {2}
    finally:
        await first.aclose()
        await second.aclose()


async def test_orphaned_delivery_is_recovered(redis_url: str, admin: aioredis.Redis) -> None:
    queue = await open_queue(redis_url)
    assert isinstance(queue, RedisQueue)
    try:
        [message_id] = await queue.put([b"orphan"])
        # A blocking read whose client vanished before leasing what it was handed.
        stream = f"{queue.prefix}q:stream"
        assert await admin.xreadgroup("batchgate", "batchgate", {stream: ">"}, count=1)
        queue.orphan_idle_s = 0.2
        queue.orphan_scan_interval_s = 0.0
        assert await queue.receive(1, wait_s=0, lease_s=LEASE_S) == []  # not idle long enough

        await asyncio.sleep(0.3)  # let it idle past the threshold

        [delivery] = await queue.receive(1, wait_s=0, lease_s=LEASE_S)
        assert (delivery.message_id, delivery.attempt) == (message_id, 1)
        assert await queue.ack(delivery)
        assert await queue.depth() == QueueDepth(ready=0, in_flight=0, delayed=0, dead=0)
    finally:
        await queue.aclose()


async def test_large_put_is_atomic_and_ordered(redis_url: str) -> None:
    queue = await open_queue(redis_url)
    try:
        ids = await queue.put([b"%d" % i for i in range(2500)])  # several Lua calls, one MULTI
        assert (await queue.depth()).ready == 2500
        received: list[str] = []
        while batch := await queue.receive(500, wait_s=0, lease_s=LEASE_S):
            received += (d.message_id for d in batch)
        assert received == ids
    finally:
        await queue.aclose()


# --- URLs ---------------------------------------------------------------------------------


async def test_unknown_url_parameter_is_a_config_error(redis_server: RedisServer) -> None:
    with pytest.raises(ConfigError, match="unknown query parameter 'prefx'"):
        await open_queue(f"{redis_server.url}?prefx=x:")
    with pytest.raises(ConfigError, match="ttl"):
        await open_state(f"{redis_server.url}?ttl=soon")


async def test_missing_redis_package_names_the_extra(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_db, "aioredis", None)
    for opener in (open_queue, open_state):
        with pytest.raises(ConfigError, match=r"pip install 'batchgate\[redis\]'"):
            await opener(redis_server.url)
