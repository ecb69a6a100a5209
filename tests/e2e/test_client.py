"""Both Python clients against a real `batchgate serve` over real HTTP: results, batches,
events, problems, retries across a real 503 and across a killed and restarted server; and
`batchgate submit` as a user runs it."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchgate import errors
from batchgate.client import AsyncClient, AsyncJobHandle, Client, RetryPolicy
from tests.e2e.conftest import ServeProcess
from tests.e2e.test_serve import wait_for_file

pytestmark = pytest.mark.slow

Record = dict[str, Any]
OnAnswer = Callable[[Record], object]


def _note(request: httpx.Request, seen: list[Record]) -> Record:
    entry = {
        "method": request.method,
        "path": request.url.path,
        "key": request.headers.get("idempotency-key"),
    }
    seen.append(entry)
    return entry


def _answered(entry: Record, response: httpx.Response, on_answer: OnAnswer) -> None:
    entry["status"] = response.status_code
    entry["retry_after"] = response.headers.get("retry-after")
    on_answer(entry)


class Recording(httpx.BaseTransport):
    """The real transport, noting each request's Idempotency-Key and what came of it."""

    def __init__(self, seen: list[Record], on_answer: OnAnswer) -> None:
        self.inner = httpx.HTTPTransport()
        self.seen = seen
        self.on_answer = on_answer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        entry = _note(request, self.seen)
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError as exc:
            entry["error"] = type(exc).__name__
            raise
        _answered(entry, response, self.on_answer)
        return response


class AsyncRecording(httpx.AsyncBaseTransport):
    """Recording, for the asyncio client."""

    def __init__(self, seen: list[Record], on_answer: OnAnswer) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen = seen
        self.on_answer = on_answer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        entry = _note(request, self.seen)
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError as exc:
            entry["error"] = type(exc).__name__
            raise
        _answered(entry, response, self.on_answer)
        return response


class Bridge:
    """An AsyncClient (or handle) called from blocking test code: each call runs on an event
    loop in another thread; async iterators come back as lists. One scenario so serves both
    clients."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def wait(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):
                result = self.wait(_awaited(result))
            elif isinstance(result, AsyncIterator):
                result = iter(self.wait(_collected(result)))
            if isinstance(result, AsyncJobHandle):
                return Bridge(result, self._loop)
            return result

        return call


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


async def _collected(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


@pytest.fixture(params=["Client", "AsyncClient"])
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Opens clients of the kind under test (an AsyncClient behind a Bridge)."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    opened: list[Any] = []

    def open_client(
        url: str,
        seen: list[Record] | None = None,
        on_answer: OnAnswer = lambda entry: None,
        **options: Any,
    ) -> Any:
        if request.param == "Client":
            transport = Recording(seen, on_answer) if seen is not None else None
            client: Any = Client(url, http=httpx.Client(transport=transport), **options)
        else:
            atransport = AsyncRecording(seen, on_answer) if seen is not None else None
            http = httpx.AsyncClient(transport=atransport)
            client = Bridge(AsyncClient(url, http=http, **options), loop)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close() if isinstance(client, Client) else client.aclose()
    loop.call_soon_threadsafe(loop.stop)
    runner.join()
    loop.close()


def test_results_batches_events_and_problems(
    server: ServeProcess, connect: Callable[..., Any], tmp_path: Path
) -> None:
    client = connect(server.url)
    assert {"square", "add", "echo"} <= {f["name"] for f in client.functions()}
    assert client.run("add", {"a": 2, "b": 3}) == 5
    assert client.map("square", range(25)) == [n * n for n in range(25)]
    batch = tmp_path / "in.ndjson"
    batch.write_text("".join(f"{n}\n" for n in range(12)))
    assert client.map("square", batch) == [n * n for n in range(12)]

    handle = client.submit("square", items=range(30))
    events = list(handle.events())
    assert events[-1].event == "succeeded" and events[-1].terminal
    assert events[-1].progress.done == 30
    assert handle.result() == [n * n for n in range(30)]
    assert b"".join(handle.stream_result(format="ndjson")).split() == [
        str(n * n).encode() for n in range(30)
    ]
    assert handle.status()["status"] == "succeeded"
    assert handle.cancel()["status"] == "succeeded"  # a finished job stays finished

    # A 202 after the POST's wait, then the result followed through the Location.
    assert client.run("sleep", {"seconds": 1.5}, wait=0.2) == 1.5

    with pytest.raises(errors.JobFailed) as failed:
        client.run("always_fails", 7)
    assert "cannot handle 7" in failed.value.message
    assert failed.value.extra["job_id"]
    with pytest.raises(errors.NotFound):
        client.run("no_such_function", 1)

    slow = client.submit("sleep", {"seconds": 3})
    assert slow.cancel()["status"] == "cancelled"
    with pytest.raises(errors.JobCancelled):
        slow.result()


def test_a_503_is_retried_with_the_same_key(
    serve_factory: Callable[..., ServeProcess], connect: Callable[..., Any], tmp_path: Path
) -> None:
    server = serve_factory("--workers", "1", env={"BATCHGATE_MAX_QUEUE_DEPTH": "1"})
    gate = {"gate": str(tmp_path / "gate"), "calls": str(tmp_path / "calls")}
    with server.client() as http:  # fill the queue past its cap with jobs held at the gate
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            held = http.post("/v1/functions/gated", json=gate, headers={"Prefer": "respond-async"})
            if held.status_code == 503:
                break
            # The gateway re-reads the queue depth at most every 0.5 s: nothing to await.
            time.sleep(0.1)
        assert held.status_code == 503, held.text
    seen: list[Record] = []
    refused = threading.Event()
    client = connect(server.url, seen, lambda entry: entry.get("status") == 503 and refused.set())
    outcome: list[Any] = []
    caller = threading.Thread(target=lambda: outcome.append(client.run("echo", 42)))
    caller.start()
    assert refused.wait(60), seen
    (tmp_path / "gate").touch()  # the queue drains; the client's retry gets in
    caller.join(90)
    assert outcome == [42]
    posts = [entry for entry in seen if entry["method"] == "POST"]
    assert posts[0]["status"] == 503 and posts[0]["retry_after"] == "5"
    assert posts[-1]["status"] == 200
    assert len({entry["key"] for entry in posts}) == 1 and posts[0]["key"]


def test_a_restarted_server_answers_the_retry_with_the_first_job(
    connect: Callable[..., Any], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = ServeProcess(data, "--workers", "1").start()
    second: ServeProcess | None = None
    try:
        seen: list[Record] = []
        policy = RetryPolicy(attempts=100, backoff_s=0.1, backoff_max_s=0.5, max_elapsed_s=100)
        client = connect(first.url, seen, retry=policy)
        calls = tmp_path / "calls"
        payload = {"gate": str(tmp_path / "gate"), "calls": str(calls)}
        outcome: list[Any] = []
        caller = threading.Thread(target=lambda: outcome.append(client.run("gated", payload)))
        caller.start()
        wait_for_file(calls)  # the job is stored and running: the POST is held open
        first.kill9()
        (tmp_path / "gate").touch()
        second = ServeProcess(data, "--workers", "1", port=first.port).start()
        caller.join(100)
        # The same job ran again after the restart (2 calls), and answered the retry.
        assert outcome == [2]
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.stop()
    posts = [entry for entry in seen if entry["method"] == "POST"]
    assert posts[0].get("error") and posts[-1]["status"] == 200
    assert len({entry["key"] for entry in posts}) == 1
    with sqlite3.connect(data / "state.db") as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (1,)


# -- batchgate submit -------------------------------------------------------------------------


def submit(
    *args: str, env: dict[str, str], stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "batchgate", "submit", *args],
        input=stdin, capture_output=True, env=env, timeout=100, check=False,
    )  # fmt: skip


def test_cli_submit_against_a_real_server(
    serve_factory: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    # The client's variables in a server's environment are accepted (and not used).
    client_vars = {"BATCHGATE_URL": "http://127.0.0.1:9", "BATCHGATE_API_KEY": "not-this"}
    server = serve_factory("--api-key", "secret", env=client_vars)
    env = {**os.environ, "BATCHGATE_URL": server.url, "BATCHGATE_API_KEY": "secret"}

    source = tmp_path / "numbers.ndjson"
    source.write_text("".join(f"{n}\n" for n in range(50)))
    out = tmp_path / "squares.ndjson"
    done = submit("square", str(source), "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == [n * n for n in range(50)]

    done = submit("add", env=env, stdin=b'{"a": 1, "b": 2}')
    assert (done.returncode, done.stdout) == (0, b"3\n")

    missing = tmp_path / "never.json"
    done = submit("always_fails", "-o", str(missing), env=env, stdin=b"[1]")
    assert done.returncode == 1
    assert b"cannot handle [1]" in done.stderr
    assert not missing.exists()

    done = submit("add", env={**env, "BATCHGATE_API_KEY": "wrong"}, stdin=b"{}")
    assert done.returncode == 1
    assert b"API key" in done.stderr
