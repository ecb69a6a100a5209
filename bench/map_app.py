"""The map functions `bench/map.py` runs through `batchgate serve bench/map_app.py`.

Chunk sizes come from `MAP_BENCH_*` environment variables (read once, when the app is
imported by the server and by each executor), so the benchmark can vary them per run.
They are not `BATCHGATE_*`: batchgate refuses environment variables it does not know.
"""

from __future__ import annotations

import os
import time
from typing import Any

from batchgate import App

SQUARE_CHUNK = int(os.environ.get("MAP_BENCH_SQUARE_CHUNK", "10000"))
SPIN_CHUNK = int(os.environ.get("MAP_BENCH_SPIN_CHUNK", "100"))
TEXT_CHUNK = int(os.environ.get("MAP_BENCH_TEXT_CHUNK", "10000"))

app = App("map-bench")


# (a) a trivial item, batched or one call per item


@app.map(chunk_size=SQUARE_CHUNK, batched=True)
def square_batched(xs: list[int]) -> list[int]:
    """x -> x*x, a whole chunk per call."""
    return [x * x for x in xs]


@app.map(chunk_size=SQUARE_CHUNK)
def square_each(x: int) -> int:
    """x -> x*x, one call per item."""
    return x * x


# (b) about 1 ms of CPU per item


def spin(iterations: int) -> int:
    """A busy loop of `iterations` additions; returns iterations*(iterations-1)/2."""
    total = 0
    for i in range(iterations):
        total += i
    return total


@app.map(name="spin", chunk_size=SPIN_CHUNK)
def spin_stamped(iterations: int) -> list[float]:
    """spin(iterations), stamped: [its result, pid, monotonic start, monotonic end].

    CLOCK_MONOTONIC is one clock for every process of the host, so the benchmark can lay
    the items of both executors on its own timeline and find the idle gaps.
    """
    start = time.monotonic()
    total = spin(iterations)
    return [total, os.getpid(), start, time.monotonic()]


@app.function
def spin_cost(payload: dict[str, int]) -> dict[str, float]:
    """Seconds per `spin(iterations)` over `count` calls, timed inside an executor."""
    iterations, count = payload["iterations"], payload["count"]
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        spin(iterations)
    return {
        "wall_s_per_item": (time.perf_counter() - wall) / count,
        "cpu_s_per_item": (time.process_time() - cpu) / count,
    }


# (c) ~100-character text records, for the large upload


@app.map(chunk_size=TEXT_CHUNK, batched=True)
def text_len(items: list[dict[str, Any]]) -> list[int]:
    """The length of each item's `text`."""
    return [len(item["text"]) for item in items]
