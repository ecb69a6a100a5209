"""The `raw-redis` floor: the least code that turns an HTTP call into a Redis job and back.

`gateway`: one uvicorn endpoint (batchgate's uvicorn settings) that LPUSHes `id + body`
and awaits the result, which arrives on ONE shared pub/sub connection read by a
background task that resolves per-request futures. `worker`: BRPOPs a job, PUBLISHes
`id + null`, one job at a time. No durability, retries, state or executor processes:
what is left is the Redis round trip batchgate over Redis cannot go below.

    python bench/raw_redis.py gateway --redis-url redis://127.0.0.1:6390/0 --port 8100
    python bench/raw_redis.py worker --redis-url redis://127.0.0.1:6390/0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, cast

import uvicorn
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

QUEUE_KEY = "bench:jobs"
RESULTS_CHANNEL = "bench:results"
ID_BYTES = 32  # len(uuid4().hex): a job is id + body, a result is id + result
NOOP_RESULT = b"null"  # what batchgate answers for testapp's `noop`
BRPOP_TIMEOUT_S = 1
SHUTDOWN_S = 5  # in-flight requests get this long to finish on SIGTERM


class Waiters:
    """Futures of in-flight requests by job id, resolved by the pub/sub reader."""

    def __init__(self) -> None:
        self._futures: dict[bytes, asyncio.Future[bytes]] = {}

    @contextlib.contextmanager
    def waiting(self, job_id: bytes) -> Iterator[asyncio.Future[bytes]]:
        """Register a future for `job_id` for the duration of the block."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._futures[job_id] = future
        try:
            yield future
        finally:
            del self._futures[job_id]

    def resolve(self, message: bytes) -> None:
        """Hand `id + result` to its waiter; results nobody waits for are dropped."""
        future = self._futures.get(message[:ID_BYTES])
        if future is not None and not future.done():
            future.set_result(message[ID_BYTES:])


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway sets `should_exit` itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def create_app(client: Redis, waiters: Waiters) -> Starlette:
    """The gateway's one route: POST /submit answers with the job's result."""

    async def submit(request: Request) -> Response:
        job_id = uuid.uuid4().hex.encode()
        with waiters.waiting(job_id) as future:
            # Registered before the push, so a fast result cannot arrive unclaimed.
            await client.lpush(QUEUE_KEY, job_id + await request.body())
            result = await future
        return Response(result, media_type="application/json")

    return Starlette(routes=[Route("/submit", submit, methods=["POST"])])


async def read_results(pubsub: PubSub, waiters: Waiters) -> None:
    """Dispatch every published result to its waiting request, forever."""
    async for message in pubsub.listen():
        if message["type"] == "message":
            waiters.resolve(message["data"])


def _on_stop_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, callback)


async def run_gateway(redis_url: str, port: int) -> None:
    """Serve POST /submit on 127.0.0.1:`port` until SIGINT or SIGTERM."""
    client = Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(RESULTS_CHANNEL)
        waiters = Waiters()
        config = uvicorn.Config(
            create_app(client, waiters),
            host="127.0.0.1",
            port=port,
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="info",
            timeout_graceful_shutdown=SHUTDOWN_S,
            server_header=False,
        )
        server = _Server(config)
        _on_stop_signals(lambda: setattr(server, "should_exit", True))
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(read_results(pubsub, waiters), name="results-reader")
            await server.serve()
            reader.cancel()
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def run_worker(redis_url: str) -> None:
    """Take jobs one at a time and publish a no-op result, until SIGINT or SIGTERM."""
    client = Redis.from_url(redis_url)
    stop = asyncio.Event()
    _on_stop_signals(stop.set)
    try:
        while not stop.is_set():
            item = await client.brpop([QUEUE_KEY], timeout=BRPOP_TIMEOUT_S)
            if item is not None:
                job = cast(bytes, item[1])  # no decode_responses: values are bytes
                await client.publish(RESULTS_CHANNEL, job[:ID_BYTES] + NOOP_RESULT)
    finally:
        await client.aclose()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def main() -> None:
    """Command line: `gateway --redis-url URL --port P` or `worker --redis-url URL`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    gateway = roles.add_parser("gateway", help="HTTP endpoint POST /submit")
    gateway.add_argument("--redis-url", required=True)
    gateway.add_argument("--port", type=int, required=True)
    worker = roles.add_parser("worker", help="BRPOP / PUBLISH loop")
    worker.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    if args.role == "gateway":
        _run(run_gateway(args.redis_url, args.port))
    else:
        _run(run_worker(args.redis_url))


if __name__ == "__main__":
    main()
