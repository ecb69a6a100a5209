"""Functions the end-to-end tests drive through a real `batchgate serve`."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from batchgate import App

app = App("testapp")


@app.function
def echo(payload: Any) -> Any:
    return payload


@app.function(name="add")
async def add_async(payload: dict[str, int]) -> int:
    await asyncio.sleep(0)
    return payload["a"] + payload["b"]


@app.function(retries=2)
def always_fails(payload: Any) -> Any:
    raise ValueError(f"cannot handle {payload!r}")


@app.function(retries=3)
def flaky(payload: dict[str, Any]) -> dict[str, Any]:
    """Fails until it has been called `fail_times` times (counted in a file)."""
    counter = Path(payload["counter"])
    calls = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(calls))
    if calls <= payload["fail_times"]:
        raise ConnectionError(f"transient failure {calls}")
    return {"calls": calls}


@app.function(timeout=60, retries=2)
def pid_then_sleep(payload: dict[str, Any]) -> dict[str, Any]:
    """Writes its pid to a file, then sleeps; the first call can be killed from outside."""
    marker = Path(payload["pid_file"])
    first = not marker.exists()
    marker.write_text(str(os.getpid()))
    if first:
        time.sleep(payload.get("sleep", 30))
    return {"pid": os.getpid(), "first": first}


@app.function(timeout=1, retries=0)
def hangs(payload: Any) -> Any:
    time.sleep(3600)


@app.function(timeout=60, retries=0)
def sleep(payload: dict[str, float]) -> float:
    time.sleep(payload["seconds"])
    return payload["seconds"]


@app.function
def noop(payload: Any) -> None:
    return None


@app.map(chunk_size=10)
def square(x: int) -> int:
    return x * x


@app.map(chunk_size=7, batched=True)
def square_batched(xs: list[int]) -> list[int]:
    return [x * x for x in xs]


@app.map(chunk_size=5, batched=True)
def wrong_length(xs: list[int]) -> list[int]:
    return xs[1:]


@app.map(chunk_size=4, errors="collect", retries=0)
def reciprocal(x: float) -> float:
    return 1 / x


@app.map(chunk_size=4, retries=1)
def reciprocal_or_fail(x: float) -> float:
    return 1 / x


@app.map(chunk_size=1, timeout=60, retries=0)
def slow_item(payload: dict[str, Any]) -> int:
    """Sleeps `seconds`, touching `marker` first (so a test knows the batch started)."""
    Path(payload["marker"]).touch()
    time.sleep(payload["seconds"])
    return int(payload["n"])


@app.map(chunk_size=4)
def echo_items(item: Any) -> Any:
    return item


@app.function(retries=0)
def fails_once(payload: dict[str, str]) -> str:
    """Fails on its first call ever (remembered in a file), then succeeds."""
    marker = Path(payload["marker"])
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError("first call fails")
    return "worked"


@app.function
def big(payload: dict[str, int]) -> list[str]:
    """A result of about `kib` KiB: too large to keep in the job record."""
    return ["x" * 1000] * payload["kib"]


@app.function(timeout=60, retries=2)
def gated(payload: dict[str, str]) -> int:
    """Notes each call in the file `calls`, then waits until the file `gate` exists; returns
    how many calls there have been (a test opens the gate when it is ready)."""
    calls = Path(payload["calls"])
    with calls.open("a") as file:
        file.write(f"{os.getpid()}\n")
    gate = Path(payload["gate"])
    while not gate.exists():
        time.sleep(0.02)  # the gate is a file another process creates: polled, not awaited
    return len(calls.read_text().splitlines())


@app.function(timeout=60, retries=2)
def sleep_marked(payload: dict[str, Any]) -> int:
    """Appends its pid to `marker` (one line per execution), then sleeps `seconds`."""
    with Path(payload["marker"]).open("a") as marker:
        marker.write(f"{os.getpid()}\n")
    time.sleep(payload["seconds"])
    return len(Path(payload["marker"]).read_text().splitlines())


@app.function(retries=0)
def crashes(payload: Any) -> Any:
    """Kills its own executor process: a crash, never an exception."""
    os.kill(os.getpid(), signal.SIGKILL)
