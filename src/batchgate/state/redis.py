"""Job state in Redis (`redis://host:port/db?prefix=…&ttl=…`, or `rediss://`).

Keys under the prefix (default `batchgate:`):

- `job:<id>`: hash, one job (short field names, absent fields are None; `ix` names its
  idempotency key). Terminal jobs expire after `ttl` seconds (default 7 days); the gateway
  normally deletes them sooner through `expired_jobs` / `delete_jobs`.
- `idem:<json [owner, function, key]>`: the id of the job created under that key.
- `chunks:<id>`: set of the map job's chunks already counted.
- `attempts:<id>`: hash, each task's attempts (`batchgate.attempts.TaskAttempts`): field
  `<task>` = "started failed delivery running", `<task>:et` / `<task>:em` its last error.
- `finished`: sorted set, job id -> finish time, for `expired_jobs`.
- `manifest`: the workers' function registry.

Every transition is one Lua script (`batchgate.state.redis_lua`) that also publishes on
the channel `<prefix>job:<id>`; `watch` listens through `RedisNotices`.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from batchgate import attempts
from batchgate.attempts import PLAIN, Attempt, TaskAttempts, Verdict
from batchgate.errors import BackendError, ConfigError
from batchgate.models import FunctionKind, Job, JobError, JobStatus, Progress, now
from batchgate.redis_db import LuaScript, PipelinedClient, client, split_url, translate
from batchgate.state import redis_lua
from batchgate.state.base import Watch
from batchgate.state.redis_notices import RedisNotices

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisState", "open"]

DEFAULT_TTL_S = 7 * 24 * 3600
# Jobs fetched per round trip by expired_jobs.
FETCH_BATCH = 500

GET_JOB = LuaScript.of(redis_lua.GET_JOB)
CREATE = LuaScript.of(redis_lua.CREATE)
START_ATTEMPT = LuaScript.of(redis_lua.START_ATTEMPT)
REQUEUE = LuaScript.of(redis_lua.REQUEUE)
FINISH = LuaScript.of(redis_lua.FINISH)
REOPEN = LuaScript.of(redis_lua.REOPEN)
CANCEL = LuaScript.of(redis_lua.CANCEL)
RECORD_CHUNK = LuaScript.of(redis_lua.RECORD_CHUNK)
DELETE = LuaScript.of(redis_lua.DELETE)
SCRIPTS = (GET_JOB, CREATE, START_ATTEMPT, REQUEUE, FINISH, REOPEN, CANCEL, RECORD_CHUNK, DELETE)

_KINDS = {k.value.encode(): k for k in FunctionKind}
_STATUSES = {s.value.encode(): s for s in JobStatus}


async def open(url: str) -> RedisState:
    """Connect to the state at `url`; fails with BackendError if Redis does not answer."""
    plain, prefix, params = split_url(url, frozenset({"ttl"}))
    ttl_s = DEFAULT_TTL_S
    if "ttl" in params:
        try:
            ttl_s = int(params["ttl"])
        except ValueError:
            ttl_s = 0
        if ttl_s <= 0:
            raise ConfigError(f"{url!r}: ttl must be a whole number of seconds > 0")
    state = RedisState(client(plain), prefix, ttl_s)
    try:
        await state.load_scripts()
    except BaseException:
        await state.aclose()
        raise
    return state


class RedisState:
    """The State port on Redis hashes and pub/sub; see the module docstring."""

    def __init__(self, redis: Redis, prefix: str, ttl_s: int = DEFAULT_TTL_S) -> None:
        self._redis = redis
        self._mux = PipelinedClient(redis.connection_pool)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._job_prefix = prefix + "job:"
        self._finished = prefix + "finished"
        self._manifest = prefix + "manifest"
        self._notices = RedisNotices(redis.connection_pool.make_connection, self._job_prefix)

    @translate("state")
    async def load_scripts(self) -> None:
        """Load every script into Redis in one round trip (else each loads on first use)."""
        await asyncio.gather(*(self._mux.execute("SCRIPT", "LOAD", s.source) for s in SCRIPTS))

    def _keys(self, job_id: str) -> list[str]:
        return [
            self._job_prefix + job_id,
            self._finished,
            self.prefix + "chunks:" + job_id,
            self.prefix + "attempts:" + job_id,
        ]

    async def _transition(self, script: LuaScript, job_id: str, *args: Any) -> Job | None:
        args = (job_id, self._job_prefix + job_id, *args)
        reply = await self._mux.run_script(script, self._keys(job_id), args)
        return None if reply is None else _job(job_id, reply)

    @translate("state")
    async def create_job(self, job: Job) -> tuple[Job, bool]:
        """Store a new job, or return the one stored under the same idempotency key."""
        keys = [self._job_prefix + job.id, self._finished]
        if job.idempotency_key is not None:
            key = json.dumps([job.owner, job.function, job.idempotency_key], ensure_ascii=False)
            keys.append(self.prefix + "idem:" + key)
        terminal = b"1" if job.status.terminal else b"0"
        finished_at = b"" if job.finished_at is None else _float(job.finished_at)
        args = [job.id, self._job_prefix, self.ttl_s, terminal, finished_at, *_fields(job)]
        # A connection lost before the reply makes the client run the script again; the
        # second run finds this very job (by key or by id) and reports it as created.
        reply = await self._mux.run_script(CREATE, keys, args)
        if reply[0] == 0:
            stored = _job(reply[1].decode(), reply[2])
            return stored, stored.id == job.id
        return job, True

    @translate("state")
    async def get_job(self, job_id: str) -> Job | None:
        packed = await self._mux.run_script(GET_JOB, [self._job_prefix + job_id], ())
        return None if packed is None else _job(job_id, packed)

    @translate("state")
    async def start_attempt(
        self, job_id: str, delivery: int, task: int = PLAIN, crash_retries: int = 3
    ) -> Attempt | None:
        """Count an attempt of the task as its function starts (see `batchgate.attempts`)."""
        args = (job_id, self._job_prefix + job_id, delivery, task, crash_retries, _float(now()))
        reply = await self._mux.run_script(START_ATTEMPT, self._keys(job_id), args)
        if reply is None:
            return None
        started, packed, *record = reply
        s, f, d, running, error_type, error_message = record
        error = (
            None
            if error_type is None
            else JobError(error_type.decode(), _text(error_message) or "")
        )
        before = TaskAttempts(int(s), int(f), int(d), bool(int(running)), error)
        verdict, after = attempts.start(before, delivery, crash_retries)
        if (verdict is Verdict.STARTED) != (started == 1):
            raise BackendError(f"redis state: start_attempt disagrees with the rules ({verdict})")
        return Attempt.of(_job(job_id, packed), before, after, verdict)

    @translate("state")
    async def requeue(
        self,
        job_id: str,
        attempt: int,
        error: JobError,
        task: int = PLAIN,
        by_function: bool = True,
    ) -> Job | None:
        """Report a failed attempt that will be retried; None if fenced off or terminal."""
        return await self._transition(
            REQUEUE, job_id, attempt, error.type, error.message, task, int(by_function)
        )

    @translate("state")
    async def finish(
        self,
        job_id: str,
        attempt: int | None,
        status: JobStatus,
        *,
        result: bytes | None = None,
        result_ref: str | None = None,
        error: JobError | None = None,
    ) -> Job | None:
        """The terminal transition, once; None if terminal already or fenced off."""
        if not status.terminal:
            raise ValueError(f"finish needs a terminal status, not {status.value!r}")
        outcome: list[Any] = []
        if result is not None:
            outcome += ("r", result)
        if result_ref is not None:
            outcome += ("rr", result_ref)
        if error is not None:
            outcome += ("et", error.type, "em", error.message)
        fence = "" if attempt is None else attempt
        return await self._transition(
            FINISH, job_id, fence, status.value, _float(now()), self.ttl_s, *outcome
        )

    @translate("state")
    async def reopen(self, job_id: str) -> Job | None:
        """A failed job back to queued, attempts/error/finish time cleared; else None."""
        return await self._transition(REOPEN, job_id)

    @translate("state")
    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job that is not terminal; None if it already is."""
        return await self._transition(CANCEL, job_id, _float(now()), self.ttl_s)

    @translate("state")
    async def record_chunk(
        self, job_id: str, chunk: int, done: int, failed: int
    ) -> tuple[Progress, bool] | None:
        """Count a finished chunk exactly once (chunk set and counters in one script)."""
        keys = [self._job_prefix + job_id, self.prefix + "chunks:" + job_id]
        args = [self._job_prefix + job_id, chunk, done, failed]
        reply = await self._mux.run_script(RECORD_CHUNK, keys, args)
        if reply is None:
            return None
        counted, done_total, failed_total, total = (int(value) for value in reply)
        return Progress(done_total, failed_total, total), counted == 1

    def watch(self, job_id: str) -> AbstractAsyncContextManager[Watch]:
        """Subscribe to one job's notices; entered once Redis confirmed the subscription."""
        return self._notices.watch(job_id)

    @translate("state")
    async def expired_jobs(self, finished_before: float, limit: int) -> list[Job]:
        """Terminal jobs that finished before `finished_before`, oldest first."""
        bound = "+inf" if math.isinf(finished_before) else "(" + repr(finished_before)
        jobs: list[Job] = []
        while len(jobs) < limit:
            want = min(limit - len(jobs), FETCH_BATCH)
            ids: list[bytes] = await self._mux.execute(
                "ZRANGEBYSCORE", self._finished, "-inf", bound, "LIMIT", len(jobs), want
            )
            if not ids:
                break
            records = await asyncio.gather(
                *(self._mux.run_script(GET_JOB, [self._job_prefix.encode() + i], ()) for i in ids)
            )
            found = list(zip(ids, records, strict=True))
            gone = [job_id for job_id, packed in found if packed is None]
            if gone:
                # Expired by their TTL: drop them from the index too.
                await self._mux.execute("ZREM", self._finished, *gone)
            jobs += (_job(i.decode(), packed) for i, packed in found if packed is not None)
            if len(ids) < want:
                break
        return jobs

    @translate("state")
    async def delete_jobs(self, job_ids: Sequence[str]) -> None:
        """Delete jobs with their chunk sets and idempotency keys; unknown ids are ignored."""
        for start in range(0, len(job_ids), FETCH_BATCH):
            batch = job_ids[start : start + FETCH_BATCH]
            await self._mux.run_script(DELETE, [self._finished], [self.prefix, *batch])

    @translate("state")
    async def put_manifest(self, data: bytes) -> None:
        """Replace the published function registry."""
        await self._mux.execute("SET", self._manifest, data)

    @translate("state")
    async def get_manifest(self) -> bytes | None:
        data: bytes | None = await self._mux.execute("GET", self._manifest)
        return data

    async def check_health(self) -> None:
        """Nothing to check beyond answering (reads show that)."""

    async def aclose(self) -> None:
        """Stop the notice reader and close the connections."""
        await self._notices.aclose()
        await self._mux.aclose()
        await self._redis.aclose()


def _float(value: float) -> bytes:
    """A float as text that parses back to the same float."""
    return repr(value).encode()


def _fields(job: Job) -> list[Any]:
    """The hash fields of a new job, as a flat list of name/value pairs."""
    progress = job.progress
    fields: list[Any] = ["f", job.function, "k", job.kind.value, "s", job.status.value]
    fields += ("a", job.attempts, "pd", progress.done, "pf", progress.failed)
    fields += ("pt", progress.total, "c", _float(job.created_at), "o", job.owner)
    optional: tuple[tuple[str, Any], ...] = (
        ("et", None if job.error is None else job.error.type),
        ("em", None if job.error is None else job.error.message),
        ("st", None if job.started_at is None else _float(job.started_at)),
        ("fi", None if job.finished_at is None else _float(job.finished_at)),
        ("ik", job.idempotency_key),
        ("rh", job.request_hash),
        ("r", job.result),
        ("rr", job.result_ref),
    )
    for name, value in optional:
        if value is not None:
            fields += (name, value)
    return fields


def _unpack(packed: bytes) -> list[bytes | None]:
    """The values of a job packed by the scripts (see `redis_lua.FIELDS`)."""
    values: list[bytes | None] = []
    pos = 0
    while pos < len(packed):
        if packed[pos] == 0x2D:  # "-": absent
            values.append(None)
            pos += 1
        else:
            colon = packed.index(b":", pos)
            end = colon + 1 + int(packed[pos:colon])
            values.append(packed[colon + 1 : end])
            pos = end
    if len(values) != len(redis_lua.FIELDS):
        raise ValueError(f"a packed job has {len(values)} fields, not {len(redis_lua.FIELDS)}")
    return values


def _job(job_id: str, packed: bytes) -> Job:
    (
        function, kind, status, attempts, done, failed, total, error_type, error_message,
        created_at, started_at, finished_at, owner, idempotency_key, request_hash, result,
        result_ref,
    ) = _unpack(packed)  # fmt: skip
    assert function is not None and kind is not None and status is not None
    assert attempts is not None and done is not None and failed is not None
    assert total is not None and created_at is not None and owner is not None
    return Job(
        id=job_id,
        function=function.decode(),
        kind=_KINDS[kind],
        status=_STATUSES[status],
        attempts=int(attempts),
        progress=Progress(int(done), int(failed), int(total)),
        error=None
        if error_type is None
        else JobError(error_type.decode(), _text(error_message) or ""),
        created_at=float(created_at),
        started_at=None if started_at is None else float(started_at),
        finished_at=None if finished_at is None else float(finished_at),
        owner=owner.decode(),
        idempotency_key=_text(idempotency_key),
        request_hash=_text(request_hash),
        result=result,
        result_ref=_text(result_ref),
    )


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()
