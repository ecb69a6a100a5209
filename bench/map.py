"""Benchmark map jobs through a real `batchgate serve bench/map_app.py --workers 2`.

A benchmark, not a test: it records figures next to their targets and never fails on
speed. It exits 1 only when a measurement could not be taken or a job answered wrongly.
See bench/README.md for what (a), (b) and (c) measure.

    .venv/bin/python bench/map.py [--only a,b,c] [--quick] [--size-mb 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from map_parallel import measure_b
from map_report import Headline, Measurement, print_summary, write_results
from map_rss import measure_c
from map_server import (
    MB,
    check,
    children,
    ndjson_ints,
    post_wait,
    proc_stat,
    result_ints,
    serve,
)
from roundtrip import load_avg, machine_facts, other_cpu

BENCH_DIR = Path(__file__).resolve().parent
TARGET_A_S = 5.0


class OutOfBudget(Exception):
    """The run passed --budget-s: the measurement in progress is abandoned, and the rest."""


# -- (a) 1,000,000 trivial items in one request ----------------------------------------------


def square_floor(items: int, chunk_size: int) -> float:
    """Seconds for this process alone to do the work the executors share: parse each
    chunk, square it, encode its results with one json.dumps (making the body included)."""
    started = time.perf_counter()
    for piece in ndjson_ints(range(items), chunk_size):
        xs = json.loads(b"[" + piece.rstrip(b"\n").replace(b"\n", b",") + b"]")
        json.dumps([x * x for x in xs])
    return time.perf_counter() - started


def measure_a(m: Measurement, tmp: Path, args: argparse.Namespace) -> None:
    items, chunk = args.a_items, args.chunk_size
    total = (items - 1) * items * (2 * items - 1) // 6
    floor_s = square_floor(items, chunk)
    m.figures.update(items=items, chunk_size=chunk, repeat=args.repeat, floor_1proc_s=floor_s)
    with serve(tmp, {"MAP_BENCH_SQUARE_CHUNK": str(chunk)}) as (client, _):
        for function, batched in (("square_batched", True), ("square_each", False)):
            warm = post_wait(client, function, ndjson_ints(range(20_000)))
            result_ints(warm["content"], 20_000)
            runs = []
            for _ in range(args.repeat):
                run = post_wait(client, function, ndjson_ints(range(items)))
                verified = check(result_ints(run.pop("content"), items), lambda i: i * i, total)
                runs.append({**run, "items_per_s": items / run["seconds"], **verified})
            median_s = statistics.median(r["seconds"] for r in runs)
            m.figures[function] = {"batched": batched, "median_s": median_s, "runs": runs}
            label = f"{items:,} items, batched={batched}, chunk_size={chunk}"
            met = median_s <= TARGET_A_S if batched else None
            target = f"<= {TARGET_A_S:g} s" if batched else ""
            m.headlines.append(Headline(f"{label}: end-to-end", median_s, "s", target, met))
            m.headlines.append(Headline(f"{label}: throughput", items / median_s, "items/s"))
    m.headlines.append(
        Headline("one process, no batchgate (floor): parse+square+dump", floor_s, "s")
    )
    m.figures["notes"] = [
        f"median of {args.repeat} runs after a 20,000-item warm-up; every run verified "
        "(count, sum of squares, ~30 spot checks); phases of each run in the JSON",
    ]


# -- main ------------------------------------------------------------------------------------


MEASUREMENTS: dict[str, tuple[str, Callable[[Measurement, Path, argparse.Namespace], None]]] = {
    "a": ("1M trivial items in one request", measure_a),
    "b": ("parallel efficiency of ~1 ms items", measure_b),
    "c": ("gateway RSS during a large upload", measure_c),
}


def run_one(name: str, tmp: Path, args: argparse.Namespace) -> Measurement:
    """One measurement, with the load it ran under; a failure is recorded, not raised."""
    title, fn = MEASUREMENTS[name]
    m = Measurement(name, title, load_avg_before=load_avg())
    try:
        with other_cpu(m):
            fn(m, tmp, args)
    except Exception as exc:
        m.status, m.note = "failed", f"{type(exc).__name__}: {exc}"
    m.load_avg_after = load_avg()
    return m


def kill_leftover_groups() -> None:
    """SIGKILL the process group of any server we started that is still alive: a safety
    net for a budget alarm that cut a clean stop short. Only groups led by our children."""
    for pid in children(os.getpid()):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(proc_stat(pid)[2]) == pid:
                os.killpg(pid, signal.SIGKILL)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="a,b,c", help="comma-separated: %(default)s")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--size-mb", type=float, help="(c) batch size in MB [1000; quick 50]")
    parser.add_argument("--chunk-size", type=int, default=10_000, help="(a) chunk_size [10000]")
    parser.add_argument("--spin-chunk", type=int, default=100, help="(b) chunk_size [100]")
    parser.add_argument("--text-chunk", type=int, default=10_000, help="(c) chunk_size [10000]")
    parser.add_argument("--repeat", type=int, help="(a) timed runs per function [3; quick 1]")
    parser.add_argument(
        "--c-after", choices=("wait", "cancel"), default="wait",
        help="(c) after the upload: run the job and check its result, or DELETE it [wait]",
    )  # fmt: skip
    parser.add_argument("--budget-s", type=float, help="stop everything after [1500; quick 300]")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    if not args.only or set(args.only) - set(MEASUREMENTS):
        parser.error(f"--only takes some of {','.join(MEASUREMENTS)}")
    quick = args.quick
    args.a_items = 100_000 if quick else 1_000_000
    args.b_items, args.cost_items = (2_000, 500) if quick else (20_000, 2_000)
    args.size_mb = args.size_mb or (50.0 if quick else 1000.0)
    args.repeat = args.repeat or (1 if quick else 3)
    args.budget_s = args.budget_s or (300.0 if quick else 1500.0)
    return args


def _out_of_budget(*_: object) -> None:
    raise OutOfBudget("the run passed --budget-s; what it had started was stopped")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen measurements one after another; 1 if one failed or answered wrongly."""
    args = parse_args(argv)
    # SIGTERM and the budget alarm unwind like Ctrl-C: every started process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    signal.signal(signal.SIGALRM, _out_of_budget)
    signal.alarm(int(args.budget_s))
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    facts = machine_facts()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="batchgate-map-bench-") as tmp_name:
            for name in args.only:
                print(f"({name}) {MEASUREMENTS[name][0]}…", file=sys.stderr)
                (Path(tmp_name) / name).mkdir()
                results.append(run_one(name, Path(tmp_name) / name, args))
                print(f"({name}) {results[-1].status} in {results[-1].wall_s} s", file=sys.stderr)
                if results[-1].note.startswith(OutOfBudget.__name__):
                    break
    except OutOfBudget as exc:  # between measurements: report what was measured
        print(exc, file=sys.stderr)
    finally:
        signal.alarm(0)
        kill_leftover_groups()
    report: dict[str, Any] = {
        "started_at": started,
        "command": shlex.join(
            ["python", "bench/map.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": facts,
        "memory_mb": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MB,
        "load_avg_end": load_avg(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("results_dir", "only")},
        "batchgate_env": {k: v for k, v in os.environ.items() if k.startswith("BATCHGATE_")},
    }
    print_summary(results)
    print(f"wrote {write_results(report, results, args.results_dir)}", file=sys.stderr)
    return 1 if any(m.status != "ok" for m in results) else 0


if __name__ == "__main__":
    sys.exit(main())
