import asyncio
import pytest
from batchgate.models import Job, JobStatus, new_job_id
from batchgate.state import open_state
import redis.asyncio as aioredis
pytestmark = pytest.mark.anyio

async def test_x(redis_url, redis_server):
    admin = aioredis.Redis(port=redis_server.port, protocol=2)
    state = await open_state(redis_url)
    print("opened", flush=True)
    try:
        job, _ = await state.create_job(Job(id=new_job_id(), function="f"))
        print("created", flush=True)
        async with state.watch(job.id) as watch:
            print("watching", flush=True)
            assert not await watch.wait_notice(0.05)
            waiter = asyncio.create_task(watch.wait_notice(5))
            await asyncio.sleep(0)
            print("kill", await admin.client_kill_filter(_type="pubsub"), flush=True)
            print("waiter", await waiter, flush=True)
    finally:
        print("closing", flush=True)
        await state.aclose()
        print("closed", flush=True)
