"""The SQS queue and S3 store against a real moto_server over HTTP."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
import pytest

from batchgate.errors import BackendError, ConfigError, NotFound
from batchgate.queue import Delivery, QueueDepth, open_queue
from batchgate.queue.sqs import SqsQueue
from batchgate.store import open_store
from batchgate.store.s3 import PART_BYTES, S3Store

pytestmark = pytest.mark.anyio

GUARD_S = 15.0


async def open_sqs(url: str) -> SqsQueue:
    queue = await open_queue(url)
    assert isinstance(queue, SqsQueue)
    return queue


async def open_s3(url: str) -> S3Store:
    store = await open_store(url)
    assert isinstance(store, S3Store)
    return store


def s3_client(endpoint_url: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def receive_one(queue: SqsQueue, wait_s: float = 0.0, lease_s: float = 30.0) -> Delivery:
    [delivery] = await queue.receive(1, wait_s=wait_s, lease_s=lease_s)
    return delivery


# --- S3 -------------------------------------------------------------------------------------


async def test_multipart_put_stream_round_trips(s3_url: str, moto_server: str) -> None:
    store = await open_s3(s3_url)
    data = os.urandom(12 * 1024 * 1024 + 4321)
    try:
        assert await store.put_stream("big/blob", pieces(data, 1 << 20)) == len(data)

        assert await store.get("big/blob") == data
        streamed = [piece async for piece in store.open_stream("big/blob", 1 << 20)]
        assert b"".join(streamed) == data
        head = s3_client(moto_server).head_object(
            Bucket=store.bucket, Key=f"{store.prefix}big/blob"
        )
        assert head["ETag"].strip('"').endswith("-2")  # two parts: 8 MiB and the rest
    finally:
        await store.aclose()


async def test_failed_multipart_stream_is_aborted(s3_url: str, moto_server: str) -> None:
    store = await open_s3(s3_url)

    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(PART_BYTES + 1)  # one part uploaded before the failure
        raise RuntimeError("client went away")

    try:
        with pytest.raises(RuntimeError):
            await store.put_stream("k", broken())

        uploads = s3_client(moto_server).list_multipart_uploads(
            Bucket=store.bucket, Prefix=store.prefix
        )
        assert uploads.get("Uploads", []) == []
        with pytest.raises(NotFound):
            await store.get("k")
    finally:
        await store.aclose()


async def test_presigned_url_serves_the_blob(s3_url: str) -> None:
    store = await open_s3(s3_url)
    data = os.urandom(100_000)
    try:
        await store.put("results/job", data)
        url = await store.presigned_url("results/job", 60)

        assert url is not None
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
        assert response.status_code == 200
        assert response.content == data
    finally:
        await store.aclose()


async def test_store_keys_are_validated_and_prefixed(s3_url: str, moto_server: str) -> None:
    store = await open_s3(s3_url)
    try:
        for key in ["", "/abs", "a//b", "..", "a/../b", ".hidden", "a\\b"]:
            with pytest.raises(ValueError):
                await store.put(key, b"x")
        await store.put("inputs/0", b"v")
        listed = s3_client(moto_server).list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
        assert [item["Key"] for item in listed["Contents"]] == [f"{store.prefix}inputs/0"]
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "url",
    ["s3://bucket/p?endpoint=http://x&region=us-east-1", "sqs://jobs?endpoint=http://x"],
)
async def test_an_unknown_url_parameter_names_the_known_ones(url: str) -> None:
    opener = open_store if url.startswith("s3") else open_queue
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['endpoint'\].*endpoint_url"):
        await opener(url)


async def test_missing_bucket_is_a_config_error(moto_server: str) -> None:
    with pytest.raises(ConfigError, match="no-such-bucket"):
        await open_store(f"s3://no-such-bucket/p?endpoint_url={moto_server}&region=us-east-1")


# --- SQS ------------------------------------------------------------------------------------


async def test_dead_letters_come_back_after_redrive(sqs_url: str) -> None:
    queue = await open_sqs(sqs_url)
    try:
        ids = await queue.put([b"a", b"\x00binary", b"c"])
        deliveries = await queue.receive(3, wait_s=0, lease_s=30)
        for delivery in deliveries:
            assert await queue.dead_letter(delivery, f"failed: {delivery.body!r}")

        dead = await queue.list_dead()
        assert sorted(d.message_id for d in dead) == sorted(ids)
        assert {d.reason for d in dead} == {f"failed: {d.body!r}" for d in deliveries}
        assert all(d.attempts == 1 for d in dead)
        assert (await queue.depth()).dead == 3

        assert await queue.redrive() == 3

        assert await queue.list_dead() == []
        again = await queue.receive(3, wait_s=GUARD_S, lease_s=30)
        assert sorted((d.message_id, d.body, d.attempt) for d in again) == sorted(
            zip(ids, [b"a", b"\x00binary", b"c"], [1, 1, 1], strict=True)
        )
    finally:
        await queue.aclose()


async def test_two_instances_never_both_hold_a_lease(sqs_url: str) -> None:
    first, second = await open_sqs(sqs_url), await open_sqs(sqs_url)
    try:
        await first.put([b"job"])
        held = await receive_one(first, lease_s=1)
        assert await second.receive(1, wait_s=0, lease_s=30) == []

        taken = await receive_one(second, wait_s=GUARD_S, lease_s=30)

        assert (taken.message_id, taken.attempt) == (held.message_id, 2)
        assert not await first.extend(held, 30)
        assert not await first.retry(held, 0)
        assert not await first.dead_letter(held, "stale")
        assert not await first.ack(held)
        assert await second.extend(taken, 30)
        assert await second.ack(taken)
    finally:
        await first.aclose()
        await second.aclose()


async def test_extended_lease_is_not_redelivered(sqs_url: str) -> None:
    first, second = await open_sqs(sqs_url), await open_sqs(sqs_url)
    try:
        await first.put([b"job"])
        held = await receive_one(first, lease_s=1)
        assert await first.extend(held, 3)

        assert await second.receive(1, wait_s=1.5, lease_s=30) == []
        assert await first.ack(held)  # still ours past the first lease's end
    finally:
        await first.aclose()
        await second.aclose()


async def test_lapsed_lease_is_fenced_in_whole_seconds(sqs_url: str) -> None:
    queue = await open_sqs(sqs_url)
    try:
        await queue.put([b"job"])
        lapsed = await receive_one(queue, lease_s=0.2)
        await asyncio.sleep(0.3)  # past the caller's lease, within SQS's whole second

        assert not await queue.extend(lapsed, 30)
        assert not await queue.ack(lapsed)
        assert (await receive_one(queue, wait_s=GUARD_S)).attempt == 2
    finally:
        await queue.aclose()


async def test_retry_delay_hides_the_message(sqs_url: str) -> None:
    queue = await open_sqs(sqs_url)
    try:
        await queue.put([b"job"])
        first = await receive_one(queue)
        assert await queue.retry(first, delay_s=1)

        assert not await queue.ack(first)
        assert await queue.receive(1, wait_s=0, lease_s=30) == []
        assert await queue.depth() == QueueDepth(ready=0, in_flight=1, delayed=0, dead=0)
        second = await receive_one(queue, wait_s=GUARD_S)
        assert (second.message_id, second.attempt) == (first.message_id, 2)
    finally:
        await queue.aclose()


async def test_put_spans_batches_of_ten(sqs_url: str) -> None:
    queue = await open_sqs(sqs_url)
    try:
        bodies = [b"m%d" % i for i in range(25)]
        ids = await queue.put(bodies)

        received: list[Delivery] = []
        while len(received) < 25:
            received += await queue.receive(25, wait_s=GUARD_S, lease_s=30)
        assert sorted((d.message_id, d.body) for d in received) == sorted(
            zip(ids, bodies, strict=True)
        )
    finally:
        await queue.aclose()


async def test_oversized_message_is_refused_before_sending(sqs_url: str) -> None:
    queue = await open_sqs(sqs_url)
    try:
        with pytest.raises(BackendError, match="store"):
            await queue.put([b"small", b"x" * (queue.max_message_bytes + 1)])
        assert await queue.depth() == QueueDepth(ready=0, in_flight=0, delayed=0, dead=0)
    finally:
        await queue.aclose()


async def test_partly_failed_batch_names_the_failed_entries(
    sqs_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = await open_sqs(sqs_url)
    client = queue._client
    real_call = client.call

    async def call(operation: str, **params: Any) -> dict[str, Any]:
        response = await real_call(operation, **params)
        if operation == "send_message_batch":
            # What SQS answers when it refuses one entry of a batch.
            response["Failed"] = [{"Id": "body-3", "Code": "InternalError", "Message": "x"}]
        return response

    monkeypatch.setattr(client, "call", call)
    try:
        with pytest.raises(BackendError, match="entry body-3: InternalError"):
            await queue.put([b"%d" % i for i in range(5)])
    finally:
        await queue.aclose()


async def test_missing_queue_without_create_is_a_config_error(sqs_url: str) -> None:
    with pytest.raises(ConfigError, match="create=1"):
        await open_queue(sqs_url + "&create=0")


async def test_created_queue_has_a_dlq_and_backstop_redrive(sqs_url: str, moto_server: str) -> None:
    queue = await open_sqs(sqs_url)
    await queue.aclose()
    name = urlsplit(sqs_url).netloc
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert '"maxReceiveCount": 1000' in attributes["RedrivePolicy"].replace("'", '"')
    assert f"{name}-dlq" in attributes["RedrivePolicy"]
    assert attributes["MessageRetentionPeriod"] == "1209600"
