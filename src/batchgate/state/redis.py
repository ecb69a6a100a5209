"""Job state in Redis (`redis://host:port/db?prefix=…&ttl=…`, or `rediss://`).

Keys under the prefix (default `batchgate:`):

- `job:<id>`: hash, one job (short field names, absent fields are None; `ix` names its
  idempotency key). Terminal jobs expire after `ttl` seconds (default 7 days); the gateway
  normally deletes them sooner through `expired_jobs` / `delete_jobs`.
- `idem:<json [owner, function, key]>`: the id of the job created under that key.
- `chunks:<id>`: set of the map job's chunks already counted.
- `finished`: sorted set, job id -> finish time, for `expired_jobs`.
- `manifest`: the workers' function registry.

Every transition is one Lua script (`batchgate.state.redis_lua`) that also publishes on
the channel `<prefix>job:<id>`; `watch` listens through `RedisNotices`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, cast

from batchgate.errors import ConfigError
from batchgate.models import FunctionKind, Job, JobError, JobStatus, Progress, now
from batchgate.redis_db import client, split_url, translate
from batchgate.state import redis_lua
from batchgate.state.base import Watch
from batchgate.state.redis_notices import RedisNotices

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisState", "open"]

DEFAULT_TTL_S = 7 * 24 * 3600
# Jobs fetched per round trip by expired_jobs.
FETCH_BATCH = 500

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
        await state.ping()
    except BaseException:
        await state.aclose()
        raise
    return state


class RedisState:
    """The State port on Redis hashes and pub/sub; see the module docstring."""

    def __init__(self, redis: Redis, prefix: str, ttl_s: int = DEFAULT_TTL_S) -> None:
        self._redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._job_prefix = prefix + "job:"
        self._finished = prefix + "finished"
        self._manifest = prefix + "manifest"
        self._notices = RedisNotices(redis.connection_pool.make_connection, self._job_prefix)
        self._create = redis.register_script(redis_lua.CREATE)
        self._start = redis.register_script(redis_lua.START_ATTEMPT)
        self._requeue = redis.register_script(redis_lua.REQUEUE)
        self._finish = redis.register_script(redis_lua.FINISH)
        self._reopen = redis.register_script(redis_lua.REOPEN)
        self._cancel = redis.register_script(redis_lua.CANCEL)
        self._record_chunk = redis.register_script(redis_lua.RECORD_CHUNK)
        self._delete = redis.register_script(redis_lua.DELETE)

    @translate("state")
    async def ping(self) -> None:
        await self._redis.ping()

    def _keys(self, job_id: str) -> list[str]:
        return [self._job_prefix + job_id, self._finished, self.prefix + "chunks:" + job_id]

    async def _transition(self, script: Any, job_id: str, *args: Any) -> Job | None:
        reply = await script(self._keys(job_id), [job_id, self._job_prefix + job_id, *args])
        return None if reply is None else _job(job_id, _pairs(reply))

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
        reply = await self._create(keys, args)
        if reply[0] == 1:
            return job, True
        if reply[0] == 0:
            return _job(reply[1].decode(), _pairs(reply[2])), False
        raise ValueError(f"job id {job.id!r} is already stored")

    @translate("state")
    async def get_job(self, job_id: str) -> Job | None:
        fields = cast("dict[bytes, bytes]", await self._redis.hgetall(self._job_prefix + job_id))
        return _job(job_id, fields) if fields else None

    @translate("state")
    async def start_attempt(self, job_id: str, attempt: int) -> Job | None:
        """Mark the job running under `attempt`; None if it is terminal or `attempt` is stale."""
        return await self._transition(self._start, job_id, attempt, _float(now()))

    @translate("state")
    async def requeue(self, job_id: str, attempt: int, error: JobError) -> Job | None:
        """Back to queued with the attempt's error; None if fenced off or terminal."""
        return await self._transition(self._requeue, job_id, attempt, error.type, error.message)

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
            self._finish, job_id, fence, status.value, _float(now()), self.ttl_s, *outcome
        )

    @translate("state")
    async def reopen(self, job_id: str) -> Job | None:
        """A failed job back to queued, attempts/error/finish time cleared; else None."""
        return await self._transition(self._reopen, job_id)

    @translate("state")
    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job that is not terminal; None if it already is."""
        return await self._transition(self._cancel, job_id, _float(now()), self.ttl_s)

    @translate("state")
    async def record_chunk(
        self, job_id: str, chunk: int, done: int, failed: int
    ) -> tuple[Progress, bool] | None:
        """Count a finished chunk exactly once (chunk set and counters in one script)."""
        keys = [self._job_prefix + job_id, self.prefix + "chunks:" + job_id]
        reply = await self._record_chunk(keys, [self._job_prefix + job_id, chunk, done, failed])
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
            ids = cast(
                "list[bytes]",
                await self._redis.zrangebyscore(
                    self._finished, "-inf", bound, start=len(jobs), num=want
                ),
            )
            if not ids:
                break
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self._job_prefix + job_id.decode())
                records: list[dict[bytes, bytes]] = await pipe.execute()
            found = list(zip(ids, records, strict=True))
            gone = [job_id for job_id, fields in found if not fields]
            if gone:
                # Expired by their TTL: drop them from the index too.
                await self._redis.zrem(self._finished, *gone)
            jobs += (_job(job_id.decode(), fields) for job_id, fields in found if fields)
            if len(ids) < want:
                break
        return jobs

    @translate("state")
    async def delete_jobs(self, job_ids: Sequence[str]) -> None:
        """Delete jobs with their chunk sets and idempotency keys; unknown ids are ignored."""
        for start in range(0, len(job_ids), FETCH_BATCH):
            batch = job_ids[start : start + FETCH_BATCH]
            await self._delete([self._finished], [self.prefix, *batch])

    @translate("state")
    async def put_manifest(self, data: bytes) -> None:
        """Replace the published function registry."""
        await self._redis.set(self._manifest, data)

    @translate("state")
    async def get_manifest(self) -> bytes | None:
        return cast("bytes | None", await self._redis.get(self._manifest))

    async def aclose(self) -> None:
        """Stop the notice reader and close the connections."""
        await self._notices.aclose()
        await self._redis.aclose()


def _float(value: float) -> bytes:
    """A float as text that parses back to the same float."""
    return repr(value).encode()


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


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


def _job(job_id: str, fields: dict[bytes, bytes]) -> Job:
    def text(name: bytes) -> str | None:
        value = fields.get(name)
        return None if value is None else value.decode()

    def number(name: bytes) -> float | None:
        value = fields.get(name)
        return None if value is None else float(value)

    error_type = text(b"et")
    return Job(
        id=job_id,
        function=fields[b"f"].decode(),
        kind=_KINDS[fields[b"k"]],
        status=_STATUSES[fields[b"s"]],
        attempts=int(fields[b"a"]),
        progress=Progress(int(fields[b"pd"]), int(fields[b"pf"]), int(fields[b"pt"])),
        error=None if error_type is None else JobError(error_type, text(b"em") or ""),
        created_at=float(fields[b"c"]),
        started_at=number(b"st"),
        finished_at=number(b"fi"),
        owner=fields[b"o"].decode(),
        idempotency_key=text(b"ik"),
        request_hash=text(b"rh"),
        result=fields.get(b"r"),
        result_ref=text(b"rr"),
    )
