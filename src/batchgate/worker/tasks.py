"""One delivered task, run to its end: its attempt counted when the function starts, its
outcome committed, or a retry, or a give-up, each decided by the two budgets of
`batchgate.attempts` (the function's `retries`, and BATCHGATE_CRASH_RETRIES for
failures of the infrastructure).

At-least-once: a task is acked only after its job's outcome is stored, and a plain job's
outcome is committed by a compare-and-set fenced by the attempt number.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from batchgate.app import FunctionInfo
from batchgate.attempts import PLAIN, Attempt, crash_error
from batchgate.context import request_id
from batchgate.errors import BackendError, BatchgateError, NotFound
from batchgate.keys import chunk_input_key, result_key
from batchgate.models import Job, JobError, JobStatus, Task, peek_job_id
from batchgate.queue import Delivery, Queue
from batchgate.settings import Settings
from batchgate.state import State
from batchgate.store import Store
from batchgate.worker.chunks import ChunkRunner, item_error
from batchgate.worker.executor import ExecutorPool, Outcome

log = logging.getLogger("batchgate.worker")


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff with jitter: about base * 2^(attempt-1), capped, in [50%, 100%]."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return float(ceiling * random.uniform(0.5, 1.0))


class TaskRunner:
    """Runs delivered tasks on an executor pool; `function` names a task's FunctionInfo
    (raising BatchgateError for an unknown one)."""

    def __init__(
        self,
        queue: Queue,
        state: State,
        store: Store,
        pool: ExecutorPool,
        settings: Settings,
        function: Callable[[str], FunctionInfo],
    ) -> None:
        self.queue = queue
        self.state = state
        self.store = store
        self.pool = pool
        self.settings = settings
        self.function = function
        self.chunks = ChunkRunner(queue, state, store)

    async def handle(self, delivery: Delivery) -> None:
        """Run one delivered task to its end: commit and ack, retry, or dead-letter it."""
        try:
            task = Task.decode(delivery.body)
        except (ValueError, KeyError, TypeError) as exc:
            await self._undecodable(delivery, exc)
            return
        # Each delivery runs in an asyncio task of its own, so this tags only its log lines.
        request_id.set(task.request_id)
        if task.chunk is None and task.payload is not None:
            job = None  # start_attempt checks the job: no read needed before it
        else:
            job = await self.state.get_job(task.job_id)
            if job is None or job.status.terminal:
                await self.queue.ack(delivery)  # cancelled, settled, failed by a chunk, expired
                return
        try:
            info = self.function(task.function)
        except BatchgateError:
            error = JobError("UnknownFunction", f"no worker knows function {task.function!r}")
            await self._give_up(delivery, task, FunctionInfo(task.function), job, None, error)
            return
        try:
            payload = await self._payload(task)
        except NotFound as exc:
            error = JobError("PayloadMissing", f"the task's input is gone from the store: {exc}")
            await self._give_up(delivery, task, info, job, None, error)
            return
        # Counted only now, with an executor free for it: a task held but never run
        # spends nothing.
        attempt: Attempt | None = None

        async def start() -> bool:
            nonlocal attempt
            attempt = await self.state.start_attempt(
                task.job_id, delivery.attempt, _task_number(task), self.settings.crash_retries
            )
            return attempt is not None and attempt.started

        mode = b"c" if task.chunk is None else b"m"
        outcome = await self.pool.run(mode, info.name, payload, info.timeout_s, on_start=start)
        if attempt is None:
            if task.chunk is not None:
                await self.chunks.settle_counted(delivery, task)
            else:
                await self.queue.ack(delivery)  # settled, cancelled, or a later delivery runs it
            return
        job = attempt.job
        if not attempt.started:
            log.error(
                "task of job %s crashed %d times; giving up", task.job_id, attempt.crashes,
                extra=_fields(task, attempt),
            )  # fmt: skip
            await self._give_up(delivery, task, info, job, attempt, crash_error(attempt))
            return
        assert outcome is not None
        if outcome.ok:
            await self._succeed(delivery, task, job, attempt, outcome)
        else:
            await self._attempt_failed(delivery, task, info, job, attempt, outcome)

    async def _payload(self, task: Task) -> bytes:
        if task.payload is not None:
            return task.payload
        if task.chunk is not None:
            key = task.payload_ref or chunk_input_key(task.job_id, task.chunk)
            return await self.store.get(key)
        assert task.payload_ref is not None
        return await self.store.get(task.payload_ref)

    async def _succeed(
        self, delivery: Delivery, task: Task, job: Job, attempt: Attempt, outcome: Outcome
    ) -> None:
        try:
            if task.chunk is not None:
                await self.chunks.settle(delivery, task, job, outcome)
                return
            result = outcome.result or b"null"
            fields: dict[str, Any] = {}
            if len(result) <= self.settings.inline_max_bytes:
                fields["result"] = result
            else:
                await self.store.put(result_key(task.job_id), result)
                fields["result_ref"] = result_key(task.job_id)
        except BackendError as exc:
            # The function did its part; storing its result failed (a full disk, a store
            # outage): a failure of the infrastructure, not of the function.
            error = JobError("StorageError", f"could not store the result: {exc.public}")
            await self._crashed(delivery, task, attempt, error)
            return
        await self.state.finish(task.job_id, attempt.number, JobStatus.SUCCEEDED, **fields)
        await self.queue.ack(delivery)

    async def _attempt_failed(
        self,
        delivery: Delivery,
        task: Task,
        info: FunctionInfo,
        job: Job,
        attempt: Attempt,
        outcome: Outcome,
    ) -> None:
        assert outcome.error is not None
        if outcome.crashed:
            await self._crashed(delivery, task, attempt, outcome.error)
            return
        error = outcome.error if task.chunk is None else item_error(task, info.chunk_size, outcome)
        failures = attempt.failures + 1
        if outcome.final or failures >= info.max_attempts:
            await self._give_up(delivery, task, info, job, attempt, error)
            return
        log.info(
            "attempt %d of job %s failed (%s); retrying", attempt.number, task.job_id,
            error.type, extra=_fields(task, attempt),
        )  # fmt: skip
        await self._retry(delivery, task, attempt, error, by_function=True, delay_n=failures)

    async def _crashed(
        self, delivery: Delivery, task: Task, attempt: Attempt, error: JobError
    ) -> None:
        """The attempt's infrastructure failed (its executor died, its result could not be
        stored): retried on the crash budget, which the next start checks."""
        log.warning(
            "attempt %d of job %s crashed: %s: %s", attempt.number, task.job_id, error.type,
            error.message, extra=_fields(task, attempt),
        )  # fmt: skip
        await self._retry(
            delivery, task, attempt, error, by_function=False, delay_n=attempt.crashes + 1
        )

    async def _retry(
        self,
        delivery: Delivery,
        task: Task,
        attempt: Attempt,
        error: JobError,
        *,
        by_function: bool,
        delay_n: int,
    ) -> None:
        reported = await self.state.requeue(
            task.job_id, attempt.number, error, _task_number(task), by_function
        )
        if reported is None:
            await self.queue.ack(delivery)  # the job is settled, or a later attempt runs it
            return
        delay = backoff_s(delay_n, self.settings.retry_backoff_s, self.settings.retry_backoff_max_s)
        await self.queue.retry(delivery, delay)

    async def _give_up(
        self,
        delivery: Delivery,
        task: Task,
        info: FunctionInfo,
        job: Job | None,
        attempt: Attempt | None,
        error: JobError,
    ) -> None:
        """The task's last attempt failed: fail the job (or, for a chunk under
        errors="collect", its items) and dead-letter the task."""
        if task.chunk is not None:
            assert job is not None
            await self.chunks.give_up(delivery, task, info, job, error)
            return
        fence = None if attempt is None else attempt.number
        failed = await self.state.finish(task.job_id, fence, JobStatus.FAILED, error=error)
        if failed is None:
            await self.queue.ack(delivery)  # another attempt settled the job first
        else:
            await self.queue.dead_letter(delivery, f"{error.type}: {error.message}")

    async def _undecodable(self, delivery: Delivery, exc: Exception) -> None:
        """A message that is not a task: fail its job (when its id can be read) and
        dead-letter it. Decoding it again could never work, so no retry is spent."""
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)
        error = JobError("UndecodableTask", f"the task message could not be decoded: {reason}")
        job_id = peek_job_id(delivery.body)
        log.error(
            "undecodable task message %s: %s", delivery.message_id, reason,
            extra={"job_id": job_id, "attempt": delivery.attempt},
        )  # fmt: skip
        if job_id is not None:
            await self.state.finish(job_id, None, JobStatus.FAILED, error=error)
        await self.queue.dead_letter(delivery, f"{error.type}: {error.message}")


def _task_number(task: Task) -> int:
    return PLAIN if task.chunk is None else task.chunk


def _fields(task: Task, attempt: Attempt) -> dict[str, Any]:
    return {"job_id": task.job_id, "function": task.function, "attempt": attempt.number}
