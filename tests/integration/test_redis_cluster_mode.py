"""The Redis state on a cluster-mode redis-server, as on ElastiCache Serverless.

The state's Lua scripts declare some keys and build others inside Lua (the job of an
idempotency key, a job's idempotency key and chunk set on retire/reopen/delete). Cluster
mode wants every key of a command, and of a script, in one hash slot; the deployment's
key prefix carries one hash tag (`?prefix={batchgate}:`) for that. Here:

- without a hash tag, every script that declares a job key with another key fails
  (CROSSSLOT), and DELETE's two-key DEL fails inside the script: the tag is required;
- with the production tag on a node that serves that one slot only, a full job lifecycle
  works, so no script touches a key outside the tag's slot, declared or not (a node
  owning every slot would let a script without flags touch another slot's key; the
  contract suite runs on such a node, as `redis-cluster`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from batchgate.errors import BackendError
from batchgate.models import FunctionKind, Job, JobError, JobStatus, Progress, new_job_id
from batchgate.state import State, open_state
from tests.fixtures.redis_server import RedisServer, _delete_prefixed, start_redis_server

pytestmark = pytest.mark.anyio

GUARD_S = 10.0
# The hash tag of the prefix the SAM template gives the state (aws/template.py).
PRODUCTION_TAG = "{batchgate}"
PRODUCTION_SLOT = key_slot(PRODUCTION_TAG.encode())


@pytest.fixture
async def untagged(redis_cluster_server: RedisServer) -> AsyncIterator[tuple[State, str]]:
    """A state on the cluster-mode server whose prefix has no hash tag, and that prefix."""
    prefix = f"bg-{uuid.uuid4().hex}:"
    state = await open_state(f"{redis_cluster_server.url}?prefix={prefix}")
    try:
        yield state, prefix
    finally:
        await state.aclose()
        _delete_prefixed(redis_cluster_server.port, prefix, per_key=True)


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A cluster-mode node serving only the production tag's slot, as if other nodes owned
    the rest: a key of any other slot fails there, even one a script did not declare."""
    server = start_redis_server(
        tmp_path_factory.mktemp("redis-one-slot"),
        cluster=True,
        cluster_slots=range(PRODUCTION_SLOT, PRODUCTION_SLOT + 1),
    )
    try:
        yield server
    finally:
        server.stop()


def _job_id_across_slots(prefix: str) -> str:
    """A new job id whose keys under a tagless `prefix` (its job, chunk set, idempotency
    key and the finished index) lie in four slots, as all but about 4 in 10^4 do."""
    idem = prefix + "idem:" + json.dumps(["o", "f", "k"])
    while True:
        job_id = new_job_id()
        keys = (prefix + "job:" + job_id, prefix + "chunks:" + job_id, prefix + "finished", idem)
        if len({key_slot(key.encode()) for key in keys}) == len(keys):
            return job_id


# --- no hash tag: the scripts' keys span slots ----------------------------------------------

CROSS_SLOT_CALLS: dict[str, Callable[[State, str], Awaitable[object]]] = {
    "create_job": lambda state, job_id: state.create_job(Job(id=job_id, function="f")),
    "create_job idempotent": lambda state, job_id: state.create_job(
        Job(id=job_id, function="f", owner="o", idempotency_key="k")
    ),
    "start_attempt": lambda state, job_id: state.start_attempt(job_id, 1),
    "requeue": lambda state, job_id: state.requeue(job_id, 1, JobError("E", "m")),
    "finish": lambda state, job_id: state.finish(job_id, None, JobStatus.SUCCEEDED),
    "reopen": lambda state, job_id: state.reopen(job_id),
    "cancel": lambda state, job_id: state.cancel(job_id),
    "record_chunk": lambda state, job_id: state.record_chunk(job_id, 0, 1, 0),
}


@pytest.mark.parametrize("call", list(CROSS_SLOT_CALLS))
async def test_without_hash_tag_a_script_with_keys_of_two_slots_fails(
    untagged: tuple[State, str], call: str
) -> None:
    state, prefix = untagged
    job_id = _job_id_across_slots(prefix)
    # Declared KEYS: <prefix>job:<id> with <prefix>finished (and <prefix>chunks:<id> or
    # <prefix>idem:…), each in a slot of its own: refused before the script runs.
    with pytest.raises(BackendError, match="ClusterCrossSlotError: Keys in request don't hash"):
        await CROSS_SLOT_CALLS[call](state, job_id)
    assert await state.get_job(job_id) is None


async def test_without_hash_tag_delete_fails_inside_its_script(
    untagged: tuple[State, str],
) -> None:
    state, prefix = untagged
    # DELETE declares only <prefix>finished; its DEL of a job and its chunk set (two
    # slots) is refused inside the script, which Redis words as a non-local key.
    with pytest.raises(BackendError, match="non local key in a cluster node script"):
        await state.delete_jobs([_job_id_across_slots(prefix)])


async def test_without_hash_tag_single_key_calls_still_work(
    untagged: tuple[State, str], redis_cluster_server: RedisServer
) -> None:
    state, prefix = untagged
    # Opening (SCRIPT LOAD has no keys), reads of one key, the manifest and subscribing
    # (channels are not keys) work, which is why the failure shows up only on the first
    # job created, not at start-up.
    assert await state.get_job(new_job_id()) is None
    assert await state.expired_jobs(float("inf"), 10) == []
    await state.put_manifest(b"m")
    assert await state.get_manifest() == b"m"
    async with state.watch(new_job_id()) as watch:
        assert not await watch.wait_notice(0.05)
    # The server agrees that a job's keys under such a prefix lie in different slots.
    job_id = _job_id_across_slots(prefix)
    with redis.Redis(port=redis_cluster_server.port, protocol=2) as client:
        slots = {
            client.execute_command("CLUSTER", "KEYSLOT", prefix + name)
            for name in ("job:" + job_id, "finished", "chunks:" + job_id)
        }
    assert len(slots) == 3


# --- the production hash tag on a node serving its slot only --------------------------------


async def test_one_slot_node_refuses_an_undeclared_key_of_another_slot(
    one_slot_server: RedisServer,
) -> None:
    # The control for the lifecycle test below: were a script to build a key outside the
    # tag, this node would fail it (a node owning every slot lets the same script pass).
    client = aioredis.Redis(port=one_slot_server.port, protocol=2)
    try:
        info = (await client.execute_command("CLUSTER", "INFO")).decode()
        assert "cluster_state:ok" in info
        assert "cluster_slots_assigned:1\r\n" in info
        probe = f"{PRODUCTION_TAG}:probe-{uuid.uuid4().hex}"
        script = "redis.call('SET', KEYS[1], 1) return redis.call('GET', ARGV[1])"
        with pytest.raises(redis.ResponseError, match="non local key in a cluster node script"):
            await client.eval(script, 1, probe, "{other}:k")
        await client.delete(probe)
    finally:
        await client.aclose()


async def test_full_lifecycle_stays_in_the_production_tags_slot(
    one_slot_server: RedisServer,
) -> None:
    prefix = f"{PRODUCTION_TAG}:t-{uuid.uuid4().hex}:"
    state = await open_state(f"{one_slot_server.url}?prefix={prefix}")
    try:
        # CREATE with an idempotency key; its repeat reads the existing job by a key
        # built in Lua.
        job, created = await state.create_job(
            Job(id=new_job_id(), function="f", owner="o", idempotency_key="k")
        )
        assert created
        again, created = await state.create_job(
            Job(id=new_job_id(), function="f", owner="o", idempotency_key="k")
        )
        assert (again, created) == (job, False)

        # Transitions; retire and reopen reach the idempotency key through the job's `ix`.
        assert await state.start_attempt(job.id, 1) is not None
        assert await state.requeue(job.id, 1, JobError("E", "m")) is not None
        assert await state.start_attempt(job.id, 2) is not None
        async with state.watch(job.id) as watch:
            failed = await state.finish(job.id, 2, JobStatus.FAILED, error=JobError("E", "m"))
            assert failed is not None
            assert await watch.wait_notice(GUARD_S)  # pub/sub notice from the script
            assert await state.reopen(job.id) is not None
            assert await watch.wait_notice(GUARD_S)
        assert await state.cancel(job.id) is not None

        # A map job's chunk set.
        mapped, _ = await state.create_job(
            Job(id=new_job_id(), function="m", kind=FunctionKind.MAP, progress=Progress(total=2))
        )
        async with state.watch(mapped.id) as watch:
            assert await state.record_chunk(mapped.id, 0, 1, 0) == (Progress(1, 0, 2), True)
            assert await watch.wait_notice(GUARD_S)
        assert await state.finish(mapped.id, None, JobStatus.SUCCEEDED, result=b"r") is not None

        # Retention: read and delete the finished jobs with their companions.
        expired = await state.expired_jobs(float("inf"), 10)
        assert {j.id for j in expired} == {job.id, mapped.id}
        await state.delete_jobs([j.id for j in expired])
        assert await state.get_job(job.id) is None
        assert await state.get_job(mapped.id) is None
        _, created = await state.create_job(  # the idempotency key went with its job
            Job(id=new_job_id(), function="f", owner="o", idempotency_key="k")
        )
        assert created
        await state.put_manifest(b"m")
        assert await state.get_manifest() == b"m"
    finally:
        await state.aclose()
        _delete_prefixed(one_slot_server.port, prefix)
