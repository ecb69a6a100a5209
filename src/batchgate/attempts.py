"""What counts as an attempt, and the two budgets that bound a task's attempts.

An attempt is one start of a task's function on an executor: a task a worker received
but never ran spends nothing. Each task (a plain job's one task, or one chunk of a map
job) keeps a TaskAttempts record in the State, changed by two transitions:

- `start`: when an executor is ready to run the function. Refused for a stale delivery (a
  later delivery of the task already started: the queue's delivery numbers fence starts)
  and, without counting anything, once the task's crashes exceed the crash budget.
- `fail`: the worker reports an attempt that ended without success, to be retried:
  `by_function` when the function raised (or passed its time limit), else an
  infrastructure failure the worker saw (its executor died, it could not store the
  result). Fenced by the attempt's number.

Every attempt ends in one of three ways: success (the task is settled), the function's
failure (`failed` counts those) or a crash, reported or not (a worker killed mid-call
never reports). So at a new start, every earlier attempt that is not a function failure
was a crash: `crashes = started - failed`. The function's failures spend its `retries`;
crashes spend BATCHGATE_CRASH_RETRIES; neither spends the other's.

The memory and SQLite backends run these functions; the Redis backend's Lua mirrors them
and a model-based contract test holds it to them.
"""

from __future__ import annotations

import dataclasses
import enum

from batchgate.models import Job, JobError

# The task number of a plain job's one task; a map job's tasks are numbered by chunk.
PLAIN = -1
# Crashes a task may have and still run again (BATCHGATE_CRASH_RETRIES).
DEFAULT_CRASH_RETRIES = 3


def most_starts(max_attempts: int, crash_retries: int) -> int:
    """The most times a task's function can start: each of its attempts but the last
    failing, and each crash the budget allows, then one more crash."""
    return max_attempts + crash_retries + 1


@dataclasses.dataclass(frozen=True, slots=True)
class TaskAttempts:
    """One task's attempts as the State keeps them.

    `delivery` is the queue delivery number of the latest start (the fence for starts);
    `running` says whether the latest attempt has not reported yet; `error` is the last
    reported failure.
    """

    started: int = 0
    failed: int = 0
    delivery: int = 0
    running: bool = False
    error: JobError | None = None

    @property
    def crashes(self) -> int:
        """Attempts that ended without an outcome from the function, counting the latest
        one if it is still `running` (as it must be taken at a new start)."""
        return self.started - self.failed


class Verdict(enum.Enum):
    """What `start` decided."""

    STARTED = "started"
    STALE = "stale"  # a later delivery of the task already started: nothing changes
    OVER_BUDGET = "over-budget"  # too many crashes: nothing is counted, the task must fail


def start(record: TaskAttempts, delivery: int, crash_retries: int) -> tuple[Verdict, TaskAttempts]:
    """Start an attempt for the queue's `delivery`; the verdict and the record after it."""
    if delivery < record.delivery:
        return Verdict.STALE, record
    if record.crashes > crash_retries:
        return Verdict.OVER_BUDGET, record
    started = dataclasses.replace(
        record, started=record.started + 1, delivery=delivery, running=True
    )
    return Verdict.STARTED, started


def fail(
    record: TaskAttempts, number: int, error: JobError, *, by_function: bool
) -> TaskAttempts | None:
    """Report that attempt `number` failed and will be retried; None if it is not the
    task's latest attempt (a later one started since: the report changes nothing)."""
    if number < 1 or record.started != number:
        return None
    return dataclasses.replace(
        record, failed=record.failed + by_function, running=False, error=error
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """The answer of `State.start_attempt`.

    `number` is the task's attempt count, this one included when `started`: the fence
    for its outcome (`finish` of a plain job, `requeue`). `failures` and `crashes` count
    the task's earlier attempts. `interrupted`: the attempt before this one never
    reported (its worker died or lost its lease). `last_error`: the task's last reported
    failure.
    """

    job: Job
    number: int
    failures: int
    crashes: int
    started: bool
    interrupted: bool
    last_error: JobError | None

    @classmethod
    def of(cls, job: Job, before: TaskAttempts, after: TaskAttempts, verdict: Verdict) -> Attempt:
        return cls(
            job=job,
            number=after.started,
            failures=before.failed,
            crashes=before.crashes,
            started=verdict is Verdict.STARTED,
            interrupted=before.running,
            last_error=before.error,
        )


def crash_error(attempt: Attempt) -> JobError:
    """The error of a task whose crashes used up the crash budget, naming the last cause."""
    if attempt.interrupted or attempt.last_error is None:
        kind = "WorkerLost"
        cause = "its worker stopped, or lost its lease, before the function finished"
    else:
        kind, cause = attempt.last_error.type, attempt.last_error.message
    total = attempt.number
    return JobError(
        kind,
        f"{attempt.crashes} of {total} attempts ended without an outcome from the function; "
        f"the last: {cause}",
    )
