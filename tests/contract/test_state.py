"""Contract suite for the State port, run against every backend in STATE_URLS."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

import pytest

from batchgate import attempts
from batchgate.models import FunctionKind, Job, JobError, JobStatus, Progress, new_job_id
from batchgate.state import State, open_state

pytestmark = pytest.mark.anyio

# One entry per backend: how to build its URL for a test (request gives access to fixtures).
STATE_URLS: dict[str, Callable[[pytest.FixtureRequest], str]] = {
    "memory": lambda request: "memory://",
    "sqlite": lambda request: f"sqlite:///{request.getfixturevalue('tmp_path') / 'state.db'}",
    "redis": lambda request: request.getfixturevalue("redis_url"),
    # A one-node cluster-mode server with a hash-tagged prefix, as on ElastiCache Serverless.
    "redis-cluster": lambda request: request.getfixturevalue("redis_cluster_url"),
}


@pytest.fixture(params=list(STATE_URLS))
async def state(request: pytest.FixtureRequest) -> AsyncIterator[State]:
    backend = await open_state(STATE_URLS[request.param](request))
    try:
        yield backend
    finally:
        await backend.aclose()


def make_job(**fields: object) -> Job:
    return Job(id=new_job_id(), function="resize", **fields)  # type: ignore[arg-type]


async def new_job(state: State, **fields: object) -> Job:
    job, created = await state.create_job(make_job(**fields))
    assert created
    return job


async def started(state: State, job_id: str, delivery: int, **kwargs: int) -> bool:
    attempt = await state.start_attempt(job_id, delivery, **kwargs)
    return attempt is not None and attempt.started


# --- create / get -------------------------------------------------------------------------


async def test_create_get_round_trips_every_field(state: State) -> None:
    job = Job(
        id=new_job_id(),
        function="geocode",
        kind=FunctionKind.MAP,
        status=JobStatus.RUNNING,
        attempts=3,
        progress=Progress(done=5, failed=2, total=10),
        error=JobError("ValueError", "bad address ✗"),
        created_at=1_700_000_000.125,
        started_at=1_700_000_001.5,
        finished_at=1_700_000_002.75,
        owner="key-1",
        idempotency_key="idem-1",
        request_hash="sha256:abc",
        result=b"\x00\xff binary \x80",
        result_ref="results/x",
    )
    stored, created = await state.create_job(job)
    assert created
    assert stored == job
    assert await state.get_job(job.id) == job


async def test_create_get_defaults(state: State) -> None:
    job = make_job()
    await state.create_job(job)
    assert await state.get_job(job.id) == job


async def test_get_unknown_is_none(state: State) -> None:
    assert await state.get_job(new_job_id()) is None


async def test_create_same_id_again_changes_nothing_and_reports_created(state: State) -> None:
    # The same write retried after its reply was lost: the caller must still enqueue.
    job = await new_job(state)
    again, created = await state.create_job(job.replace(function="other"))
    assert created
    assert again == job
    assert await state.get_job(job.id) == job


async def test_create_same_keyed_job_again_reports_created(state: State) -> None:
    job = await new_job(state, owner="a", idempotency_key="k")
    again, created = await state.create_job(job)
    assert created
    assert again == job


async def test_idempotent_create_returns_existing(state: State) -> None:
    first = await new_job(state, owner="a", idempotency_key="k")
    candidate = make_job(owner="a", idempotency_key="k", request_hash="other")
    again, created = await state.create_job(candidate)
    assert not created
    assert again == first
    assert await state.get_job(candidate.id) is None


async def test_idempotent_create_is_scoped_to_owner_and_function(state: State) -> None:
    first = await new_job(state, owner="a", idempotency_key="k")
    other_owner, created_owner = await state.create_job(make_job(owner="b", idempotency_key="k"))
    other_fn, created_fn = await state.create_job(
        Job(id=new_job_id(), function="other", owner="a", idempotency_key="k")
    )
    assert created_owner and created_fn
    assert len({first.id, other_owner.id, other_fn.id}) == 3


async def test_create_without_key_always_creates(state: State) -> None:
    first = await new_job(state, owner="a")
    second = await new_job(state, owner="a")
    assert first.id != second.id


async def test_concurrent_idempotent_creates_store_one(state: State) -> None:
    results = await asyncio.gather(
        *(state.create_job(make_job(owner="a", idempotency_key="same")) for _ in range(20))
    )
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1


# --- start_attempt / requeue / finish / cancel -----------------------------------------------


async def test_start_attempt_marks_running(state: State) -> None:
    job = await new_job(state)
    attempt = await state.start_attempt(job.id, 1)
    assert attempt is not None and attempt.started
    started = attempt.job
    assert started.status is JobStatus.RUNNING
    assert started.attempts == attempt.number == 1
    assert started.started_at is not None
    assert await state.get_job(job.id) == started

    again = await state.start_attempt(job.id, 2)
    assert again is not None
    assert again.job.attempts == again.number == 2
    assert again.job.started_at == started.started_at  # the first start is kept


async def test_attempts_count_starts_not_deliveries(state: State) -> None:
    job = await new_job(state)
    # Deliveries 1 to 4 were held by workers that died before running the function.
    attempt = await state.start_attempt(job.id, 5)
    assert attempt is not None
    assert (attempt.number, attempt.failures, attempt.crashes) == (1, 0, 0)
    assert attempt.job.attempts == 1


async def test_an_attempt_that_never_reported_is_a_crash(state: State) -> None:
    job = await new_job(state)
    await state.start_attempt(job.id, 1)
    second = await state.start_attempt(job.id, 2)  # its worker died: no report
    assert second is not None and second.started
    assert (second.number, second.failures, second.crashes) == (2, 0, 1)
    assert second.interrupted


async def test_function_failures_and_reported_crashes_are_counted_apart(state: State) -> None:
    job = await new_job(state)
    raised, lost = JobError("ValueError", "bad"), JobError("ExecutorLost", "died")
    first = await state.start_attempt(job.id, 1)
    assert first is not None
    assert await state.requeue(job.id, first.number, raised, by_function=True) is not None
    second = await state.start_attempt(job.id, 2)
    assert second is not None
    assert (second.failures, second.crashes, second.last_error) == (1, 0, raised)
    assert not second.interrupted
    assert await state.requeue(job.id, second.number, lost, by_function=False) is not None
    third = await state.start_attempt(job.id, 3)
    assert third is not None
    assert (third.number, third.failures, third.crashes, third.last_error) == (3, 1, 1, lost)


async def test_past_the_crash_budget_nothing_is_counted(state: State) -> None:
    job = await new_job(state)
    for delivery in (1, 2):
        assert await started(state, job.id, delivery, crash_retries=1)
    third = await state.start_attempt(job.id, 3, crash_retries=1)
    assert third is not None
    assert not third.started
    assert (third.number, third.crashes, third.interrupted) == (2, 2, True)
    stored = await state.get_job(job.id)
    assert stored is not None and stored.attempts == 2
    failed = await state.finish(job.id, third.number, JobStatus.FAILED, error=JobError("W", "x"))
    assert failed is not None


async def test_chunks_count_attempts_each(state: State) -> None:
    job = await new_job(state, kind=FunctionKind.MAP, progress=Progress(total=4))
    for delivery in (1, 2, 3):
        await state.start_attempt(job.id, delivery, task=0)
    other = await state.start_attempt(job.id, 1, task=1)
    assert other is not None
    assert (other.number, other.crashes) == (1, 0)
    assert other.job.attempts == 3  # a map job shows the most any chunk took
    assert await state.requeue(job.id, 1, JobError("E", "m"), task=1) is not None
    stored = await state.get_job(job.id)
    assert stored is not None and stored.status is JobStatus.RUNNING  # a map job stays running
    assert await state.record_chunk(job.id, 1, 2, 0) is not None
    assert await state.start_attempt(job.id, 2, task=1) is None  # counted already


async def test_start_attempt_refuses_stale_terminal_and_unknown(state: State) -> None:
    job = await new_job(state)
    assert await state.start_attempt(job.id, 2) is not None
    assert await state.start_attempt(job.id, 1) is None
    assert await state.start_attempt(job.id, 2) is not None  # a released delivery, again
    assert await state.finish(job.id, 2, JobStatus.SUCCEEDED) is not None
    assert await state.start_attempt(job.id, 3) is None
    assert (await state.get_job(job.id)).status is JobStatus.SUCCEEDED  # type: ignore[union-attr]
    assert await state.start_attempt(new_job_id(), 1) is None


async def test_finish_once(state: State) -> None:
    job = await new_job(state)
    await state.start_attempt(job.id, 1)
    done = await state.finish(job.id, 1, JobStatus.SUCCEEDED, result=b"[1,2]")
    assert done is not None
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == b"[1,2]"
    assert done.finished_at is not None
    assert await state.finish(job.id, 1, JobStatus.FAILED, error=JobError("E", "m")) is None
    assert await state.finish(job.id, None, JobStatus.SUCCEEDED, result=b"other") is None
    assert await state.get_job(job.id) == done


async def test_finish_without_attempt_and_with_ref(state: State) -> None:
    job = await new_job(state)
    done = await state.finish(job.id, None, JobStatus.SUCCEEDED, result_ref="results/r")
    assert done is not None
    assert (done.result, done.result_ref) == (None, "results/r")
    assert await state.finish(new_job_id(), None, JobStatus.SUCCEEDED) is None


async def test_finish_failed_keeps_error(state: State) -> None:
    job = await new_job(state)
    failed = await state.finish(job.id, None, JobStatus.FAILED, error=JobError("Boom", "x"))
    assert failed is not None
    assert failed.error == JobError("Boom", "x")
    assert await state.get_job(job.id) == failed


async def test_finish_needs_terminal_status(state: State) -> None:
    job = await new_job(state)
    with pytest.raises(ValueError):
        await state.finish(job.id, None, JobStatus.RUNNING)


async def test_finish_is_fenced_by_attempt(state: State) -> None:
    job = await new_job(state)
    await state.start_attempt(job.id, 1)
    await state.start_attempt(job.id, 2)
    assert await state.finish(job.id, 1, JobStatus.SUCCEEDED, result=b"stale") is None
    done = await state.finish(job.id, 2, JobStatus.SUCCEEDED, result=b"fresh")
    assert done is not None
    assert done.result == b"fresh"


async def test_concurrent_finishes_commit_once(state: State) -> None:
    job = await new_job(state)
    outcomes = await asyncio.gather(
        *(state.finish(job.id, None, JobStatus.SUCCEEDED, result=b"%d" % i) for i in range(20))
    )
    winners = [done for done in outcomes if done is not None]
    assert len(winners) == 1
    assert await state.get_job(job.id) == winners[0]


async def test_requeue_is_fenced(state: State) -> None:
    job = await new_job(state)
    await state.start_attempt(job.id, 1)
    requeued = await state.requeue(job.id, 1, JobError("Timeout", "slow"))
    assert requeued is not None
    assert requeued.status is JobStatus.QUEUED
    assert requeued.error == JobError("Timeout", "slow")
    assert requeued.attempts == 1

    await state.start_attempt(job.id, 2)
    assert await state.requeue(job.id, 1, JobError("Stale", "old")) is None
    current = await state.get_job(job.id)
    assert current is not None
    assert (current.status, current.attempts) == (JobStatus.RUNNING, 2)

    done = await state.finish(job.id, 2, JobStatus.SUCCEEDED, result=b"1")
    assert done is not None
    assert done.error is None  # a success after a retry carries no error
    assert await state.requeue(job.id, 2, JobError("Late", "x")) is None
    assert await state.requeue(new_job_id(), 1, JobError("E", "m")) is None


async def test_cancel(state: State) -> None:
    queued = await new_job(state)
    running = await new_job(state)
    await state.start_attempt(running.id, 1)
    for job in (queued, running):
        cancelled = await state.cancel(job.id)
        assert cancelled is not None
        assert cancelled.status is JobStatus.CANCELLED
        assert cancelled.finished_at is not None
        assert await state.cancel(job.id) is None
        assert await state.finish(job.id, None, JobStatus.SUCCEEDED) is None
        assert await state.get_job(job.id) == cancelled
    assert await state.cancel(new_job_id()) is None


async def test_cancel_of_finished_job_is_none(state: State) -> None:
    job = await new_job(state)
    done = await state.finish(job.id, None, JobStatus.FAILED, error=JobError("E", "m"))
    assert await state.cancel(job.id) is None
    assert await state.get_job(job.id) == done


async def test_reopen_failed_job(state: State) -> None:
    job = await new_job(state)
    await state.start_attempt(job.id, 2)
    attempt = await state.start_attempt(job.id, 3)
    assert attempt is not None
    failed = await state.finish(job.id, attempt.number, JobStatus.FAILED, error=JobError("E", "m"))
    assert failed is not None
    async with state.watch(job.id) as watch:
        reopened = await state.reopen(job.id)
        assert await watch.wait_notice(10)
    assert reopened is not None
    assert reopened.status is JobStatus.QUEUED
    assert (reopened.attempts, reopened.error, reopened.finished_at) == (0, None, None)
    assert reopened.started_at == failed.started_at
    assert await state.get_job(job.id) == reopened
    assert await state.expired_jobs(float("inf"), 10) == []
    assert await state.reopen(job.id) is None  # queued now
    again = await state.start_attempt(job.id, 1)  # a re-driven task starts afresh
    assert again is not None
    assert (again.number, again.crashes, again.failures) == (1, 0, 0)
    assert await state.finish(job.id, 1, JobStatus.SUCCEEDED, result=b"1") is not None


async def test_reopen_only_failed_jobs(state: State) -> None:
    queued = await new_job(state)
    succeeded = await new_job(state)
    await state.finish(succeeded.id, None, JobStatus.SUCCEEDED)
    cancelled = await new_job(state)
    await state.cancel(cancelled.id)
    for job in (queued, succeeded, cancelled):
        before = await state.get_job(job.id)
        assert await state.reopen(job.id) is None
        assert await state.get_job(job.id) == before
    assert await state.reopen(new_job_id()) is None


# --- record_chunk ---------------------------------------------------------------------------


async def test_record_chunk_counts_once(state: State) -> None:
    job = await new_job(state, kind=FunctionKind.MAP, progress=Progress(total=10))
    assert await state.record_chunk(job.id, 0, 4, 1) == (Progress(4, 1, 10), True)
    assert await state.record_chunk(job.id, 0, 4, 1) == (Progress(4, 1, 10), False)
    assert await state.record_chunk(job.id, 1, 5, 0) == (Progress(9, 1, 10), True)
    stored = await state.get_job(job.id)
    assert stored is not None
    assert stored.progress == Progress(9, 1, 10)


async def test_record_chunk_unknown_job(state: State) -> None:
    assert await state.record_chunk(new_job_id(), 0, 1, 0) is None


async def test_record_chunk_concurrent_distinct_chunks_sum_exactly(state: State) -> None:
    chunks = 200
    job = await new_job(state, kind=FunctionKind.MAP, progress=Progress(total=chunks * 3))
    # Every chunk recorded twice, interleaved: only the first of each counts.
    calls = [state.record_chunk(job.id, i % chunks, 2, 1) for i in range(chunks * 2)]
    outcomes = await asyncio.gather(*calls)
    assert all(outcome is not None for outcome in outcomes)
    assert sum(counted for _, counted in outcomes) == chunks  # type: ignore[misc]
    stored = await state.get_job(job.id)
    assert stored is not None
    assert stored.progress == Progress(chunks * 2, chunks, chunks * 3)


# --- watch ----------------------------------------------------------------------------------


async def test_watch_wakes_a_waiter_on_finish(state: State) -> None:
    job = await new_job(state)
    async with state.watch(job.id) as watch:
        waiter = asyncio.create_task(watch.wait_notice(10))
        await asyncio.sleep(0)  # let the waiter block first
        await state.finish(job.id, None, JobStatus.SUCCEEDED, result=b"1")
        assert await waiter


async def test_watch_keeps_a_notice_published_before_waiting(state: State) -> None:
    job = await new_job(state)
    async with state.watch(job.id) as watch:
        await state.cancel(job.id)
        assert await watch.wait_notice(10)


async def test_watch_notice_from_record_chunk(state: State) -> None:
    job = await new_job(state, kind=FunctionKind.MAP, progress=Progress(total=2))
    async with state.watch(job.id) as watch:
        await state.record_chunk(job.id, 0, 1, 0)
        assert await watch.wait_notice(10)
        # A repeat changes nothing and publishes nothing.
        await state.record_chunk(job.id, 0, 1, 0)
        assert not await watch.wait_notice(0.05)


async def test_wait_notice_times_out(state: State) -> None:
    job = await new_job(state)
    async with state.watch(job.id) as watch:
        assert not await watch.wait_notice(0.05)


async def test_watch_ignores_other_jobs(state: State) -> None:
    mine = await new_job(state)
    other = await new_job(state)
    async with state.watch(mine.id) as watch:
        await state.finish(other.id, None, JobStatus.SUCCEEDED)
        await state.cancel(other.id)
        assert not await watch.wait_notice(0.05)


async def test_each_watch_of_a_job_is_woken(state: State) -> None:
    job = await new_job(state)
    async with state.watch(job.id) as first, state.watch(job.id) as second:
        await state.finish(job.id, None, JobStatus.SUCCEEDED)
        assert await first.wait_notice(10)
        assert await second.wait_notice(10)


# --- retention, manifest --------------------------------------------------------------------


async def test_expired_jobs_oldest_first_with_limit(state: State) -> None:
    old = await new_job(state, status=JobStatus.SUCCEEDED, finished_at=100.0)
    older = await new_job(state, status=JobStatus.FAILED, finished_at=50.0)
    await new_job(state, status=JobStatus.SUCCEEDED, finished_at=300.0)
    await new_job(state)  # not finished
    assert [job.id for job in await state.expired_jobs(200.0, 10)] == [older.id, old.id]
    assert [job.id for job in await state.expired_jobs(200.0, 1)] == [older.id]
    assert await state.expired_jobs(50.0, 10) == []


async def test_expired_jobs_includes_finished_now(state: State) -> None:
    job = await new_job(state)
    done = await state.finish(job.id, None, JobStatus.SUCCEEDED)
    assert done is not None and done.finished_at is not None
    assert await state.expired_jobs(done.finished_at + 1, 10) == [done]


async def test_delete_jobs(state: State) -> None:
    job = await new_job(state, kind=FunctionKind.MAP, idempotency_key="k", owner="o")
    keep = await new_job(state)
    assert await state.record_chunk(job.id, 0, 1, 0) is not None
    await state.delete_jobs([job.id, new_job_id()])
    await state.delete_jobs([])
    assert await state.get_job(job.id) is None
    assert await state.get_job(keep.id) == keep
    # Its chunk records and its idempotency key went with it.
    reborn, created = await state.create_job(job)
    assert created and reborn == job
    assert await state.record_chunk(job.id, 0, 1, 0) == (Progress(1, 0, 0), True)
    await state.delete_jobs([job.id])
    fresh, created = await state.create_job(make_job(idempotency_key="k", owner="o"))
    assert created and fresh.id != job.id


async def test_manifest(state: State) -> None:
    assert await state.get_manifest() is None
    await state.put_manifest(b'{"functions": []}')
    assert await state.get_manifest() == b'{"functions": []}'
    await state.put_manifest(b"\x00v2")
    assert await state.get_manifest() == b"\x00v2"


# --- attempts against their rules (batchgate.attempts), on random histories ------------------


class AttemptsModel:
    """The job and task state the rules of `batchgate.attempts` say a backend must keep."""

    def __init__(self, kind: FunctionKind) -> None:
        self.kind = kind
        self.status = JobStatus.QUEUED
        self.attempts = 0
        self.tasks: dict[int, attempts.TaskAttempts] = {}
        self.counted: set[int] = set()

    def start(
        self, delivery: int, task: int, crash_retries: int
    ) -> tuple[int, int, int, bool, bool, JobError | None, JobStatus, int] | None:
        if self.status.terminal or task in self.counted:
            return None
        before = self.tasks.get(task, attempts.TaskAttempts())
        verdict, after = attempts.start(before, delivery, crash_retries)
        if verdict is attempts.Verdict.STALE:
            return None
        if verdict is attempts.Verdict.STARTED:
            self.tasks[task] = after
            self.status = JobStatus.RUNNING
            plain = task == attempts.PLAIN
            self.attempts = after.started if plain else max(self.attempts, after.started)
        a = attempts.Attempt.of(Job(id="x", function="f"), before, after, verdict)
        return (a.number, a.failures, a.crashes, a.started, a.interrupted, a.last_error,
                self.status, self.attempts)  # fmt: skip

    def requeue(self, number: int, error: JobError, task: int, by_function: bool) -> bool:
        record = self.tasks.get(task)
        if self.status.terminal or record is None:
            return False
        after = attempts.fail(record, number, error, by_function=by_function)
        if after is None:
            return False
        self.tasks[task] = after
        if task == attempts.PLAIN:
            self.status = JobStatus.QUEUED
        return True

    def finish(self, number: int | None) -> bool:
        if self.status.terminal or (number is not None and number != self.attempts):
            return False
        self.status = JobStatus.SUCCEEDED
        return True


@pytest.mark.parametrize("seed", range(6))
async def test_attempts_follow_their_rules(state: State, seed: int) -> None:
    rng = random.Random(seed)
    kind = FunctionKind.MAP if seed % 2 else FunctionKind.FUNCTION
    tasks = [0, 1, 2] if kind is FunctionKind.MAP else [attempts.PLAIN]
    job = await new_job(state, kind=kind, progress=Progress(total=30))
    model = AttemptsModel(kind)
    deliveries = dict.fromkeys(tasks, 0)
    for step in range(60):
        task = rng.choice(tasks)
        op = rng.random()
        if op < 0.5:
            # A delivery: mostly the next one, sometimes a stale or a repeated one.
            deliveries[task] += rng.choice([1, 1, 1, 0])
            delivery = max(0, deliveries[task] - rng.choice([0, 0, 0, 1]))
            retries = rng.choice([1, 2, 3])
            got = await state.start_attempt(job.id, delivery, task, retries)
            want = model.start(delivery, task, retries)
            if want is None:
                assert got is None, (step, got)
            else:
                assert got is not None, step
                assert (got.number, got.failures, got.crashes, got.started, got.interrupted,
                        got.last_error, got.job.status, got.job.attempts) == want, step  # fmt: skip
        elif op < 0.85:
            number = model.tasks.get(task, attempts.TaskAttempts()).started - rng.choice([0, 0, 1])
            error = JobError(rng.choice(["ValueError", "ExecutorLost"]), f"step {step}")
            by_function = rng.random() < 0.5
            got_job = await state.requeue(job.id, number, error, task, by_function)
            assert (got_job is not None) == model.requeue(number, error, task, by_function), step
        elif op < 0.95 and kind is FunctionKind.MAP:
            if await state.record_chunk(job.id, task, 1, 0) is not None:
                model.counted.add(task)
        elif rng.random() < 0.3:
            number = rng.choice([None, model.attempts, model.attempts - 1])
            fence = None if kind is FunctionKind.MAP else number
            got_done = await state.finish(job.id, fence, JobStatus.SUCCEEDED, result=b"1")
            assert (got_done is not None) == model.finish(fence), step
            if got_done is not None:
                break
        stored = await state.get_job(job.id)
        assert stored is not None
        assert (stored.status, stored.attempts) == (model.status, model.attempts), step


async def test_a_fresh_state_is_healthy(state: State) -> None:
    await state.check_health()  # raises BackendError when it could not take writes
