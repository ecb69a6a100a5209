"""The Queue contract, run against every backend in `conftest.QUEUE_BACKENDS`."""

from __future__ import annotations

import asyncio
import os

import pytest

from batchgate.queue import Delivery, Queue, QueueDepth

pytestmark = pytest.mark.anyio

LEASE_S = 30.0
# Generous guard so a broken wakeup fails the test instead of hanging it.
GUARD_S = 10.0


async def receive_one(queue: Queue, wait_s: float = 0.0, lease_s: float = LEASE_S) -> Delivery:
    [delivery] = await queue.receive(1, wait_s=wait_s, lease_s=lease_s)
    return delivery


async def drain(queue: Queue) -> list[Delivery]:
    """Receive everything ready now, in delivery order."""
    received: list[Delivery] = []
    while batch := await queue.receive(10, wait_s=0, lease_s=LEASE_S):
        received.extend(batch)
    return received


async def until_waiting(task: asyncio.Task[object]) -> None:
    """Let `task` run until it blocks (its receive is waiting)."""
    for _ in range(10):
        await asyncio.sleep(0)
    assert not task.done()


async def test_put_receive_ack_round_trip(queue: Queue) -> None:
    [message_id] = await queue.put([b"hello"])

    delivery = await receive_one(queue)

    assert (delivery.message_id, delivery.body, delivery.attempt) == (message_id, b"hello", 1)
    assert await queue.ack(delivery)
    assert not await queue.ack(delivery)
    assert await queue.receive(1, wait_s=0, lease_s=LEASE_S) == []
    assert await queue.depth() == QueueDepth(ready=0, in_flight=0, delayed=0, dead=0)


async def test_put_returns_distinct_ids(queue: Queue) -> None:
    ids = await queue.put([b"a", b"b", b"c"])

    assert len(set(ids)) == 3
    assert await queue.put([]) == []


async def test_waiting_receive_wakes_on_put(queue: Queue) -> None:
    waiter = asyncio.create_task(queue.receive(1, wait_s=60, lease_s=LEASE_S))
    await until_waiting(waiter)

    [message_id] = await queue.put([b"wake"])

    async with asyncio.timeout(GUARD_S):
        [delivery] = await waiter
    assert (delivery.message_id, delivery.body) == (message_id, b"wake")


async def test_receive_times_out_empty(queue: Queue) -> None:
    assert await queue.receive(1, wait_s=0, lease_s=LEASE_S) == []
    assert await queue.receive(1, wait_s=0.2, lease_s=LEASE_S) == []


async def test_waiting_receive_is_cancellable(queue: Queue) -> None:
    waiter = asyncio.create_task(queue.receive(1, wait_s=60, lease_s=LEASE_S))
    await until_waiting(waiter)

    waiter.cancel()

    with pytest.raises(asyncio.CancelledError):
        await waiter
    await queue.put([b"after"])
    # A cancelled SQS long poll still takes what arrives; the queue then gives it back.
    assert (await receive_one(queue, wait_s=GUARD_S)).body == b"after"


async def test_max_messages_respected(queue: Queue) -> None:
    await queue.put([b"%d" % i for i in range(5)])

    first = await queue.receive(3, wait_s=0, lease_s=LEASE_S)
    rest = await queue.receive(10, wait_s=0, lease_s=LEASE_S)

    assert len(first) == 3
    assert len(rest) == 2
    assert {d.body for d in first + rest} == {b"%d" % i for i in range(5)}


async def test_single_producer_order_is_kept(queue: Queue, queue_lacks: frozenset[str]) -> None:
    bodies = [b"%d" % i for i in range(20)]
    for body in bodies[:10]:
        await queue.put([body])
    await queue.put(bodies[10:])

    received = [d.body for d in await drain(queue)]
    if "fifo" in queue_lacks:
        assert sorted(received) == sorted(bodies)  # every message once, order best effort
    else:
        assert received == bodies


async def test_lapsed_lease_is_redelivered(queue: Queue) -> None:
    await queue.put([b"job"])
    first = await receive_one(queue, lease_s=0.2)

    second = await receive_one(queue, wait_s=GUARD_S)

    assert second.message_id == first.message_id
    assert second.body == b"job"
    assert second.attempt == first.attempt + 1 == 2


async def test_stale_receipt_is_fenced_after_redelivery(queue: Queue) -> None:
    await queue.put([b"job"])
    stale = await receive_one(queue, lease_s=0.2)
    current = await receive_one(queue, wait_s=GUARD_S)

    assert not await queue.ack(stale)
    assert not await queue.extend(stale, LEASE_S)
    assert not await queue.retry(stale, 0)
    assert not await queue.dead_letter(stale, "stale")
    assert await queue.depth() == QueueDepth(ready=0, in_flight=1, delayed=0, dead=0)
    assert await queue.ack(current)


async def test_lapsed_lease_is_fenced_before_redelivery(
    queue: Queue, queue_lacks: frozenset[str]
) -> None:
    lease_s = 1.0 if "subsecond_leases" in queue_lacks else 0.1
    await queue.put([b"job"])
    lapsed = await receive_one(queue, lease_s=lease_s)
    await asyncio.sleep(lease_s + 0.2)  # let the lease lapse (time passing, not a sync)

    assert not await queue.extend(lapsed, LEASE_S)
    assert not await queue.ack(lapsed)
    assert (await receive_one(queue)).attempt == 2


async def test_extend_keeps_the_lease(queue: Queue) -> None:
    await queue.put([b"job"])
    delivery = await receive_one(queue, lease_s=0.3)

    assert await queue.extend(delivery, LEASE_S)

    assert await queue.receive(1, wait_s=0.6, lease_s=LEASE_S) == []
    assert await queue.ack(delivery)


async def test_retry_with_delay_hides_then_redelivers(
    queue: Queue, queue_lacks: frozenset[str]
) -> None:
    await queue.put([b"job"])
    first = await receive_one(queue)

    assert await queue.retry(first, delay_s=0.3)

    assert not await queue.ack(first)
    assert await queue.receive(1, wait_s=0, lease_s=LEASE_S) == []
    depth = await queue.depth()
    if "delayed_retry_depth" in queue_lacks:
        # Hidden either way: counted as in flight rather than delayed.
        assert (depth.ready, depth.in_flight + depth.delayed, depth.dead) == (0, 1, 0)
    else:
        assert depth == QueueDepth(ready=0, in_flight=0, delayed=1, dead=0)
    second = await receive_one(queue, wait_s=GUARD_S)
    assert (second.message_id, second.attempt) == (first.message_id, 2)


async def test_retry_without_delay_is_ready_at_once(queue: Queue) -> None:
    await queue.put([b"job"])
    first = await receive_one(queue)

    assert await queue.retry(first, delay_s=0)

    assert (await receive_one(queue)).attempt == 2


async def test_dead_letter_list_and_redrive(queue: Queue) -> None:
    [id_a, id_b] = await queue.put([b"a", b"b"])
    delivery_a, delivery_b = await queue.receive(2, wait_s=0, lease_s=LEASE_S)

    assert await queue.dead_letter(delivery_a, "boom a")
    assert await queue.dead_letter(delivery_b, "boom b")

    assert not await queue.ack(delivery_a)
    assert await queue.depth() == QueueDepth(ready=0, in_flight=0, delayed=0, dead=2)
    dead = await queue.list_dead()
    assert [(d.message_id, d.body, d.attempts, d.reason) for d in dead] == [
        (id_a, b"a", 1, "boom a"),
        (id_b, b"b", 1, "boom b"),
    ]
    assert all(d.failed_at > 0 for d in dead)
    assert [d.message_id for d in await queue.list_dead(limit=1)] == [id_a]

    assert await queue.redrive([id_b, "no-such-id"]) == 1
    assert [d.message_id for d in await queue.list_dead()] == [id_a]
    redriven = await receive_one(queue)
    assert (redriven.message_id, redriven.body, redriven.attempt) == (id_b, b"b", 1)

    assert await queue.redrive() == 1
    assert await queue.list_dead() == []
    assert (await receive_one(queue)).message_id == id_a
    assert await queue.redrive() == 0


async def test_depth_counts_each_state(queue: Queue) -> None:
    await queue.put([b"held", b"ready", b"dead"])
    await queue.put([b"later"], delay_s=60)
    _held, ready, dead = await queue.receive(3, wait_s=0, lease_s=LEASE_S)

    assert await queue.retry(ready, delay_s=0)
    assert await queue.dead_letter(dead, "test")

    assert await queue.depth() == QueueDepth(ready=1, in_flight=1, delayed=1, dead=1)


async def test_release_all_does_not_count_the_lost_attempt(
    queue: Queue, queue_lacks: frozenset[str]
) -> None:
    await queue.put([b"a", b"b", b"c"])
    held = await queue.receive(2, wait_s=0, lease_s=LEASE_S)

    if "release_all" in queue_lacks:
        # Nothing is released: the leases stay their holders' until they lapse.
        assert await queue.release_all() == 0
        assert all([await queue.ack(d) for d in held])
        return
    assert await queue.release_all() == 2

    assert await queue.depth() == QueueDepth(ready=3, in_flight=0, delayed=0, dead=0)
    assert not await queue.ack(held[0])
    again = await drain(queue)
    assert sorted(d.attempt for d in again) == [1, 1, 1]
    assert await queue.release_all() == 3


async def test_put_many_is_visible_at_once(queue: Queue, queue_lacks: frozenset[str]) -> None:
    weaker = {"atomic_put", "fifo"} & queue_lacks
    count = 45 if weaker else 500  # more than one SendMessageBatch, few enough for moto
    ids = await queue.put([b"m%d" % i for i in range(count)])

    assert (await queue.depth()).ready == count
    received = [d.message_id for d in await drain(queue)]
    assert (sorted(received) == sorted(ids)) if weaker else (received == ids)


async def test_delayed_put_waits_for_its_delay(queue: Queue) -> None:
    [message_id] = await queue.put([b"later"], delay_s=0.3)

    assert await queue.receive(1, wait_s=0, lease_s=LEASE_S) == []
    assert (await receive_one(queue, wait_s=GUARD_S)).message_id == message_id


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00", bytes(range(256)), b'{"json": "\\u00e9"}\r\n', os.urandom(64 * 1024)],
    ids=["empty", "nul", "all-bytes", "json-ish", "random-64k"],
)
async def test_bodies_round_trip_exactly(queue: Queue, body: bytes) -> None:
    await queue.put([body])

    delivery = await receive_one(queue)

    assert type(delivery.body) is bytes
    assert delivery.body == body


async def test_a_fresh_queue_is_healthy(queue: Queue) -> None:
    await queue.check_health()  # raises BackendError when it could not take writes
