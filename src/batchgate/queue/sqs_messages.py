"""SQS message plumbing for the SQS queue: encoding, batching, and passes over the DLQ.

A body goes out as SQS text when it is UTF-8 made only of the characters SQS accepts, and
as base64 (flagged by the `bg-enc` attribute) otherwise, so any bytes round-trip. The
batchgate message id travels as the `bg-id` attribute: SQS's own MessageId changes when a
message is copied to the DLQ and back.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from batchgate.aws_client import AwsClient
from batchgate.errors import BackendError
from batchgate.queue.base import DeadLetter, Delivery

# SQS's message size quota, body plus attributes: 1 MiB since August 2025 (256 KiB before);
# moto 5.2 enforces the same. A queue's MaximumMessageSize attribute may lower it.
MAX_MESSAGE_BYTES = 1_048_576
# SendMessageBatch: at most 10 entries, whose sizes add up to at most 1 MiB.
MAX_BATCH = 10
MAX_BATCH_BYTES = 1_048_576
# list_dead and redrive hide the dead letters they have looked at for this long, so one
# pass sees each once; they release them at the end of the pass.
SCAN_HIDE_S = 60
# A dead letter's reason is cut to this many characters (it is an attribute of the message).
MAX_REASON_CHARS = 4096

ID_ATTR = "bg-id"
ENC_ATTR = "bg-enc"
REASON_ATTR = "bg-reason"
ATTEMPTS_ATTR = "bg-attempts"
FAILED_AT_ATTR = "bg-failed-at"
_CARRIED = (ID_ATTR, ENC_ATTR)

# The characters an SQS message body or string attribute may hold (the XML 1.0 set).
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _encode(body: bytes) -> tuple[str, str | None]:
    """(SQS body text, encoding attribute or None); SQS bodies may not be empty."""
    if not body:
        return "-", "empty"
    try:
        text = body.decode()
    except UnicodeDecodeError:
        text = ""
    if text and not _NOT_SQS_TEXT.search(text):
        return text, None
    return base64.b64encode(body).decode("ascii"), "base64"


def _decode(text: str, encoding: str | None) -> bytes:
    if encoding == "empty":
        return b""
    if encoding == "base64":
        return base64.b64decode(text)
    return text.encode()


def _string(attributes: dict[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    return None if value is None else str(value.get("StringValue"))


def _text(value: str) -> str:
    return _NOT_SQS_TEXT.sub("\ufffd", value)


@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    """One message ready for SendMessageBatch."""

    message_id: str
    entry_id: str
    body: str
    attributes: dict[str, dict[str, str]]

    @classmethod
    def of(cls, message_id: str, body: bytes, entry_id: str) -> Outgoing:
        text, encoding = _encode(body)
        attributes = {ID_ATTR: _attr(message_id)}
        if encoding is not None:
            attributes[ENC_ATTR] = _attr(encoding)
        return cls(message_id, entry_id, text, attributes)

    @classmethod
    def dead(cls, delivery: Delivery, reason: str, failed_at: float) -> Outgoing:
        message = cls.of(delivery.message_id, delivery.body, "dead")
        message.attributes[REASON_ATTR] = _attr(_text(reason[:MAX_REASON_CHARS]) or "-")
        message.attributes[ATTEMPTS_ATTR] = _attr(str(delivery.attempt), "Number")
        message.attributes[FAILED_AT_ATTR] = _attr(repr(failed_at), "Number")
        return message

    @classmethod
    def redriven(cls, raw: dict[str, Any]) -> Outgoing:
        """A dead letter as a new message: same id, body and encoding; attempts start over."""
        carried = raw.get("MessageAttributes", {})
        attributes = {
            name: _attr(str(carried[name]["StringValue"])) for name in _CARRIED if name in carried
        }
        attributes.setdefault(ID_ATTR, _attr(str(raw["MessageId"])))
        return cls(attributes[ID_ATTR]["StringValue"], raw["MessageId"], raw["Body"], attributes)

    @property
    def size(self) -> int:
        """Bytes counted against SQS's message size quota."""
        size = len(self.body.encode())
        for name, value in self.attributes.items():
            size += len(name) + len(value["DataType"]) + len(value["StringValue"].encode())
        return size

    def entry(self, delay_s: int) -> dict[str, Any]:
        return {
            "Id": re.sub(r"[^\w-]", "_", self.entry_id)[:80],
            "MessageBody": self.body,
            "DelaySeconds": delay_s,
            "MessageAttributes": self.attributes,
        }


def _attr(value: str, data_type: str = "String") -> dict[str, str]:
    return {"DataType": data_type, "StringValue": value}


def batches(outgoing: Sequence[Outgoing]) -> Iterator[list[Outgoing]]:
    """Groups of at most MAX_BATCH messages and MAX_BATCH_BYTES, in order."""
    batch: list[Outgoing] = []
    size = 0
    for message in outgoing:
        if batch and (len(batch) == MAX_BATCH or size + message.size > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(message)
        size += message.size
    if batch:
        yield batch


def id_of(raw: dict[str, Any]) -> str:
    """The batchgate id of a received message (SQS's MessageId if it has none)."""
    return _string(raw.get("MessageAttributes", {}), ID_ATTR) or str(raw["MessageId"])


def delivery(raw: dict[str, Any], deadline: float) -> Delivery:
    """A received message as a Delivery whose receipt carries the lease deadline."""
    attributes = raw.get("MessageAttributes", {})
    body = _decode(raw["Body"], _string(attributes, ENC_ATTR))
    attempt = int(raw.get("Attributes", {}).get("ApproximateReceiveCount", 1))
    return Delivery(id_of(raw), body, attempt, f"{deadline:.6f}:{raw['ReceiptHandle']}")


def dead_letter(raw: dict[str, Any]) -> DeadLetter:
    """A message of the DLQ as a DeadLetter (one SQS moved there itself has no reason)."""
    attributes = raw.get("MessageAttributes", {})
    return DeadLetter(
        message_id=id_of(raw),
        body=_decode(raw["Body"], _string(attributes, ENC_ATTR)),
        attempts=int(_string(attributes, ATTEMPTS_ATTR) or 0),
        reason=_string(attributes, REASON_ATTR) or "moved by the queue's SQS redrive policy",
        failed_at=float(_string(attributes, FAILED_AT_ATTR) or 0.0),
    )


async def change_visibility(
    client: AwsClient, queue_url: str, handles: Sequence[str], timeout_s: int
) -> None:
    """ChangeMessageVisibilityBatch over any number of handles; refused entries are skipped."""
    for start in range(0, len(handles), MAX_BATCH):
        entries = [
            {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": timeout_s}
            for index, handle in enumerate(handles[start : start + MAX_BATCH])
        ]
        await client.call("change_message_visibility_batch", QueueUrl=queue_url, Entries=entries)


class DeadScan:
    """One pass over a dead-letter queue, hiding what it has seen until the pass ends.

    SQS cannot browse a queue: a pass receives its messages with a visibility timeout of
    `hide_s`, so it meets each message once, and makes the ones it kept visible again on
    exit (the others it deleted).
    """

    def __init__(self, client: AwsClient, queue_url: str, hide_s: int) -> None:
        self._client = client
        self._queue_url = queue_url
        self._hide_s = hide_s
        self._seen: set[str] = set()
        self._kept: list[str] = []

    async def __aenter__(self) -> DeadScan:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        kept, self._kept = self._kept, []
        await change_visibility(self._client, self._queue_url, kept, 0)

    async def next_batch(self, count: int) -> list[dict[str, Any]] | None:
        """Up to `count` (at most 10) unseen messages, or None when the queue has no more."""
        # A short poll may miss messages on a busy SQS fleet; one long poll confirms the end.
        for wait_s in (0, 1):
            response = await self._client.call(
                "receive_message",
                QueueUrl=self._queue_url,
                MaxNumberOfMessages=max(1, min(count, MAX_BATCH)),
                WaitTimeSeconds=wait_s,
                VisibilityTimeout=self._hide_s,
                MessageAttributeNames=["All"],
            )
            batch = [m for m in response.get("Messages", []) if m["MessageId"] not in self._seen]
            if batch:
                self._seen.update(m["MessageId"] for m in batch)
                return batch
        return None

    def keep(self, batch: Sequence[dict[str, Any]]) -> None:
        """Leave these messages in the queue: they become visible when the pass ends."""
        self._kept += [m["ReceiptHandle"] for m in batch]

    async def delete(self, batch: Sequence[dict[str, Any]]) -> None:
        """Delete these messages from the queue (they were copied elsewhere)."""
        for start in range(0, len(batch), MAX_BATCH):
            entries = [
                {"Id": str(index), "ReceiptHandle": m["ReceiptHandle"]}
                for index, m in enumerate(batch[start : start + MAX_BATCH])
            ]
            await self._client.call(
                "delete_message_batch", QueueUrl=self._queue_url, Entries=entries
            )


async def send(client: AwsClient, queue_url: str, outgoing: list[Outgoing], delay_s: int) -> None:
    """SendMessageBatch in batches; raises BackendError naming the entries SQS refused."""
    for batch in batches(outgoing):
        entries = [message.entry(delay_s) for message in batch]
        response = await client.call("send_message_batch", QueueUrl=queue_url, Entries=entries)
        failed = response.get("Failed") or []
        if failed:
            detail = "; ".join(
                f"entry {f.get('Id')}: {f.get('Code')} {f.get('Message', '')}".rstrip()
                for f in failed
            )
            raise BackendError(
                f"SQS refused part of a batch ({detail}); the batch's other messages and "
                "all earlier batches were enqueued"
            )


async def list_dead(client: AwsClient, dlq_url: str, limit: int) -> list[DeadLetter]:
    """Up to `limit` messages of the DLQ as dead letters, oldest first."""
    found: list[DeadLetter] = []
    async with DeadScan(client, dlq_url, SCAN_HIDE_S) as scan:
        while len(found) < limit:
            batch = await scan.next_batch(limit - len(found))
            if batch is None:
                break
            found += [dead_letter(m) for m in batch]
            scan.keep(batch)
    found.sort(key=lambda dead: dead.failed_at)
    return found


async def redrive(
    client: AwsClient, dlq_url: str, queue_url: str, wanted: set[str] | None, ready: int
) -> int:
    """Copy the DLQ's messages (or the `wanted` ids) to the queue as new messages."""
    moved = 0
    async with DeadScan(client, dlq_url, SCAN_HIDE_S) as scan:
        while ready > 0 and (wanted is None or wanted):
            batch = await scan.next_batch(MAX_BATCH)
            if batch is None:
                break
            ready -= len(batch)
            chosen = [m for m in batch if wanted is None or id_of(m) in wanted]
            scan.keep([m for m in batch if m not in chosen])
            if not chosen:
                continue
            await send(client, queue_url, [Outgoing.redriven(m) for m in chosen], 0)
            await scan.delete(chosen)  # a failure here leaves a copy in both: at least once
            moved += len(chosen)
            if wanted is not None:
                wanted -= {id_of(m) for m in chosen}
    return moved
