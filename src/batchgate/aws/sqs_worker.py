"""`sqs_handler`: a worker Lambda on an SQS event source mapping.

Lambda hands the function a batch of SQS records; each is run as a task by the same Worker
code a `batchgate worker` host runs, concurrently up to the executor pool's size. The reply
lists in `batchItemFailures` every message the worker did not delete (retried with a
backoff, released, or cut off by the invocation's end), so Lambda deletes only the settled
ones and the rest come back on their own (see settlements.py).

Each task's time limit is cut to end, with time to commit its outcome, before the last
RELEASE_MARGIN_S of the invocation, so a task that runs too long fails its attempt with a
TimeoutError (and is retried or dead-lettered like any failure). Tasks still running
RELEASE_MARGIN_S before the end (waiting for an executor, or a slow commit) are cancelled
(their executors killed) and their messages made visible again at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from batchgate.aws import runtime
from batchgate.aws.settlements import SettlementLog
from batchgate.errors import ConfigError
from batchgate.queue import sqs_messages as messages
from batchgate.queue.base import Delivery
from batchgate.queue.sqs import SqsQueue
from batchgate.worker.runtime import Worker

log = logging.getLogger("batchgate.aws.worker")

# Time kept at the end of an invocation to release unfinished messages and reply.
RELEASE_MARGIN_S = 3.0


def record_message(record: dict[str, Any]) -> dict[str, Any]:
    """An event source mapping's SQS record in ReceiveMessage's shape."""
    attributes = {
        name: {"StringValue": value.get("stringValue"), "DataType": value.get("dataType")}
        for name, value in (record.get("messageAttributes") or {}).items()
    }
    return {
        "MessageId": record["messageId"],
        "ReceiptHandle": record["receiptHandle"],
        "Body": record["body"],
        "Attributes": record.get("attributes") or {},
        "MessageAttributes": attributes,
    }


def deliveries_of(event: dict[str, Any], lease_deadline: float) -> list[tuple[str, Delivery]]:
    """(SQS message id, Delivery) for each record; a lease is held until `lease_deadline`.

    The event source's visibility timeout (6x the function's timeout in the template) outlasts
    the invocation, so the invocation's end is a safe deadline for its leases.
    """
    records = event.get("Records")
    if not isinstance(records, list):
        raise ConfigError("sqs_handler expects an SQS event (a 'Records' list)")
    return [
        (record["messageId"], messages.delivery(record_message(record), lease_deadline))
        for record in records
    ]


async def run_batch(
    worker: Worker, settlements: SettlementLog, batch: list[tuple[str, Delivery]], budget_s: float
) -> list[str]:
    """Run the batch within `budget_s`; the SQS message ids the worker did not delete."""
    await worker.run_deliveries([delivery for _, delivery in batch], budget_s)
    return [mid for mid, delivery in batch if not settlements.removed(delivery)]


async def handle(event: dict[str, Any], context: runtime.LambdaContext) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = runtime.Deadline(context, loop)
    settings = runtime.load_settings()
    app = runtime.app_ref()
    # SQS receipts carry wall-clock deadlines.
    batch = deliveries_of(event, time.time() + deadline.left_s())
    pool = await runtime.executor_pool(app, settings.workers)
    async with runtime.backends(settings) as (queue, state, store):
        if not isinstance(queue, SqsQueue):
            raise ConfigError(f"sqs_handler needs an sqs:// queue, got {settings.queue_url!r}")
        settlements = SettlementLog(queue)

        def time_left() -> float:
            """Until the batch's end: the worker cuts task limits to commit before it."""
            return deadline.left_s() - RELEASE_MARGIN_S

        worker = Worker(runtime.registry(), settlements, state, store, pool, settings, time_left)
        failed = await run_batch(worker, settlements, batch, time_left())
    log.info("ran %d messages, %d back to the queue", len(batch), len(failed))
    return {"batchItemFailures": [{"itemIdentifier": mid} for mid in failed]}
