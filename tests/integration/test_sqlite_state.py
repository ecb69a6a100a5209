"""SQLite state shared by several connections on one file, as separate processes share it.

Each contender runs its own SqliteState on its own thread and event loop; sqlite3 releases
the GIL inside SQLite, so their statements really interleave at the file's locks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from batchgate.models import FunctionKind, Job, JobStatus, Progress, new_job_id
from batchgate.state.sqlite import SqliteState, open

T = TypeVar("T")
Sync = Callable[[], object]
CONTENDERS = 4
JOBS = 100


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def race(path: Path, work: Callable[[SqliteState, int, Sync], Awaitable[T]]) -> list[T]:
    """Run `work(state, contender, sync)` on CONTENDERS threads, each with its own state.

    `sync()` blocks until every contender calls it: call it before each contested step.
    """
    barrier = threading.Barrier(CONTENDERS, timeout=30)
    results: list[T | BaseException] = [RuntimeError("did not run")] * CONTENDERS

    async def contender(index: int) -> T:
        state = await open(url_of(path))
        try:
            barrier.wait()
            return await work(state, index, barrier.wait)
        finally:
            await state.aclose()

    def run(index: int) -> None:
        try:
            results[index] = asyncio.run(contender(index))
        except BaseException as exc:
            results[index] = exc
            barrier.abort()  # release the others at once

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CONTENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        # The first real failure, not the BrokenBarrierError it caused in the others.
        raise next(
            (e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0]
        )
    return results  # type: ignore[return-value]


def test_first_open_of_a_new_file_from_many_connections(tmp_path: Path) -> None:
    async def work(state: SqliteState, index: int, sync: Sync) -> bool:
        _, created = await state.create_job(Job(id=new_job_id(), function="f"))
        return created

    assert race(tmp_path / "new" / "state.db", work) == [True] * CONTENDERS


def test_idempotent_create_is_exactly_once_across_connections(tmp_path: Path) -> None:
    async def work(state: SqliteState, index: int, sync: Sync) -> list[tuple[str, bool]]:
        outcomes = []
        for key in range(JOBS):
            sync()
            job = Job(id=new_job_id(), function="f", owner="o", idempotency_key=str(key))
            stored, created = await state.create_job(job)
            outcomes.append((stored.id, created))
        return outcomes

    per_contender = race(tmp_path / "state.db", work)
    for key in range(JOBS):
        outcomes = [outcomes[key] for outcomes in per_contender]
        assert sum(created for _, created in outcomes) == 1
        assert len({job_id for job_id, _ in outcomes}) == 1


def test_finish_and_record_chunk_are_exactly_once_across_connections(tmp_path: Path) -> None:
    job_ids = [new_job_id() for _ in range(JOBS)]

    async def setup() -> None:
        state = await open(url_of(tmp_path / "state.db"))
        for job_id in job_ids:
            job = Job(id=job_id, function="f", kind=FunctionKind.MAP, progress=Progress(total=8))
            await state.create_job(job)
        await state.aclose()

    asyncio.run(setup())

    async def work(state: SqliteState, index: int, sync: Sync) -> list[bool]:
        wins = []
        for job_id in job_ids:
            sync()
            for chunk in range(4):
                await state.record_chunk(job_id, chunk, 2, 0)
            done = await state.finish(job_id, None, JobStatus.SUCCEEDED, result=b"%d" % index)
            wins.append(done is not None)
        return wins

    per_contender = race(tmp_path / "state.db", work)

    async def check() -> None:
        state = await open(url_of(tmp_path / "state.db"))
        for position, job_id in enumerate(job_ids):
            winners = [i for i, wins in enumerate(per_contender) if wins[position]]
            assert len(winners) == 1
            job = await state.get_job(job_id)
            assert job is not None
            assert job.result == b"%d" % winners[0]
            assert job.progress == Progress(8, 0, 8)
        await state.aclose()

    asyncio.run(check())


@pytest.mark.anyio
async def test_data_survives_reopen(tmp_path: Path) -> None:
    url = url_of(tmp_path / "state.db")
    state = await open(url)
    job, _ = await state.create_job(
        Job(id=new_job_id(), function="f", kind=FunctionKind.MAP, progress=Progress(total=4))
    )
    await state.start_attempt(job.id, 1)
    await state.record_chunk(job.id, 0, 2, 0)
    done = await state.finish(job.id, 1, JobStatus.SUCCEEDED, result=b"[1]")
    await state.put_manifest(b"manifest")
    await state.aclose()

    reopened = await open(url)
    try:
        assert await reopened.get_job(job.id) == done
        assert await reopened.record_chunk(job.id, 0, 2, 0) == (Progress(2, 0, 4), False)
        assert await reopened.get_manifest() == b"manifest"
    finally:
        await reopened.aclose()


@pytest.mark.anyio
async def test_two_instances_see_each_others_writes(tmp_path: Path) -> None:
    url = url_of(tmp_path / "state.db")
    first, second = await open(url), await open(url)
    try:
        job, _ = await first.create_job(Job(id=new_job_id(), function="f"))
        assert await second.start_attempt(job.id, 1) is not None
        assert await first.finish(job.id, 0, JobStatus.SUCCEEDED) is None  # fenced
        assert await first.finish(job.id, 1, JobStatus.SUCCEEDED) is not None
        assert await second.cancel(job.id) is None
    finally:
        await first.aclose()
        await second.aclose()
