"""Map-job chunks: store a chunk's results and fan in exactly once, or give up on it.

A chunk may be delivered more than once. Its results blob is overwritten whole (a reader
sees one complete attempt), `State.record_chunk` counts it once, and whichever delivery
brings the count to the job's total commits the job with a compare-and-set.
"""

from __future__ import annotations

from batchgate.app import FunctionInfo
from batchgate.keys import chunk_input_key, chunk_result_key, map_result_key
from batchgate.models import Job, JobError, JobStatus, Progress, Task, dumps
from batchgate.queue import Delivery, Queue
from batchgate.state import State
from batchgate.store import Store
from batchgate.worker.executor import Outcome


class ChunkRunner:
    """Settles the chunks of map jobs."""

    def __init__(self, queue: Queue, state: State, store: Store) -> None:
        self.queue = queue
        self.state = state
        self.store = store

    async def settle(self, delivery: Delivery, task: Task, job: Job, outcome: Outcome) -> None:
        """The chunk ran: store its results, count it, commit the job if it was the last.
        Raises BackendError if the results cannot be stored."""
        failed, lines = _split_reply(outcome)
        items = lines.count(b"\n")
        await self._settle(delivery, task, job, lines, items - failed, failed)

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
            await self._commit_if_complete(job.id, task, tally[0])
        await self.queue.ack(delivery)

    async def settle_counted(self, delivery: Delivery, task: Task) -> None:
        """A delivery of a chunk that is already counted: if every chunk is, commit the job
        (the delivery that counted the last one may have died before it could), then ack."""
        job = await self.state.get_job(task.job_id)
        if job is not None and not job.status.terminal:
            await self._commit_if_complete(job.id, task, job.progress)
        await self.queue.ack(delivery)

    async def _commit_if_complete(self, job_id: str, task: Task, progress: Progress) -> None:
        # Every delivery that sees the full count tries; the compare-and-set picks one.
        if progress.done + progress.failed >= progress.total:
            manifest = dumps({"chunks": task.chunks, "items": progress.total})
            await self.store.put(map_result_key(job_id), manifest)
            await self.state.finish(
                job_id, None, JobStatus.SUCCEEDED, result_ref=map_result_key(job_id)
            )


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
