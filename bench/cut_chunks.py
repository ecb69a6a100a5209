"""Time `batchgate.batches.cut_chunks` on 1M-item bodies fed in 64 KiB reads.

A benchmark, not a test: it prints items/s per case, with the ratio to a baseline run
alongside (one `json.loads` of the whole batch: the stdlib's parsing floor), and writes
them to bench/results/cut_chunks.json; it never fails on speed.

    .venv/bin/python bench/cut_chunks.py [--items 1000000] [--chunk-size 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from batchgate.batches import BatchFormat, cut_chunks

READ_BYTES = 64 * 1024  # what uvicorn hands the app per receive()
RESULTS = Path(__file__).resolve().parent / "results" / "cut_chunks.json"


def small_object(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"item {i}", "ok": True}


CASES: dict[str, tuple[BatchFormat, Callable[[int], Any]]] = {
    "ndjson-ints": (BatchFormat.NDJSON, int),
    "array-ints": (BatchFormat.JSON, int),
    "ndjson-objects": (BatchFormat.NDJSON, small_object),
    "array-objects": (BatchFormat.JSON, small_object),
}


def make_body(fmt: BatchFormat, make: Callable[[int], Any], items: int) -> bytes:
    values = [make(i) for i in range(items)]
    if fmt is BatchFormat.NDJSON:
        return ("\n".join(map(json.dumps, values)) + "\n").encode()
    return json.dumps(values).encode()


async def pieces(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), READ_BYTES):
        yield body[start : start + READ_BYTES]


async def cut_all(body: bytes, fmt: BatchFormat, chunk_size: int) -> tuple[int, int]:
    cutter = cut_chunks(pieces(body), fmt, chunk_size, max_items=10**9)
    largest = 0
    async for blob in cutter:
        largest = max(largest, len(blob))
    return cutter.items, largest


def baseline(body: bytes, fmt: BatchFormat) -> float:
    """Seconds for one json.loads of the whole batch, as a JSON array."""
    if fmt is BatchFormat.NDJSON:
        body = b"[" + body.rstrip(b"\n").replace(b"\n", b",") + b"]"
    started = time.perf_counter()
    json.loads(body)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "items": args.items,
        "chunk_size": args.chunk_size,
        "read_bytes": READ_BYTES,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cases": {},
    }
    for name, (fmt, make) in CASES.items():
        body = make_body(fmt, make, args.items)
        best = floor = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            count, largest = asyncio.run(cut_all(body, fmt, args.chunk_size))
            best = min(best, time.perf_counter() - started)
            floor = min(floor, baseline(body, fmt))
        assert count == args.items, (name, count)
        rate = args.items / best
        results["cases"][name] = {
            "body_bytes": len(body),
            "seconds": round(best, 3),
            "items_per_s": round(rate),
            "mb_per_s": round(len(body) / best / 1e6, 1),
            "largest_chunk_bytes": largest,
            "baseline_json_loads_s": round(floor, 3),
            "ratio_to_baseline": round(best / floor, 2),
        }
        print(
            f"{name:15s} {len(body) / 1e6:6.1f} MB  {best:6.3f} s  "
            f"{rate / 1e6:5.2f} M items/s  {len(body) / best / 1e6:6.1f} MB/s  "
            f"json.loads {floor:6.3f} s  x{best / floor:.2f}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
