"""AWS SQS Queue: `sqs://NAME?region=…&endpoint_url=…&create=1&visibility=30&dlq=NAME-dlq`.

`create=1` (the default) creates NAME and its dead-letter queue `dlq` (default NAME-dlq)
when missing; `create=0` only looks them up (no sqs:CreateQueue permission needed).
`visibility` is the visibility timeout given to a created queue: batchgate passes its own
lease on every receive, but an SQS event source mapping (Lambda) uses the queue's.

How the Queue port maps onto SQS, and where SQS gives less:
- put is SendMessageBatch, up to 10 messages a call. All or none holds per batch of 10
  only: a put of 25 messages is three calls, and a failed one raises BackendError naming
  its failed messages while the batches before it stay enqueued.
- A message (body plus attributes) may be at most the queue's MaximumMessageSize, at most
  MAX_MESSAGE_BYTES; a larger one raises BackendError before anything is sent. Callers put
  large payloads in the Store and enqueue a reference.
- Every timeout is whole seconds (leases, delays and waits are rounded up), a delay on put
  is at most 15 minutes, and a message's leases add up to at most 12 hours from its receive.
- Order is best effort, depth counts are approximate, and a message waiting out a retry
  delay counts as in flight (SQS's "not visible"), not as delayed.
- release_all cannot end another consumer's visibility timeout: it returns 0, and the
  messages come back when their leases lapse.
- A receive cancelled during a long poll cannot stop it: SQS may still hand it messages,
  which are released (made visible, one attempt spent) as soon as the poll returns.

Fencing: SQS may accept a delete made with an old receipt handle, so the receipt also
carries the lease's deadline, which is never later than SQS's own, and every fenced call is
refused here once that deadline (as extended by this instance) has passed or the lease was
settled; SQS's own refusals (an invalid or expired receipt handle) also return False. The
job state's compare-and-set remains the authority on which attempt may complete.

Dead letters are managed by batchgate, not by SQS's redrive: dead_letter copies the
message to the DLQ with its reason, attempts and time as message attributes, then deletes
it. A created queue also gets a redrive policy with maxReceiveCount 1000 (SQS's maximum) as
a backstop; batchgate's own retry limit always decides first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from batchgate.aws_client import AwsClient, AwsError, open_client
from batchgate.errors import BackendError, ConfigError
from batchgate.queue import sqs_messages as messages
from batchgate.queue.base import DeadLetter, Delivery, QueueDepth, check_receive_args
from batchgate.urls import query_params

__all__ = ["SqsQueue", "open"]

log = logging.getLogger(__name__)

# SQS quotas, from the SQS Developer Guide's "Amazon SQS message quotas" page.
MAX_WAIT_S = 20  # ReceiveMessage WaitTimeSeconds: the longest long poll
MAX_RECEIVE = 10  # ReceiveMessage MaxNumberOfMessages
MAX_VISIBILITY_S = 43_200  # 12 h: a visibility timeout, and all of a message's leases together
MAX_DELAY_S = 900  # DelaySeconds: 15 min
MAX_RECEIVE_COUNT = 1000  # the largest maxReceiveCount of a redrive policy
RETENTION_S = 1_209_600  # 14 days, the longest MessageRetentionPeriod
MAX_NAME_CHARS = 80

# The backstop redrive is far above any function's `retries`; see the module docstring.
BACKSTOP_RECEIVE_COUNT = MAX_RECEIVE_COUNT
# dead_letter holds the message this long while it copies it to the DLQ.
DEAD_LETTER_HOLD_S = 30.0

_SETTLED = -math.inf
# SQS's answers to a stale, expired or unknown receipt handle: the lease is not ours.
_REFUSAL_CODES = {
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
}
_REFUSAL_WORDS = ("receipthandle", "receipt handle", "has expired", "not available")
_MISSING_QUEUE_CODES = {"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"}
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_PARAMS = {"region", "endpoint_url", "create", "visibility", "dlq"}


def _whole_s(seconds: float, minimum: int = 0) -> int:
    return max(minimum, math.ceil(seconds))


def _refused(exc: AwsError) -> bool:
    if exc.code in _REFUSAL_CODES:
        return True
    return exc.code == "InvalidParameterValue" and any(
        word in exc.message.lower() for word in _REFUSAL_WORDS
    )


def _check_lease(lease_s: float) -> None:
    if not 0 < lease_s <= MAX_VISIBILITY_S:
        raise ValueError(f"lease_s must be > 0 and <= {MAX_VISIBILITY_S} on SQS, got {lease_s}")


class SqsQueue:
    """A Queue on one SQS standard queue and its dead-letter queue; see the module docstring."""

    def __init__(self, client: AwsClient, url: str, dlq_url: str, max_message_bytes: int) -> None:
        self.url = url
        self.dlq_url = dlq_url
        self.max_message_bytes = max_message_bytes
        self._client = client
        # Receipt handle -> (lease deadline, when to forget it) for the leases this instance
        # extended or settled; other receipts are judged by the deadline they carry.
        self._leases: dict[str, tuple[float, float]] = {}
        self._orphans: set[asyncio.Task[None]] = set()

    async def put(self, bodies: Sequence[bytes], delay_s: float = 0.0) -> list[str]:
        """Enqueue messages, all or none per batch of 10 (see the module docstring)."""
        if not 0 <= delay_s <= MAX_DELAY_S:
            raise ValueError(f"delay_s must be >= 0 and <= {MAX_DELAY_S} on SQS, got {delay_s}")
        outgoing = [
            messages.Outgoing.of(secrets.token_urlsafe(12), body, f"body-{index}")
            for index, body in enumerate(bodies)
        ]
        for message in outgoing:
            if message.size > self.max_message_bytes:
                raise BackendError(
                    f"message {message.entry_id} is {message.size} bytes encoded; SQS takes at "
                    f"most {self.max_message_bytes}: put the payload in the store instead"
                )
        await messages.send(self._client, self.url, outgoing, _whole_s(delay_s))
        return [message.message_id for message in outgoing]

    async def receive(self, max_messages: int, wait_s: float, lease_s: float) -> list[Delivery]:
        """Lease up to `max_messages` ready messages, long-polling up to `wait_s` for the first."""
        check_receive_args(max_messages, wait_s, lease_s)
        self._forget_lapsed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            poll_s = min(MAX_WAIT_S, _whole_s(deadline - loop.time()))
            deliveries = await self._poll(min(max_messages, MAX_RECEIVE), poll_s, lease_s)
            if deliveries:
                break
            if loop.time() >= deadline:
                return []
        # More may be ready at once: top up without waiting while SQS hands out full batches.
        batch_size = len(deliveries)
        while batch_size == MAX_RECEIVE and len(deliveries) < max_messages:
            more = await self._poll(min(max_messages - len(deliveries), MAX_RECEIVE), 0, lease_s)
            deliveries += more
            batch_size = len(more)
        return deliveries

    async def ack(self, delivery: Delivery) -> bool:
        """Delete a message for good, only while the caller still holds its lease."""
        return await self._settle(delivery, "delete_message")

    async def extend(self, delivery: Delivery, lease_s: float) -> bool:
        """Renew the lease for `lease_s` seconds from now (a heartbeat)."""
        _check_lease(lease_s)
        lease = self._lease(delivery)
        if lease is None:
            return False
        handle, carried, _ = lease
        started = time.time()
        try:
            await self._client.call(
                "change_message_visibility",
                QueueUrl=self.url,
                ReceiptHandle=handle,
                VisibilityTimeout=_whole_s(lease_s, 1),
            )
        except AwsError as exc:
            if not _refused(exc):
                raise
            self._leases[handle] = (_SETTLED, carried)
            return False
        known = self._leases.get(handle)
        if known is not None and known[0] == _SETTLED:
            return False  # acked, retried or dead-lettered while this call was in flight
        deadline = started + lease_s
        self._leases[handle] = (deadline, max(deadline, carried))
        return True

    async def retry(self, delivery: Delivery, delay_s: float) -> bool:
        """Give the message back, deliverable again after `delay_s` (whole) seconds."""
        if not 0 <= delay_s <= MAX_VISIBILITY_S:
            raise ValueError(f"delay_s must be >= 0 and <= {MAX_VISIBILITY_S}, got {delay_s}")
        return await self._settle(
            delivery, "change_message_visibility", VisibilityTimeout=_whole_s(delay_s)
        )

    async def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        """Copy the message to the DLQ with `reason`, then delete it from the queue."""
        # Holding the message first proves the lease (SQS refuses a stale handle here) and
        # keeps it from anyone else between the copy and the delete.
        if not await self.extend(delivery, DEAD_LETTER_HOLD_S):
            return False
        dead = messages.Outgoing.dead(delivery, reason, time.time())
        await messages.send(self._client, self.dlq_url, [dead], 0)
        return await self._settle(delivery, "delete_message")

    async def release_all(self) -> int:
        """0: SQS cannot end other consumers' leases; they lapse on their own."""
        return 0

    async def depth(self) -> QueueDepth:
        """Approximate counts from SQS's queue attributes (a retry delay counts as in flight)."""
        main, dead = await asyncio.gather(
            self._attributes(self.url, "", "NotVisible", "Delayed"),
            self._attributes(self.dlq_url, "", "NotVisible"),
        )
        return QueueDepth(ready=main[0], in_flight=main[1], delayed=main[2], dead=sum(dead))

    async def list_dead(self, limit: int = 100) -> list[DeadLetter]:
        """Up to `limit` dead letters, oldest first; which ones, past `limit`, is up to SQS."""
        target = min(limit, await self._dead_ready())
        return await messages.list_dead(self._client, self.dlq_url, target)

    async def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        """Move dead letters (all, or the named ones) back as new messages (attempt 1)."""
        wanted = None if message_ids is None else set(message_ids)
        ready = await self._dead_ready()
        return await messages.redrive(self._client, self.dlq_url, self.url, wanted, ready)

    async def check_health(self) -> None:
        """Nothing to check beyond answering (depth and reads show that)."""

    async def aclose(self) -> None:
        """Wait for cancelled polls to release what they got, then close the client."""
        if self._orphans:
            await asyncio.gather(*self._orphans)
        await self._client.aclose()

    async def _poll(self, count: int, wait_s: int, lease_s: float) -> list[Delivery]:
        started = time.time()
        call = asyncio.ensure_future(
            self._client.call(
                "receive_message",
                QueueUrl=self.url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=wait_s,
                VisibilityTimeout=_whole_s(lease_s, 1),
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        )
        try:
            response = await asyncio.shield(call)
        except asyncio.CancelledError:
            orphan = asyncio.create_task(self._release_orphan(call), name="sqs-release-orphan")
            self._orphans.add(orphan)
            orphan.add_done_callback(self._orphans.discard)
            raise
        deadline = started + lease_s
        return [messages.delivery(m, deadline) for m in response.get("Messages", [])]

    async def _release_orphan(self, call: asyncio.Future[dict[str, Any]]) -> None:
        """Make visible again what a cancelled receive's poll got after all."""
        try:
            response = await call
            handles = [m["ReceiptHandle"] for m in response.get("Messages", [])]
            await messages.change_visibility(self._client, self.url, handles, 0)
        except AwsError as exc:
            # They come back on their own when the lease lapses; at least once still holds.
            log.warning("could not release messages of a cancelled SQS receive: %s", exc)

    def _lease(self, delivery: Delivery) -> tuple[str, float, float] | None:
        """(handle, carried deadline, current deadline) while the lease holds, else None."""
        stamp, _, handle = delivery.receipt.partition(":")
        try:
            carried = float(stamp)
        except ValueError:
            return None
        known = self._leases.get(handle)
        deadline = carried if known is None else known[0]
        if not handle or time.time() >= deadline:
            return None
        return handle, carried, deadline

    async def _settle(self, delivery: Delivery, operation: str, **params: Any) -> bool:
        """End the lease with `operation` (delete or change visibility), if still held."""
        lease = self._lease(delivery)
        if lease is None:
            return False
        handle, carried, deadline = lease
        previous = self._leases.get(handle)
        # Settled before the call, so a concurrent call on the same lease is refused.
        self._leases[handle] = (_SETTLED, max(carried, deadline))
        try:
            await self._client.call(operation, QueueUrl=self.url, ReceiptHandle=handle, **params)
        except AwsError as exc:
            if _refused(exc):
                return False
            if previous is None:
                del self._leases[handle]
            else:
                self._leases[handle] = previous
            raise
        return True

    def _forget_lapsed(self) -> None:
        now = time.time()
        for handle in [h for h, (_, forget_at) in self._leases.items() if forget_at <= now]:
            del self._leases[handle]

    async def _attributes(self, queue_url: str, *suffixes: str) -> list[int]:
        names = [f"ApproximateNumberOfMessages{suffix}" for suffix in suffixes]
        response = await self._client.call(
            "get_queue_attributes", QueueUrl=queue_url, AttributeNames=names
        )
        attributes = response.get("Attributes", {})
        return [int(attributes.get(name, 0)) for name in names]

    async def _dead_ready(self) -> int:
        [ready] = await self._attributes(self.dlq_url, "")
        return ready


async def _queue_url(client: AwsClient, name: str, create: bool, **attributes: str) -> str:
    try:
        response = await client.call("get_queue_url", QueueName=name)
    except AwsError as exc:
        if exc.code not in _MISSING_QUEUE_CODES:
            raise
        if not create:
            raise ConfigError(
                f"SQS queue {name!r} does not exist; create it or open with create=1"
            ) from exc
        response = await client.call("create_queue", QueueName=name, Attributes=attributes)
    return str(response["QueueUrl"])


def _parse(url: str) -> tuple[str, str, bool, int, dict[str, str]]:
    parts = urlsplit(url)
    params = query_params(url, _PARAMS)
    name = parts.netloc
    dlq = params.get("dlq") or f"{name}-dlq"
    for queue in (name, dlq):
        if not _NAME.fullmatch(queue) or len(queue) > MAX_NAME_CHARS:
            raise ConfigError(
                f"{url!r}: SQS queue name {queue!r} must be 1-{MAX_NAME_CHARS} letters, digits, "
                "'-' or '_' (FIFO queues are not supported)"
            )
    if parts.path not in ("", "/"):
        raise ConfigError(f"{url!r}: an sqs:// URL names one queue, sqs://NAME?region=…")
    create = params.get("create", "1")
    if create not in ("0", "1"):
        raise ConfigError(f"{url!r}: create must be 0 or 1, got {create!r}")
    try:
        visibility = int(params.get("visibility", "30"))
    except ValueError:
        visibility = -1
    if not 0 <= visibility <= MAX_VISIBILITY_S:
        raise ConfigError(f"{url!r}: visibility must be whole seconds, 0-{MAX_VISIBILITY_S}")
    return name, dlq, create == "1", visibility, params


async def open(url: str) -> SqsQueue:
    """Open (creating, unless create=0) the SQS queue and DLQ named by `sqs://NAME?…`."""
    name, dlq, create, visibility, params = _parse(url)
    client = await open_client("sqs", params)
    try:
        retention = str(RETENTION_S)
        dlq_url = await _queue_url(client, dlq, create, MessageRetentionPeriod=retention)
        dlq_arn = ""
        if create:
            response = await client.call(
                "get_queue_attributes", QueueUrl=dlq_url, AttributeNames=["QueueArn"]
            )
            dlq_arn = response["Attributes"]["QueueArn"]
        policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": BACKSTOP_RECEIVE_COUNT}
        queue_url = await _queue_url(
            client,
            name,
            create,
            MessageRetentionPeriod=retention,
            VisibilityTimeout=str(visibility),
            RedrivePolicy=json.dumps(policy),
        )
        response = await client.call(
            "get_queue_attributes", QueueUrl=queue_url, AttributeNames=["MaximumMessageSize"]
        )
        size = int(response.get("Attributes", {}).get("MaximumMessageSize", 0))
    except BaseException:
        await client.aclose()
        raise
    limit = min(size, messages.MAX_MESSAGE_BYTES) if size else messages.MAX_MESSAGE_BYTES
    return SqsQueue(client, queue_url, dlq_url, limit)
