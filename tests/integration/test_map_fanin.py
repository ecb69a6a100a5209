"""Map-job fan-in under at-least-once delivery, with a real worker and executor processes."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from batchgate.keys import chunk_input_key, chunk_result_key
from batchgate.models import FunctionKind, Job, JobStatus, Progress, Task, new_job_id
from batchgate.queue import Queue, QueueDepth
from batchgate.testing import local_batchgate

pytestmark = pytest.mark.anyio

TEST_APP = str(Path(__file__).parents[1] / "apps" / "testapp.py")


async def chunks_of(items: list[int], size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(items), size):
        yield b"".join(b"%d\n" % i for i in items[start : start + size])


async def wait_until_drained(queue: Queue) -> QueueDepth:
    """Poll until nothing is ready or leased (the queue has no 'empty' event to await)."""
    for _ in range(1500):
        depth = await queue.depth()
        if depth.ready == depth.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    return depth


async def results_of(bg: object, job: object) -> list[int]:
    out: list[int] = []
    async for chunk in bg.jobs.map_result_chunks(job):  # type: ignore[attr-defined]
        out.extend(json.loads(line) for line in chunk.splitlines())
    return out


@pytest.mark.parametrize("backends", ["memory://", "sqlite"])
async def test_a_chunk_delivered_twice_is_counted_once(backends: str, tmp_path: Path) -> None:
    urls = {} if backends == "memory://" else {
        "queue_url": f"sqlite:///{tmp_path}/q.db",
        "state_url": f"sqlite:///{tmp_path}/s.db",
        "store_url": f"file://{tmp_path}/store",
    }  # fmt: skip
    async with local_batchgate(TEST_APP, workers=2, **urls) as bg:
        info = bg.jobs.registry.get("square")
        items = list(range(95))
        job = await bg.jobs.submit_map(info, chunks_of(items, info.chunk_size), wait_s=0)
        # The same chunk twice more, as a queue would after a lost ack.
        duplicate = Task(
            job.id, "square", payload_ref=chunk_input_key(job.id, 3), chunk=3, chunks=10
        ).encode()
        await bg.queue.put([duplicate, duplicate])
        done = await bg.jobs.wait(job.id, 60)
        assert done.status is JobStatus.SUCCEEDED
        assert done.progress.done == 95
        assert done.progress.total == 95
        assert await results_of(bg, done) == [i * i for i in items]
        depth = await wait_until_drained(bg.queue)
        assert depth.ready == depth.in_flight == depth.dead == 0
        again = await bg.state.get_job(job.id)
        assert again is not None and again.progress.done == 95


async def test_cancelled_map_job_drops_its_remaining_chunks(tmp_path: Path) -> None:
    async with local_batchgate(TEST_APP, workers=1) as bg:
        info = bg.jobs.registry.get("slow_item")

        async def items() -> AsyncIterator[bytes]:
            for n in range(20):
                doc = {"marker": str(tmp_path / f"m{n}"), "seconds": 0.2, "n": n}
                yield json.dumps(doc).encode() + b"\n"

        job = await bg.jobs.submit_map(info, items(), wait_s=0)
        cancelled = await bg.jobs.cancel(job.id)
        assert cancelled.status is JobStatus.CANCELLED
        # Every chunk task is taken off the queue, run or not.
        await wait_until_drained(bg.queue)
        assert len(os.listdir(tmp_path)) < 20
        final = await bg.state.get_job(job.id)
        assert final is not None and final.status is JobStatus.CANCELLED


async def test_a_redelivered_counted_chunk_commits_a_job_whose_last_chunk_died() -> None:
    # Every chunk is counted but the job is still running: the delivery that counted the
    # last chunk died before it committed the job. The redelivery of that chunk does it.
    async with local_batchgate(TEST_APP, workers=1) as bg:
        job = Job(new_job_id(), "square", kind=FunctionKind.MAP, progress=Progress(total=3))
        await bg.state.create_job(job)
        await bg.store.put(chunk_input_key(job.id, 0), b"1\n2\n3\n")
        await bg.store.put(chunk_result_key(job.id, 0), b"1\n4\n9\n")
        assert await bg.state.start_attempt(job.id, 1, task=0) is not None
        assert await bg.state.record_chunk(job.id, 0, 3, 0) is not None
        task = Task(job.id, "square", payload_ref=chunk_input_key(job.id, 0), chunk=0, chunks=1)
        await bg.queue.put([task.encode()])

        done = await bg.jobs.wait(job.id, 30)

        assert done.status is JobStatus.SUCCEEDED
        assert done.attempts == 1  # the counted chunk did not run again
        assert await results_of(bg, done) == [1, 4, 9]
