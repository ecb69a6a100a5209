"""Run batchgate processes: the all-in-one server, a gateway, or a worker."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import uvicorn

from batchgate.app import Registry, load_app
from batchgate.errors import BackendError, ConfigError
from batchgate.gateway import create_gateway
from batchgate.jobs import Jobs, expiry_interval_s
from batchgate.models import dumps
from batchgate.queue import Queue, open_queue
from batchgate.settings import Settings
from batchgate.state import State, open_state
from batchgate.store import Store, open_store
from batchgate.urls import local_path, scheme_of
from batchgate.worker.executor import ExecutorPool
from batchgate.worker.runtime import Worker

log = logging.getLogger("batchgate")

# How often a gateway without APP re-reads the workers' function manifest.
MANIFEST_REFRESH_S = 5.0


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: the process decides how to stop."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self.on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()


def listen(settings: Settings) -> socket.socket:
    """The gateway's listening socket; ConfigError (with the reason) if the bind fails."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        return socket.create_server((settings.host, settings.port), family=family)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None


def check_bind(settings: Settings) -> None:
    """A non-loopback bind needs API keys, or an explicit --insecure."""
    host = settings.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not settings.api_keys and not settings.insecure:
        raise ConfigError(
            f"binding to {host} exposes the API beyond this machine: give --api-key "
            "(or BATCHGATE_API_KEYS), or --insecure to run without keys"
        )


@contextlib.asynccontextmanager
async def open_backends(settings: Settings) -> AsyncIterator[tuple[Queue, State, Store]]:
    queue = await open_queue(settings.queue_url)
    try:
        state = await open_state(settings.state_url)
        try:
            store = await open_store(settings.store_url)
            try:
                yield queue, state, store
            finally:
                await store.aclose()
        finally:
            await state.aclose()
    finally:
        await queue.aclose()


@contextlib.contextmanager
def exclusive_queue_file(settings: Settings) -> Any:
    """For an embedded SQLite queue, hold a lock that says 'this server owns its leases'.

    Yields True when the queue is such a file (and the lock is ours), else False.
    """
    if scheme_of(settings.queue_url) != "sqlite":
        yield False
        return
    lock_path = Path(str(local_path(settings.queue_url)) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another batchgate serve is already running on {lock_path.parent}"
            ) from None
        yield True
    finally:
        os.close(fd)


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _cleanup_loop(jobs: Jobs) -> None:
    interval = expiry_interval_s(jobs.settings.result_ttl_s)
    while True:
        try:
            await jobs.delete_expired(time.time())
        except BackendError as exc:  # an outage: the next round catches up
            log.warning("deleting expired jobs failed: %s", exc.message)
        await asyncio.sleep(interval)


async def _until(stop: asyncio.Event, coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` until it ends or `stop` is set, whichever comes first."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
    finally:
        for t in (task, stopper):
            t.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)


async def serve(
    app_ref: str | None,
    settings: Settings,
    *,
    run_gateway: bool = True,
    run_worker: bool = True,
    owns_queue: bool = False,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Run a gateway and/or a worker until SIGINT or SIGTERM, then drain and exit.

    `owns_queue` (the all-in-one server): this process alone serves its embedded queue, so
    on start it re-queues the tasks an earlier process left leased. `on_listening` is
    called with the gateway's URL once it accepts requests (never if the bind fails).
    """
    if run_gateway:
        check_bind(settings)
    with listen(settings) if run_gateway else contextlib.nullcontext() as sock:
        await _serve(app_ref, settings, sock, run_worker, owns_queue, on_listening)


async def _serve(
    app_ref: str | None,
    settings: Settings,
    sock: socket.socket | None,
    run_worker: bool,
    owns_queue: bool,
    on_listening: Callable[[str], None] | None,
) -> None:
    if run_worker and app_ref is None:
        raise ConfigError("a worker needs APP: the functions it runs")
    app = load_app(app_ref) if app_ref else None
    stop = asyncio.Event()
    _install_stop_signals(stop)
    with exclusive_queue_file(settings) if owns_queue else contextlib.nullcontext(False) as owns:
        async with open_backends(settings) as (queue, state, store):
            if owns:
                released = await queue.release_all()
                if released:
                    log.info("re-queued %d tasks left running by an earlier process", released)
            registry = app.registry() if app is not None else Registry({})
            jobs = Jobs(registry, queue, state, store, settings)
            try:
                async with asyncio.TaskGroup() as group:
                    if run_worker:
                        assert app_ref is not None
                        pool = ExecutorPool(app_ref, settings.workers)
                        await pool.start()
                        await state.put_manifest(dumps(registry.manifest()))
                        worker = Worker(registry, queue, state, store, pool, settings)
                        group.create_task(_run_worker(worker, pool, stop), name="worker")
                        group.create_task(_until(stop, _cleanup_loop(jobs)), name="cleanup")
                    if app is None:
                        await _load_manifest(jobs)
                        group.create_task(_until(stop, _manifest_loop(jobs)), name="manifest")
                    if sock is not None:
                        url = f"http://{settings.host}:{settings.port}"
                        started = None if on_listening is None else lambda: on_listening(url)
                        server = _Server(_uvicorn_config(jobs, settings), started)
                        group.create_task(_run_gateway(server, sock, jobs, stop), name="gateway")
            finally:
                await jobs.aclose()


async def _load_manifest(jobs: Jobs) -> None:
    """Learn the functions from the manifest the workers publish (no APP import needed)."""
    manifest = await jobs.state.get_manifest()
    if manifest is not None:
        jobs.registry = Registry.from_manifest(json.loads(manifest))


async def _manifest_loop(jobs: Jobs) -> None:
    if len(jobs.registry) == 0:
        log.warning("no worker has published its functions yet; every function is 404 for now")
    while True:
        await asyncio.sleep(MANIFEST_REFRESH_S)
        await _load_manifest(jobs)


async def _run_worker(worker: Worker, pool: ExecutorPool, stop: asyncio.Event) -> None:
    try:
        await worker.run(stop)
    finally:
        await pool.aclose()


async def _run_gateway(
    server: uvicorn.Server, sock: socket.socket, jobs: Jobs, stop: asyncio.Event
) -> None:
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
    # Waiting clients get their job's status (202 + Location) now; the job itself is durable.
    jobs.stop_waiting()
    server.should_exit = True
    stopper.cancel()
    await serving
    stop.set()


def _uvicorn_config(jobs: Jobs, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        create_gateway(jobs),
        host=settings.host,
        port=settings.port,
        lifespan="off",
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=int(settings.drain_s),
        server_header=False,
    )


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run a top-level coroutine on uvloop when it is installed."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)
