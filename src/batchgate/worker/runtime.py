"""The worker loop: receive tasks, run them on executors, heartbeat leases, commit, ack.

At-least-once: a task is acked only after its job's outcome is stored, and the outcome is
committed by a compare-and-set fenced by the attempt number, so a task delivered twice
completes its job once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable
from typing import Any

from batchgate.app import FunctionInfo, Registry
from batchgate.context import request_id
from batchgate.errors import BackendError, BatchgateError
from batchgate.keys import result_key
from batchgate.models import JobError, JobStatus, Task, peek_job_id
from batchgate.queue import Delivery, Queue
from batchgate.settings import Settings
from batchgate.state import State
from batchgate.store import Store
from batchgate.worker.chunks import ChunkRunner, item_error
from batchgate.worker.executor import ExecutorPool, Outcome

log = logging.getLogger("batchgate.worker")

RECEIVE_WAIT_S = 20.0
OUTAGE_BACKOFF_MAX_S = 5.0
# With a time budget (a Lambda invocation), a task's limit leaves this much to commit it.
COMMIT_MARGIN_S = 2.0


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff with jitter: about base * 2^(attempt-1), capped, in [50%, 100%]."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return float(ceiling * random.uniform(0.5, 1.0))


class Worker:
    """Feeds an executor pool from the queue until told to stop."""

    def __init__(
        self,
        registry: Registry,
        queue: Queue,
        state: State,
        store: Store,
        pool: ExecutorPool,
        settings: Settings,
        time_left: Callable[[], float] | None = None,
        receive_until_left_s: float = 0.0,
    ) -> None:
        """`time_left`, when given, is the seconds this worker has left to live: every task's
        time limit is cut to fit in it (a Lambda invocation's remaining time), and the worker
        stops receiving once only `receive_until_left_s` is left, its long polls cut to end
        by then (give or take the queue's rounding of waits), so none outlasts the stop."""
        self.registry = registry
        self.queue = queue
        self.state = state
        self.store = store
        self.pool = pool
        self.settings = settings
        self.time_left = time_left
        self.receive_until_left_s = receive_until_left_s
        # Tasks held at once: one running per executor plus as many again waiting, so an
        # executor never idles for a receive round trip.
        self.capacity = pool.size * 2
        self.chunks = ChunkRunner(queue, state, store, pool)
        self._in_flight: dict[asyncio.Task[None], Delivery] = {}
        self._slot_freed = asyncio.Event()
        self._receiving = True
        self._outage_s = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then drain: finish or release the tasks in hand."""
        async with asyncio.TaskGroup() as group:
            heartbeat = group.create_task(self._heartbeat_loop(), name="heartbeat")
            receiver = group.create_task(self._receive_loop(), name="receive")
            await stop.wait()
            self._receiving = False
            receiver.cancel()
            await self._drain()
            heartbeat.cancel()

    async def _receive_loop(self) -> None:
        while self._receiving:
            free = self.capacity - len(self._in_flight)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            wait_s = self._receive_wait_s()
            if wait_s is None:
                return  # the time to take tasks is over; `run` drains when told to stop
            try:
                deliveries = await self.queue.receive(free, wait_s, self.settings.lease_s)
            except BackendError as exc:
                await self._backend_down("receive", exc)
                continue
            self._outage_s = 0.0
            for delivery in deliveries:
                self._start(delivery)

    def _start(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._handle(delivery), name="task")
        self._in_flight[task] = delivery
        task.add_done_callback(self._task_done)

    def _receive_wait_s(self) -> float | None:
        """The next receive's long poll, or None once this worker must take no more tasks."""
        if self.time_left is None:
            return RECEIVE_WAIT_S
        left = self.time_left() - self.receive_until_left_s
        if left <= 0:
            return None
        return min(RECEIVE_WAIT_S, left)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            # A backend failure mid-task: the lease lapses and the task is delivered again.
            log.error("task failed in the worker", exc_info=task.exception())

    async def run_deliveries(self, deliveries: list[Delivery], budget_s: float) -> None:
        """Run deliveries this worker did not receive itself (a Lambda event's records) for
        at most `budget_s`, then stop and release the rest, as a drain does."""
        for delivery in deliveries:
            self._start(delivery)
        await self._drain(budget_s)

    async def _drain(self, timeout_s: float | None = None) -> None:
        """Give in-flight tasks `timeout_s` (default `drain_s`) to finish, then kill them and
        release their leases."""
        tasks = list(self._in_flight)
        if not tasks:
            return
        timeout_s = self.settings.drain_s if timeout_s is None else max(0.0, timeout_s)
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        leftovers = [self._in_flight[t] for t in pending if t in self._in_flight]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for delivery in leftovers:
            log.warning("message %s still running at the stop: released", delivery.message_id)
            try:
                await self.queue.retry(delivery, 0.0)
            except BackendError as exc:  # it comes back when its lease lapses anyway
                log.warning("could not release message %s: %s", delivery.message_id, exc)

    async def _backend_down(self, what: str, exc: BackendError) -> None:
        """A backend is unreachable (a restart, a network blip): wait and try again, backing
        off up to OUTAGE_BACKOFF_MAX_S. The loop never dies of it; leases it misses lapse
        and their tasks are delivered again."""
        self._outage_s = min(OUTAGE_BACKOFF_MAX_S, max(0.1, self._outage_s * 2))
        log.warning("%s failed, retrying in %.1f s: %s", what, self._outage_s, exc.message)
        await asyncio.sleep(self._outage_s)

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat()
            except BackendError as exc:
                log.warning("heartbeat failed: %s", exc.message)

    async def _heartbeat(self) -> None:
        for task, delivery in list(self._in_flight.items()):
            if not await self.queue.extend(delivery, self.settings.lease_s):
                # Another attempt owns it now; ours could no longer commit anything.
                task.cancel()
                continue
            job_id = _job_id_of(delivery)
            job = await self.state.get_job(job_id) if job_id else None
            if job is not None and job.status is JobStatus.CANCELLED:
                task.cancel()  # kills the executor running it
                await self.queue.ack(delivery)

    def function(self, name: str) -> FunctionInfo:
        """The registered function, its time limit cut to the time this worker has left."""
        info = self.registry.get(name)
        if self.time_left is None:
            return info
        limit = max(0.001, min(info.timeout_s, self.time_left() - COMMIT_MARGIN_S))
        return info if limit == info.timeout_s else dataclasses.replace(info, timeout_s=limit)

    async def handle(self, delivery: Delivery) -> None:
        """Run one delivered task to its end: commit and ack, retry, or dead-letter it."""
        await self._handle(delivery)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            task = Task.decode(delivery.body)
        except (ValueError, KeyError, TypeError) as exc:
            await self._undecodable(delivery, exc)
            return
        # Each delivery runs in an asyncio task of its own, so this tags only its log lines.
        request_id.set(task.request_id)
        if task.chunk is not None:
            await self._handle_chunk(delivery, task)
            return
        job = await self.state.start_attempt(task.job_id, delivery.attempt)
        if job is None or job.status.terminal:
            await self.queue.ack(delivery)  # cancelled, or finished by an earlier attempt
            return
        try:
            info = self.function(task.function)
        except BatchgateError:
            error = JobError("UnknownFunction", f"no worker knows function {task.function!r}")
            await self._fail(delivery, task, error)
            return
        if delivery.attempt > info.max_attempts:
            # Crashed attempts (a killed executor or worker) count too.
            error = JobError("AttemptsExhausted", f"gave up after {info.max_attempts} attempts")
            await self._fail(delivery, task, error)
            return
        payload = task.payload
        if payload is None:
            assert task.payload_ref is not None
            payload = await self.store.get(task.payload_ref)
        outcome = await self.pool.run(b"c", info.name, payload, info.timeout_s)
        if outcome.ok:
            await self._succeed(delivery, task, outcome)
        else:
            await self._attempt_failed(delivery, task, info, outcome)

    async def _handle_chunk(self, delivery: Delivery, task: Task) -> None:
        job = await self.state.get_job(task.job_id)
        if job is None or job.status.terminal:
            await self.queue.ack(delivery)  # cancelled, failed by another chunk, or expired
            return
        try:
            info = self.function(task.function)
        except BatchgateError:
            error = JobError("UnknownFunction", f"no worker knows function {task.function!r}")
            await self.chunks.give_up(delivery, task, FunctionInfo(task.function), job, error)
            return
        if delivery.attempt > info.max_attempts:
            error = JobError("AttemptsExhausted", f"gave up after {info.max_attempts} attempts")
            await self.chunks.give_up(delivery, task, info, job, error)
            return
        failure = await self.chunks.run(delivery, task, info, job)
        if failure is None:
            return
        error = item_error(task, info.chunk_size, failure)
        if failure.final or delivery.attempt >= info.max_attempts:
            await self.chunks.give_up(delivery, task, info, job, error)
        else:
            await self.queue.retry(delivery, self._backoff_s(delivery.attempt))

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

    def _backoff_s(self, attempt: int) -> float:
        return backoff_s(attempt, self.settings.retry_backoff_s, self.settings.retry_backoff_max_s)

    async def _succeed(self, delivery: Delivery, task: Task, outcome: Outcome) -> None:
        result = outcome.result or b"null"
        fields: dict[str, Any] = {}
        if len(result) <= self.settings.inline_max_bytes:
            fields["result"] = result
        else:
            await self.store.put(result_key(task.job_id), result)
            fields["result_ref"] = result_key(task.job_id)
        await self.state.finish(task.job_id, delivery.attempt, JobStatus.SUCCEEDED, **fields)
        await self.queue.ack(delivery)

    async def _attempt_failed(
        self, delivery: Delivery, task: Task, info: FunctionInfo, outcome: Outcome
    ) -> None:
        assert outcome.error is not None
        error = outcome.error
        if outcome.final or delivery.attempt >= info.max_attempts:
            await self._fail(delivery, task, error)
            return
        delay = self._backoff_s(delivery.attempt)
        if await self.state.requeue(task.job_id, delivery.attempt, error) is not None:
            await self.queue.retry(delivery, delay)

    async def _fail(self, delivery: Delivery, task: Task, error: JobError) -> None:
        failed = await self.state.finish(
            task.job_id, delivery.attempt, JobStatus.FAILED, error=error
        )
        if failed is None:
            await self.queue.ack(delivery)  # another attempt settled the job first
        else:
            await self.queue.dead_letter(delivery, f"{error.type}: {error.message}")


def _job_id_of(delivery: Delivery) -> str | None:
    return peek_job_id(delivery.body)
