"""Measurement (b) of bench/map.py: parallel efficiency of ~1 ms items on 2 executors.

Each item is `spin_stamped` (bench/map_app.py): a calibrated busy loop that also returns
its process and CLOCK_MONOTONIC start and end, so the items of both executors can be laid
on one timeline: time spent running items, idle gaps between chunks, lead, tail.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import map_app
from map_report import Headline, Measurement
from map_server import EXECUTORS, WrongAnswer, check, children, cpu_s, ndjson_ints, post_wait, serve

TARGET_EFFICIENCY = 0.85


def time_spin(iterations: int, count: int) -> float:
    """Seconds per spin(iterations) call, over `count` calls in this process."""
    started = time.perf_counter()
    for _ in range(count):
        map_app.spin(iterations)
    return (time.perf_counter() - started) / count


def calibrate(target_s: float = 0.001) -> int:
    """Iterations that make spin() last `target_s` in this process (median of 5 tries)."""
    iterations = 20_000
    for _ in range(3):
        per_call = statistics.median(time_spin(iterations, 100) for _ in range(5))
        iterations = max(1, round(iterations * target_s / per_call))
    return iterations


def _spin_chunk(chunk: list[int]) -> list[list[float]]:
    return [map_app.spin_stamped(n) for n in chunk]


def pool_baseline(values: list[int], chunk_size: int) -> tuple[float, list[list[float]], float]:
    """A bare multiprocessing pool of 2 on the same chunks (warm): seconds, stamped rows and
    the monotonic start."""
    chunks = [values[i : i + chunk_size] for i in range(0, len(values), chunk_size)]
    with multiprocessing.get_context("fork").Pool(EXECUTORS) as pool:
        pool.map(_spin_chunk, chunks[:EXECUTORS], chunksize=1)
        started, clock = time.perf_counter(), time.monotonic()
        results = pool.map(_spin_chunk, chunks, chunksize=1)
        seconds = time.perf_counter() - started
        pool.close()
        pool.join()
    return seconds, [row for chunk in results for row in chunk], clock


def executor_cost(client: httpx.Client, iterations: int, count: int) -> dict[str, float]:
    """Wall and CPU seconds per spin(iterations), timed in one executor over `count` calls."""
    payload = {"iterations": iterations, "count": count}
    response = client.post("/v1/functions/spin_cost", json=payload, headers={"Prefer": "wait=120"})
    if response.status_code != 200:
        raise RuntimeError(f"spin_cost: HTTP {response.status_code}: {response.text[:300]}")
    cost: dict[str, float] = response.json()
    return cost


def stamped_rows(content: bytes, count: int) -> list[list[float]]:
    rows = [json.loads(line) for line in content.split(b"\n") if line]
    if len(rows) != count:
        raise WrongAnswer(f"{len(rows)} results for {count} items")
    return rows


def _gaps(gaps: list[float]) -> dict[str, float]:
    if not gaps:
        return {"count": 0, "total_s": 0.0, "median_ms": 0.0, "p90_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(gaps)
    return {
        "count": len(gaps),
        "total_s": sum(gaps),
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def timeline(rows: list[list[float]], chunk_size: int, t0: float, wall_s: float) -> dict[str, Any]:
    """Per process: items, time running them, idle gaps between chunks; then the lead
    (t0 to the first item), the tail (the last item to the answer) and the imbalance."""
    by_pid: dict[int, list[tuple[float, float, int]]] = {}
    for index, (_, pid, start, end) in enumerate(rows):
        by_pid.setdefault(int(pid), []).append((start - t0, end - t0, index))
    procs: dict[str, Any] = {}
    all_between: list[float] = []
    for pid, items in sorted(by_pid.items()):
        items.sort()
        between: list[float] = []
        within: list[float] = []
        for (_, end, i), (start, _, j) in itertools.pairwise(items):
            (between if i // chunk_size != j // chunk_size else within).append(start - end)
        all_between += between
        procs[str(pid)] = {
            "items": len(items),
            "running_s": sum(end - start for start, end, _ in items),
            "first_start_s": items[0][0],
            "last_end_s": items[-1][1],
            "between_chunks": _gaps(between),
            "within_chunks_s": sum(within),
        }
    ends = [p["last_end_s"] for p in procs.values()]
    return {
        "processes": procs,
        "running_s": sum(p["running_s"] for p in procs.values()),
        "between_chunks": _gaps(all_between),
        "lead_s": min(p["first_start_s"] for p in procs.values()),
        "tail_s": wall_s - max(ends),
        "imbalance_s": max(ends) - min(ends),
    }


def measure_b(m: Measurement, tmp: Path, args: argparse.Namespace) -> None:
    items, chunk, cost_items = args.b_items, args.spin_chunk, args.cost_items
    iterations = calibrate()
    values = [iterations + i % 8 for i in range(items)]  # varied, so order is checked
    expected = [n * (n - 1) // 2 for n in values]
    total = sum(expected)
    in_process = [time_spin(iterations, cost_items)]
    baseline_s, baseline_rows, baseline_t0 = pool_baseline(values, chunk)
    check([int(r[0]) for r in baseline_rows], expected.__getitem__, total)
    with serve(tmp, {"MAP_BENCH_SPIN_CHUNK": str(chunk)}) as (client, pid):
        stamped_rows(post_wait(client, "spin", ndjson_ints(values[:200]))["content"], 200)
        costs = [executor_cost(client, iterations, cost_items)]
        executors = children(pid)
        cpu_before, t0 = (cpu_s(executors), cpu_s([pid])), time.monotonic()
        run = post_wait(client, "spin", ndjson_ints(values))
        executors_cpu_s = cpu_s(executors) - cpu_before[0]
        gateway_cpu_s = cpu_s([pid]) - cpu_before[1]
        rows = stamped_rows(run.pop("content"), items)
        verified = check([int(r[0]) for r in rows], expected.__getitem__, total)
        costs.append(executor_cost(client, iterations, cost_items))
    in_process.append(time_spin(iterations, cost_items))

    wall_s, chunks = run["seconds"], -(-items // chunk)
    per_item_s = statistics.mean(c["wall_s_per_item"] for c in costs)
    ideal_s = items * per_item_s / EXECUTORS
    efficiency = ideal_s / wall_s
    line = timeline(rows, chunk, t0, wall_s)
    base_line = timeline(baseline_rows, chunk, baseline_t0, baseline_s)
    m.figures.update(
        items=items, chunk_size=chunk, chunks=chunks, iterations=iterations,
        cost_items=cost_items, per_item_cost_in_executor=costs, per_item_s_in_process=in_process,
        per_item_s=per_item_s, ideal_s=ideal_s, wall_s=wall_s, phases=run["phases"],
        efficiency=efficiency, executors_cpu_s=executors_cpu_s, gateway_cpu_s=gateway_cpu_s,
        gateway_cpu_ms_per_chunk=gateway_cpu_s / chunks * 1000, timeline=line,
        pool_baseline_s=baseline_s, pool_baseline_efficiency=ideal_s / baseline_s,
        pool_baseline_timeline=base_line, verified=verified,
    )  # fmt: skip
    gaps, base_gaps = line["between_chunks"], base_line["between_chunks"]
    m.headlines += [
        Headline(f"{items:,} items x {per_item_s * 1000:.3f} ms, chunk_size={chunk}: parallel "
                 "efficiency", efficiency * 100, "%", ">= 85 %", efficiency >= TARGET_EFFICIENCY),
        Headline("wall time", wall_s, "s"),
        Headline("ideal time (items x per-item cost / 2)", ideal_s, "s"),
        Headline("executors running items (sum of item times / (2 x wall))",
                 line["running_s"] / (EXECUTORS * wall_s) * 100, "%"),
        Headline("mean item time in the run (alone: the per-item cost)",
                 line["running_s"] / items * 1000, "ms"),
        Headline("executor idle between chunks: median gap", gaps["median_ms"], "ms"),
        Headline("executor idle between chunks: p90 gap", gaps["p90_ms"], "ms"),
        Headline("executor idle between chunks: total, both executors", gaps["total_s"], "s"),
        Headline("lead: request sent -> first item starts", line["lead_s"], "s"),
        Headline("tail: last item ends -> answer read", line["tail_s"], "s"),
        Headline("imbalance: first executor done -> second done", line["imbalance_s"], "s"),
        Headline("executor CPU / (2 x wall)", executors_cpu_s / (EXECUTORS * wall_s) * 100, "%"),
        Headline("gateway process CPU per chunk", gateway_cpu_s / chunks * 1000, "ms"),
        Headline("baseline: bare multiprocessing pool of 2, same chunks: efficiency",
                 ideal_s / baseline_s * 100, "%"),
        Headline("baseline: idle between chunks, median gap", base_gaps["median_ms"], "ms"),
        Headline("baseline: mean item time", base_line["running_s"] / items * 1000, "ms"),
        Headline("batchgate wall / baseline wall", wall_s / baseline_s, "x"),
    ]  # fmt: skip
    executor_ms = ", ".join(f"{c['wall_s_per_item'] * 1e3:.3f}" for c in costs)
    in_process_ms = ", ".join(f"{s * 1e3:.3f}" for s in in_process)
    m.figures["notes"] = [
        f"per-item cost: spin({iterations:,}) timed over {cost_items:,} sequential calls in "
        f"an executor just before and just after the run ({executor_ms} ms; in this process "
        f"before and after: {in_process_ms} ms); the ideal uses the executor mean",
        "a mean item time in the run above the per-item cost is CPU contention (the other "
        "executor, the gateway, other work on the machine), not batchgate overhead; idle "
        "gaps, lead, tail and imbalance are where batchgate loses time",
    ]
