"""Two gateways and three workers as separate processes over Redis/SQS + S3, under faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.conftest import TEST_APP
from tests.fixtures.ports import free_port
from tests.fixtures.redis_server import RedisServer

pytestmark = pytest.mark.slow

JOBS = 1000
MAP_EVERY = 5  # every fifth job is a map job
CONCURRENCY = 100
STARTUP_S = 60.0


class Cluster:
    """`batchgate worker` and `batchgate gateway` processes sharing one set of backends."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.workers: list[subprocess.Popen[bytes]] = []
        self.gateways: list[tuple[subprocess.Popen[bytes], str]] = []

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            cmd = [sys.executable, "-m", "batchgate", *args]
            return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)

    def start(self, workers: int = 3, gateways: int = 2) -> None:
        for n in range(workers):
            self.workers.append(self._spawn(f"worker{n}", "worker", TEST_APP, "--concurrency", "1"))
        for n in range(gateways):
            port = free_port()
            proc = self._spawn(f"gateway{n}", "gateway", "--port", str(port))
            self.gateways.append((proc, f"http://127.0.0.1:{port}"))
        for _, url in self.gateways:
            self._wait_for_functions(url)

    def _wait_for_functions(self, url: str) -> None:
        """A gateway is ready once it serves the functions the workers published."""
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            try:
                names = {f["name"] for f in httpx.get(url + "/v1/functions").json()["functions"]}
                if {"echo", "square"} <= names:
                    return
            except (httpx.TransportError, KeyError, ValueError):
                pass
            time.sleep(0.1)  # the gateway re-reads the manifest on its own schedule
        logs = "\n".join(p.read_text() for p in self.logs.glob("*.log"))
        raise RuntimeError(f"gateway {url} never learned the functions:\n{logs}")

    def stop(self) -> None:
        procs = [p for p, _ in self.gateways] + self.workers
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def submit_all(cluster: Cluster, faults: dict[int, Any]) -> dict[int, Any]:
    """Run JOBS jobs over both gateways; call `faults[n]` once n jobs have completed."""
    results: dict[int, Any] = {}
    gate = asyncio.Semaphore(CONCURRENCY)
    done = 0

    async def one(client: httpx.AsyncClient, n: int) -> None:
        nonlocal done
        url = cluster.gateways[n % len(cluster.gateways)][1]
        is_map = n % MAP_EVERY == 0
        path = "/v1/functions/square" if is_map else "/v1/functions/echo"
        body = [n, n + 1, n + 2] if is_map else {"n": n}
        headers = {"Idempotency-Key": f"job-{n}", "Prefer": "wait=120"}
        async with gate:
            for _ in range(60):
                try:
                    r = await client.post(url + path, json=body, headers=headers)
                except httpx.TransportError:
                    await asyncio.sleep(0.5)  # a backend restarting: retry, same key
                    continue
                if r.status_code == 503:
                    await asyncio.sleep(0.5)
                    continue
                if r.status_code == 202:
                    r = await client.get(url + r.headers["location"] + "/result?wait=120")
                assert r.status_code == 200, (n, r.status_code, r.text)
                results[n] = r.json()
                break
        done += 1
        if done in faults:
            await asyncio.to_thread(faults.pop(done))

    async with httpx.AsyncClient(timeout=180) as client:
        await asyncio.gather(*(one(client, n) for n in range(JOBS)))
    return results


def expected(n: int) -> Any:
    return [x * x for x in (n, n + 1, n + 2)] if n % MAP_EVERY == 0 else {"n": n}


@pytest.fixture(params=["redis-queue", "sqs-queue"])
def cluster(
    request: pytest.FixtureRequest,
    redis_aof_server: RedisServer,
    s3_url: str,
    tmp_path: Path,
) -> Iterator[tuple[Cluster, RedisServer]]:
    redis_url = redis_aof_server.url + "?prefix=scale:"
    queue = redis_url if request.param == "redis-queue" else request.getfixturevalue("sqs_url")
    env = {
        **os.environ,
        "BATCHGATE_QUEUE": queue,
        "BATCHGATE_STATE": redis_url,
        "BATCHGATE_STORE": s3_url,
        "BATCHGATE_LEASE": "3",
        "BATCHGATE_RETRY_BACKOFF": "0.05",
        "BATCHGATE_REREAD": "1",
        "BATCHGATE_DRAIN": "5",
    }
    cluster = Cluster(env, tmp_path)
    try:
        cluster.start()
        yield cluster, redis_aof_server
    finally:
        cluster.stop()


@pytest.mark.timeout(600)
def test_thousand_jobs_over_two_gateways_survive_faults(
    cluster: tuple[Cluster, RedisServer],
) -> None:
    procs, server = cluster

    def kill_a_worker() -> None:
        procs.workers[0].send_signal(signal.SIGKILL)
        procs.workers[0].wait(timeout=30)

    def restart_redis() -> None:
        server.restart()

    def kill_pubsub_connections() -> None:
        with redis.Redis(port=server.port) as admin:
            admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

    faults = {200: kill_a_worker, 400: restart_redis, 600: kill_pubsub_connections}
    results = asyncio.run(submit_all(procs, faults))
    assert not faults, f"faults never triggered: {sorted(faults)}"
    assert len(results) == JOBS
    wrong = {n: r for n, r in results.items() if r != expected(n)}
    assert not wrong, dict(list(wrong.items())[:5])
    # Each job committed once: its record says succeeded, with one outcome.
    with redis.Redis(port=server.port) as admin:
        assert admin.ping()
    statuses = set()
    with httpx.Client(base_url=procs.gateways[1][1], timeout=30) as http:
        for n in range(0, JOBS, 97):
            r = http.post(
                "/v1/functions/square" if n % MAP_EVERY == 0 else "/v1/functions/echo",
                json=[n, n + 1, n + 2] if n % MAP_EVERY == 0 else {"n": n},
                headers={"Idempotency-Key": f"job-{n}", "Prefer": "wait=30"},
            )
            statuses.add(json.dumps(http.get(r.headers["location"]).json()["status"]))
    assert statuses == {'"succeeded"'}
