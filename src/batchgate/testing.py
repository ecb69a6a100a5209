"""Helpers for testing batchgate apps: memory backends and an in-process worker.

async with local_batchgate("myapp.py") as bg:
    job = await bg.run("resize", {"width": 10})
    assert job.status is JobStatus.SUCCEEDED
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from batchgate.app import load_app
from batchgate.jobs import Jobs
from batchgate.models import Job, dumps
from batchgate.queue import Queue, open_queue
from batchgate.settings import Settings
from batchgate.state import State, open_state
from batchgate.store import Store, open_store
from batchgate.worker.executor import ExecutorPool
from batchgate.worker.runtime import Worker


@dataclasses.dataclass
class LocalBatchgate:
    """A running in-process batchgate: the Jobs facade and the backends behind it."""

    jobs: Jobs
    queue: Queue
    state: State
    store: Store
    worker: Worker

    async def run(self, function: str, payload: Any, wait_s: float = 60.0) -> Job:
        """Submit a plain job and wait for it (the job as it stands when the wait ends)."""
        info = self.jobs.registry.get(function)
        return await self.jobs.submit(info, dumps(payload), wait_s=wait_s)


@contextlib.asynccontextmanager
async def local_batchgate(
    app_ref: str, *, workers: int = 1, backends: str = "memory://", **settings: Any
) -> AsyncIterator[LocalBatchgate]:
    """Start memory backends (or other `backends` URLs), an executor pool and a worker."""
    config = Settings.load(
        {"queue_url": backends, "state_url": backends, "store_url": backends,
         "workers": workers, **settings},
        env={},
    )  # fmt: skip
    registry = load_app(app_ref).registry()
    queue = await open_queue(config.queue_url)
    state = await open_state(config.state_url)
    store = await open_store(config.store_url)
    pool = ExecutorPool(app_ref, config.workers)
    stop = asyncio.Event()
    try:
        await pool.start()
        worker = Worker(registry, queue, state, store, pool, config)
        jobs = Jobs(registry, queue, state, store, config)
        running = asyncio.create_task(worker.run(stop), name="worker")
        try:
            yield LocalBatchgate(jobs, queue, state, store, worker)
        finally:
            stop.set()
            await running
    finally:
        await pool.aclose()
        await store.aclose()
        await state.aclose()
        await queue.aclose()
