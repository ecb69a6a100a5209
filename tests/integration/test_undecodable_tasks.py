"""Whatever gets into the queue, a task that cannot be decoded fails its job.

These messages bypass the gateway (which refuses such input with a 400): an older
gateway, another producer or a damaged message could still put them on the queue.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from batchgate import dlq
from batchgate.keys import chunk_input_key
from batchgate.models import FunctionKind, Job, JobStatus, Progress, Task, new_job_id
from batchgate.queue import DeadLetter
from batchgate.settings import Settings
from batchgate.testing import LocalBatchgate, local_batchgate

pytestmark = pytest.mark.anyio

TEST_APP = str(Path(__file__).parents[1] / "apps" / "testapp.py")


@pytest.fixture
async def bg(tmp_path: Path) -> AsyncIterator[LocalBatchgate]:
    async with local_batchgate(
        TEST_APP,
        queue_url=f"sqlite:///{tmp_path}/queue.db",
        state_url=f"sqlite:///{tmp_path}/state.db",
        store_url=f"file://{tmp_path}/store",
        retry_backoff_s=0.01,
    ) as running:
        yield running


async def stored_job(bg: LocalBatchgate, function: str, **fields: object) -> Job:
    job, _ = await bg.state.create_job(Job(id=new_job_id(), function=function, **fields))  # type: ignore[arg-type]
    return job


async def dead_letters(bg: LocalBatchgate) -> list[DeadLetter]:
    """The dead letters once there are some: the job fails just before its message moves."""
    for _ in range(500):
        if dead := await bg.queue.list_dead():
            return dead
        await asyncio.sleep(0.01)  # the queue has no event for a new dead letter
    return []


async def map_results(bg: LocalBatchgate, job: Job) -> list[object]:
    return [json.loads(line) async for chunk in bg.jobs.map_result_chunks(job)
            for line in chunk.splitlines()]  # fmt: skip


@pytest.mark.parametrize(
    "message",
    [
        b'{"job":"%s","fn":"echo","payload":NaN}',
        b'{"job":"%s","fn":"echo","payload":[1e400]}',
        b'{"job":"%s","fn":"echo","payload":"\\ud800"}',
        b'{"job":"%s","fn":"echo","payload":' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"job":"%s","fn":"echo","pay',
        b'{"job":"%s"}',
    ],
    ids=["nan", "overflow", "surrogate", "deep", "truncated", "no-function"],
)
async def test_an_undecodable_plain_task_fails_its_job(
    bg: LocalBatchgate, message: bytes, tmp_path: Path
) -> None:
    job = await stored_job(bg, "echo")
    await bg.queue.put([message.replace(b"%s", job.id.encode())])

    done = await bg.jobs.wait(job.id, 30)

    assert done.status is JobStatus.FAILED
    assert done.error is not None and done.error.type == "UndecodableTask"
    [letter] = await dead_letters(bg)
    assert "UndecodableTask" in letter.reason
    [line] = await dlq.list_dead(Settings.load({"data_dir": tmp_path}, env={}), 10)
    assert f"job={job.id}" in line


async def test_one_undecodable_item_fails_alone_in_collect_mode(bg: LocalBatchgate) -> None:
    job = await stored_job(bg, "reciprocal", kind=FunctionKind.MAP, progress=Progress(total=4))
    await bg.store.put(chunk_input_key(job.id, 0), b"1\n1e400\n2\n4\n")
    task = Task(job.id, "reciprocal", payload_ref=chunk_input_key(job.id, 0), chunk=0, chunks=1)
    await bg.queue.put([task.encode()])

    done = await bg.jobs.wait(job.id, 30)

    assert done.status is JobStatus.SUCCEEDED
    assert done.progress == Progress(done=3, failed=1, total=4)
    first, bad, *rest = await map_results(bg, done)
    assert [first, *rest] == [1.0, 0.5, 0.25]
    assert isinstance(bad, dict)
    assert bad["error"]["type"] == "UndecodableItem"
    assert "out of range" in bad["error"]["message"]


async def test_an_undecodable_item_fails_a_fail_mode_job_without_retries(
    bg: LocalBatchgate,
) -> None:
    job = await stored_job(
        bg, "reciprocal_or_fail", kind=FunctionKind.MAP, progress=Progress(total=3)
    )
    await bg.store.put(chunk_input_key(job.id, 0), b"1\nNaN\n2\n")
    task = Task(job.id, "reciprocal_or_fail", payload_ref=chunk_input_key(job.id, 0), chunk=0,
                chunks=1)  # fmt: skip
    await bg.queue.put([task.encode()])

    done = await bg.jobs.wait(job.id, 30)

    assert done.status is JobStatus.FAILED
    assert done.error is not None and done.error.type == "UndecodableItem"
    assert done.error.message.startswith("item 1: ")
    assert done.attempts == 1  # retrying cannot make it decode
