"""Map-job chunks: run one chunk, store its results, and fan in exactly once.

A chunk may be delivered more than once. Its results blob is overwritten whole (a reader
sees one complete attempt), `State.record_chunk` counts it once, and whichever delivery
brings the count to the job's total commits the job with a compare-and-set.
"""

from __future__ import annotations

from batchgate.app import FunctionInfo
from batchgate.keys import chunk_input_key, chunk_result_key, map_result_key
from batchgate.models import Job, JobError, JobStatus, Task, dumps
from batchgate.queue import Delivery, Queue
from batchgate.state import State
from batchgate.store import Store
from batchgate.worker.executor import ExecutorPool, Outcome


class ChunkRunner:
    """Runs the chunks of map jobs on an executor pool."""

    def __init__(self, queue: Queue, state: State, store: Store, pool: ExecutorPool) -> None:
        self.queue = queue
        self.state = state
        self.store = store
        self.pool = pool

    async def run(
        self, delivery: Delivery, task: Task, info: FunctionInfo, job: Job
    ) -> Outcome | None:
        """Run the chunk: None once it is settled, or the failed attempt's outcome (the
        caller retries it or gives up, by attempts left)."""
        assert task.chunk is not None
        if job.status is JobStatus.QUEUED or delivery.attempt > job.attempts:
            # For a map job `attempts` is the highest attempt any chunk has reached.
            await self.state.start_attempt(job.id, delivery.attempt)
        payload = await self.store.get(task.payload_ref or chunk_input_key(job.id, task.chunk))
        outcome = await self.pool.run(b"m", info.name, payload, info.timeout_s)
        if not outcome.ok:
            return outcome
        failed, lines = _split_reply(outcome)
        items = payload.count(b"\n")
        await self._settle(delivery, task, job, lines, items - failed, failed)
        return None

    async def give_up(
        self, delivery: Delivery, task: Task, info: FunctionInfo, job: Job, error: JobError
    ) -> None:
        """The chunk's last attempt failed: fail the job, or (errors="collect") record every
        item of the chunk as failed with the chunk's error."""
        assert task.chunk is not None
        if info.errors == "collect":
            payload = await self.store.get(task.payload_ref or chunk_input_key(job.id, task.chunk))
            items = payload.count(b"\n")
            line = dumps({"error": error.to_json()}) + b"\n"
            await self._settle(delivery, task, job, line * items, 0, items)
            return
        failed = await self.state.finish(job.id, None, JobStatus.FAILED, error=error)
        if failed is None:
            await self.queue.ack(delivery)
        else:
            await self.queue.dead_letter(delivery, f"{error.type}: {error.message}")

    async def _settle(
        self, delivery: Delivery, task: Task, job: Job, lines: bytes, done: int, failed: int
    ) -> None:
        assert task.chunk is not None and task.chunks is not None
        await self.store.put(chunk_result_key(job.id, task.chunk), lines)
        tally = await self.state.record_chunk(job.id, task.chunk, done, failed)
        if tally is not None:
            progress, _ = tally
            # Every delivery that sees the full count tries; the compare-and-set picks one.
            if progress.done + progress.failed >= progress.total:
                manifest = dumps({"chunks": task.chunks, "items": progress.total})
                await self.store.put(map_result_key(job.id), manifest)
                await self.state.finish(
                    job.id, None, JobStatus.SUCCEEDED, result_ref=map_result_key(job.id)
                )
        await self.queue.ack(delivery)


def item_error(task: Task, chunk_size: int, outcome: Outcome) -> JobError:
    """The chunk's error, naming the failing item's index in the whole batch when known."""
    assert outcome.error is not None and task.chunk is not None
    if outcome.index is None:
        return outcome.error
    index = task.chunk * chunk_size + outcome.index
    return JobError(outcome.error.type, f"item {index}: {outcome.error.message}")


def _split_reply(outcome: Outcome) -> tuple[int, bytes]:
    assert outcome.result is not None
    head, _, lines = outcome.result.partition(b"\n")
    return int(head), lines
