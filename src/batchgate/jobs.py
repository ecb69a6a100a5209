"""Submit, wait for, read and cancel jobs: the one place that composes the three ports."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from batchgate.app import FunctionInfo, Registry
from batchgate.context import current_request_id
from batchgate.errors import BackendError, IdempotencyConflict, NotFound, Overloaded
from batchgate.keys import (
    chunk_input_key,
    chunk_result_key,
    map_prefixes,
    map_result_key,
    payload_key,
    result_key,
)
from batchgate.models import FunctionKind, Job, JobStatus, Progress, Task, dumps, new_job_id
from batchgate.queue import Queue
from batchgate.settings import Settings
from batchgate.state import State, Watch
from batchgate.store import Store

log = logging.getLogger("batchgate.jobs")

# How often a submitter re-reads the queue depth for backpressure, at most.
_DEPTH_CHECK_S = 0.5
# Chunk tasks enqueued per queue call.
_ENQUEUE_BATCH = 500
# Expired jobs read and deleted per round of delete_expired.
EXPIRY_BATCH = 500
EXPIRY_INTERVAL_MAX_S = 60.0


def request_hash(function: str, body: bytes) -> str:
    return hashlib.sha256(function.encode() + b"\0" + body).hexdigest()


class Jobs:
    """The job-level operations a gateway offers, over whichever backends are configured."""

    def __init__(
        self, registry: Registry, queue: Queue, state: State, store: Store, settings: Settings
    ) -> None:
        self.registry = registry
        self.queue = queue
        self.state = state
        self.store = store
        self.settings = settings
        self._depth_checked_at = 0.0
        self._depth_full = False
        self._stopping = asyncio.Event()
        self._rescues: dict[str, asyncio.Task[None]] = {}

    def stop_waiting(self) -> None:
        """Make every wait in progress (and later) return at once: the process is stopping."""
        self._stopping.set()

    async def submit(
        self,
        info: FunctionInfo,
        body: bytes,
        *,
        owner: str = "",
        idempotency_key: str | None = None,
        wait_s: float = 0.0,
        gone: asyncio.Event | None = None,
    ) -> Job:
        """Create and enqueue a plain job, then wait up to `wait_s` for it to finish.

        The completion watch is registered before the task is enqueued, so a fast worker's
        notice cannot be missed. A repeated idempotency key attaches to the first job. The
        wait (never the create) ends early once `gone` is set: the client has left.
        """
        await self._check_backpressure()
        job = Job(
            id=new_job_id(),
            function=info.name,
            kind=info.kind,
            owner=owner,
            idempotency_key=idempotency_key,
            request_hash=request_hash(info.name, body) if idempotency_key else None,
        )
        async with self.state.watch(job.id) as watch:
            stored, created = await self.state.create_job(job)
            if created:
                await self._enqueue(job, body)
                return await self._wait(job, watch, wait_s, gone)
        await self._check_same_request(stored, job)
        await self._rescue_if_unstarted(stored, lambda: self._enqueue(stored, body))
        return await self.wait(stored.id, wait_s, owner=owner, gone=gone)

    async def _rescue_if_unstarted(
        self, stored: Job, enqueue: Callable[[], Awaitable[None]]
    ) -> None:
        """Enqueue a repeated request's job again if it stays queued, never started, a lease.

        The first request may have stored the job and then failed to enqueue it (a backend
        outage between the two writes, answered with a 503 that the client now retries). A
        job younger than a lease may still be on its way into the queue, so it is checked
        again once it is a lease old. A second task is harmless: whichever runs first
        commits the outcome, the other finds the job settled.
        """
        if stored.status is not JobStatus.QUEUED or stored.attempts or stored.id in self._rescues:
            return
        delay_s = stored.created_at + self.settings.lease_s - time.time()
        if delay_s <= 0:
            await enqueue()
            return
        rescue = asyncio.create_task(self._rescue_later(stored.id, delay_s, enqueue))
        self._rescues[stored.id] = rescue
        rescue.add_done_callback(lambda _: self._rescues.pop(stored.id, None))

    async def _rescue_later(
        self, job_id: str, delay_s: float, enqueue: Callable[[], Awaitable[None]]
    ) -> None:
        await asyncio.sleep(delay_s)  # a timer: the job's lease since it was stored
        try:
            job = await self.state.get_job(job_id)
            if job is not None and job.status is JobStatus.QUEUED and job.attempts == 0:
                log.warning("job %s was never started; enqueueing it again", job_id)
                await enqueue()
        except BackendError as e:
            log.warning("could not re-enqueue job %s: %s", job_id, e)

    async def aclose(self) -> None:
        """Cancel pending rescues (they only matter while this process serves requests)."""
        rescues = list(self._rescues.values())
        for rescue in rescues:
            rescue.cancel()
        await asyncio.gather(*rescues, return_exceptions=True)

    async def submit_map(
        self,
        info: FunctionInfo,
        chunks: AsyncIterable[bytes],
        *,
        owner: str = "",
        idempotency_key: str | None = None,
        wait_s: float = 0.0,
        gone: asyncio.Event | None = None,
    ) -> Job:
        """Store a batch's chunks (NDJSON, as cut from the request), then create and enqueue
        the map job and wait up to `wait_s` for it (less once `gone` is set). Nothing is
        enqueued unless every chunk was cut and stored: a malformed batch leaves no job and
        no blobs behind."""
        await self._check_backpressure()
        job_id = new_job_id()
        digest = hashlib.sha256(info.name.encode() + b"\0")
        items = count = 0
        try:
            async for chunk in chunks:
                await self.store.put(chunk_input_key(job_id, count), chunk)
                digest.update(chunk)
                items += chunk.count(b"\n")
                count += 1
        except BaseException:
            await self._delete_blobs(job_id)
            raise
        job = Job(
            id=job_id,
            function=info.name,
            kind=info.kind,
            progress=Progress(total=items),
            owner=owner,
            idempotency_key=idempotency_key,
            request_hash=digest.hexdigest() if idempotency_key else None,
        )
        async with self.state.watch(job.id) as watch:
            stored, created = await self.state.create_job(job)
            if created:
                await self._enqueue_chunks(job, count)
                return await self._wait(job, watch, wait_s, gone)
        await self._delete_blobs(job_id)
        await self._check_same_request(stored, job)
        # The first request stored the same chunks (same body) under its own job id.
        await self._rescue_if_unstarted(stored, lambda: self._enqueue_chunks(stored, count))
        return await self.wait(stored.id, wait_s, owner=owner, gone=gone)

    async def _enqueue_chunks(self, job: Job, count: int) -> None:
        if count == 0:
            # An empty batch is done at once: its result is an empty list.
            await self.store.put(map_result_key(job.id), dumps({"chunks": 0, "items": 0}))
            await self.state.finish(
                job.id, None, JobStatus.SUCCEEDED, result_ref=map_result_key(job.id)
            )
            return
        rid = current_request_id()
        for start in range(0, count, _ENQUEUE_BATCH):
            tasks = [
                Task(job.id, job.function, payload_ref=chunk_input_key(job.id, i), chunk=i,
                     chunks=count, request_id=rid).encode()
                for i in range(start, min(count, start + _ENQUEUE_BATCH))
            ]  # fmt: skip
            await self.queue.put(tasks)

    async def _check_same_request(self, stored: Job, attempted: Job) -> None:
        """A repeated Idempotency-Key attaches to the first job only for the same request."""
        if stored.request_hash != attempted.request_hash:
            raise IdempotencyConflict(
                f"Idempotency-Key {attempted.idempotency_key!r} was first used with a "
                "different body",
                job_id=stored.id,
            )

    async def _enqueue(self, job: Job, body: bytes) -> None:
        if len(body) <= self.settings.inline_max_bytes:
            task = Task(job.id, job.function, payload=body, request_id=current_request_id())
        else:
            await self.store.put(payload_key(job.id), body)
            task = Task(
                job.id, job.function, payload_ref=payload_key(job.id),
                request_id=current_request_id(),
            )  # fmt: skip
        await self.queue.put([task.encode()])

    async def _check_backpressure(self) -> None:
        limit = self.settings.max_queue_depth
        if limit <= 0:
            return
        now = time.monotonic()
        if now - self._depth_checked_at > _DEPTH_CHECK_S:
            self._depth_checked_at = now
            depth = await self.queue.depth()
            self._depth_full = depth.ready + depth.delayed >= limit
        if self._depth_full:
            raise Overloaded(f"the queue holds {limit} or more waiting tasks", retry_after_s=5)

    async def get(self, job_id: str, owner: str = "") -> Job:
        """The job, if it exists and belongs to `owner`; raises NotFound."""
        job = await self.state.get_job(job_id)
        if job is None or job.owner != owner:
            raise NotFound(f"no job {job_id!r}", job_id=job_id)
        return job

    async def wait(
        self, job_id: str, wait_s: float, owner: str = "", gone: asyncio.Event | None = None
    ) -> Job:
        """The job once terminal, or as it stands after `wait_s` seconds or once `gone` is
        set (the waiting client has left)."""
        async with self.state.watch(job_id) as watch:
            job = await self.get(job_id, owner)
            return await self._wait(job, watch, wait_s, gone)

    async def _wait(
        self, job: Job, watch: Watch, wait_s: float, gone: asyncio.Event | None = None
    ) -> Job:
        if gone is None or job.status.terminal:
            return await self._wait_terminal(job, watch, wait_s)
        # Race the wait against the client's departure; the loser is cancelled, so a
        # vanished client holds neither the subscription nor the re-reads a moment longer.
        waiting = asyncio.ensure_future(self._wait_terminal(job, watch, wait_s))
        leaving = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({waiting, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, leaving):
                task.cancel()
            await asyncio.gather(waiting, leaving, return_exceptions=True)
        if waiting.cancelled():
            return job  # nobody is left to answer
        return waiting.result()

    async def _wait_terminal(self, job: Job, watch: Watch, wait_s: float) -> Job:
        deadline = time.monotonic() + min(wait_s, self.settings.max_wait_s)
        reread_s = self.settings.reread_s
        while not job.status.terminal and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # A lost notice costs at most one re-read interval, never a hung request.
            await watch.wait_notice(min(remaining, reread_s))
            try:
                fresh = await self.state.get_job(job.id)
            except BackendError:
                continue  # the state backend is restarting: the job is durable, keep waiting
            if fresh is None:
                raise NotFound(f"job {job.id!r} expired while waiting", job_id=job.id)
            job = fresh
        return job

    async def result_bytes(self, job: Job) -> bytes:
        """The JSON result of a succeeded job, from the record or the store."""
        if job.result is not None:
            return job.result
        if job.result_ref is None:
            raise NotFound(f"job {job.id!r} has no result", job_id=job.id)
        return await self.store.get(job.result_ref)

    async def map_result_chunks(self, job: Job) -> AsyncIterator[bytes]:
        """A succeeded map job's results, chunk by chunk (NDJSON), in input order."""
        if job.result_ref is None:
            raise NotFound(f"job {job.id!r} has no result", job_id=job.id)
        manifest = json.loads(await self.store.get(job.result_ref))
        for chunk in range(manifest["chunks"]):
            yield await self.store.get(chunk_result_key(job.id, chunk))

    async def cancel(self, job_id: str, owner: str = "") -> Job:
        """Cancel the job unless it is already terminal; returns it as it now stands."""
        job = await self.get(job_id, owner)
        if job.status.terminal:
            return job
        cancelled = await self.state.cancel(job_id)
        return cancelled or await self.get(job_id, owner)

    async def delete_expired(self, now: float, batch: int = EXPIRY_BATCH) -> int:
        """Remove every terminal job that finished a retention period before `now`, with its
        blobs, `batch` jobs at a time until none is left; returns how many.

        Catching up fully on each call keeps the stored count bounded at any sustained rate
        (about rate x (retention + the interval between calls)).
        """
        finished_before = now - self.settings.result_ttl_s
        total = 0
        while True:
            expired = await self.state.expired_jobs(finished_before, batch)
            if not expired:
                break
            keys = [result_key(j.id) for j in expired] + [payload_key(j.id) for j in expired]
            await self.store.delete(keys)
            for job in expired:
                if job.kind is FunctionKind.MAP:
                    await self._delete_blobs(job.id)
            await self.state.delete_jobs([j.id for j in expired])
            total += len(expired)
            if len(expired) < batch:
                break
        if total:
            log.info("deleted %d expired jobs", total)
        return total

    async def _delete_blobs(self, job_id: str) -> None:
        for prefix in map_prefixes(job_id):
            await self.store.delete_prefix(prefix)


def expiry_interval_s(result_ttl_s: float) -> float:
    """How often to call `Jobs.delete_expired`: a quarter of the retention, 1 s to 60 s."""
    return min(EXPIRY_INTERVAL_MAX_S, max(1.0, result_ttl_s / 4))


def retry_after_s(job: Job) -> int:
    """A polite Retry-After for a job still in progress."""
    return 1 if job.status is JobStatus.RUNNING else 2
