"""Retention keeps up: expiry deletes in batches until caught up, so the number of stored
jobs stays bounded at a sustained rate, on every state backend.

Time is simulated: jobs are stored as finished at a clock the test advances, and
`delete_expired` is called at the server's interval on that clock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from batchgate.app import Registry
from batchgate.errors import NotFound
from batchgate.jobs import Jobs, expiry_interval_s
from batchgate.keys import chunk_input_key, chunk_result_key, result_key
from batchgate.models import FunctionKind, Job, JobStatus, new_job_id
from batchgate.queue import open_queue
from batchgate.settings import Settings
from batchgate.state import State, open_state
from batchgate.store import open_store

pytestmark = pytest.mark.anyio

TTL_S = 30.0
START = 1_700_000_000.0


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Jobs]:
    url = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp_path}/state.db",
        "redis": request.getfixturevalue("redis_url") if request.param == "redis" else "",
    }[request.param]
    settings = Settings.load({"result_ttl_s": TTL_S, "data_dir": tmp_path}, env={})
    queue = await open_queue("memory://")
    state = await open_state(url)
    store = await open_store(f"file://{tmp_path}/store")
    try:
        yield Jobs(Registry({}), queue, state, store, settings)
    finally:
        await store.aclose()
        await state.aclose()
        await queue.aclose()


def finished_job(at: float, kind: FunctionKind = FunctionKind.FUNCTION) -> Job:
    return Job(id=new_job_id(), function="f", kind=kind, status=JobStatus.SUCCEEDED,
               created_at=at, started_at=at, finished_at=at)  # fmt: skip


async def stored_count(state: State) -> int:
    return len(await state.expired_jobs(math.inf, 10**9))


async def test_stored_jobs_stay_bounded_under_sustained_load(jobs: Jobs) -> None:
    rate = 120  # jobs finishing per simulated second: 900 per expiry interval, > one batch
    interval_s = expiry_interval_s(TTL_S)
    next_expiry = START + interval_s
    peak = 0
    for second in range(240):
        now = START + second
        await asyncio.gather(*(jobs.state.create_job(finished_job(now)) for _ in range(rate)))
        if now >= next_expiry:
            await jobs.delete_expired(now)
            next_expiry += interval_s
            peak = max(peak, await stored_count(jobs.state))
    # Whatever finished within the retention, plus at most one interval's arrivals.
    assert peak <= rate * (TTL_S + interval_s + 1)
    assert peak >= rate * TTL_S  # and nothing younger than the retention was deleted


async def test_expiry_deletes_the_jobs_blobs(jobs: Jobs) -> None:
    old, young = START, START + TTL_S
    plain = finished_job(old)
    plain = plain.replace(result_ref=result_key(plain.id))
    batch = finished_job(old, FunctionKind.MAP)
    kept = finished_job(young)
    for job in (plain, batch, kept):
        await jobs.state.create_job(job)
    await jobs.store.put(result_key(plain.id), b"[1]")
    await jobs.store.put(chunk_input_key(batch.id, 0), b"1\n")
    await jobs.store.put(chunk_result_key(batch.id, 0), b"1\n")
    await jobs.store.put(result_key(kept.id), b"[2]")

    assert await jobs.delete_expired(old + TTL_S + 1) == 2

    for key in (result_key(plain.id), chunk_input_key(batch.id, 0), chunk_result_key(batch.id, 0)):
        with pytest.raises(NotFound):
            await jobs.store.get(key)
    assert await jobs.store.get(result_key(kept.id)) == b"[2]"
    assert await jobs.state.get_job(plain.id) is None
    assert await jobs.state.get_job(kept.id) == kept
