"""Helpers of bench/map.py: a `batchgate serve` of bench/map_app.py, its processes, and
timed, checked map requests."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
from roundtrip import _log_tail, free_port, running

BENCH_DIR = Path(__file__).resolve().parent
MAP_APP = BENCH_DIR / "map_app.py"
STARTUP_S = 60.0
WAIT_S = 300.0  # Prefer: wait=… on a timed request; a 202 after it is a failed measurement
MB = 10**6
NDJSON = "application/x-ndjson"
EXECUTORS = 2


class WrongAnswer(Exception):
    """A job's result does not match its input: its timing must not be reported."""


@contextlib.contextmanager
def serve(tmp: Path, env: dict[str, str]) -> Iterator[tuple[httpx.Client, int]]:
    """A fresh `batchgate serve` (with `env` added) on a free loopback port.

    Yields a client for it and the server's pid: the gateway and worker loop are that
    process; its executors are its children.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "batchgate", "serve", str(MAP_APP), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(EXECUTORS), "--data-dir", str(tmp / "data")]
    cmd += ["--max-body", "2GB", "--max-items", "20000000"]
    log = tmp / "batchgate.log"
    saved = {k: os.environ.get(k) for k in env}
    with contextlib.ExitStack() as stack:
        os.environ.update(env)  # inherited by the server and its executors alone
        try:
            proc = stack.enter_context(running(cmd, log))
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"batchgate serve exited early:\n{_log_tail(log)}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/v1/functions", timeout=10).is_success:
                    break  # the executors are up: serve starts them before the gateway
            if time.monotonic() > deadline:
                raise RuntimeError(f"batchgate serve not ready:\n{_log_tail(log)}")
            time.sleep(0.05)  # the port is not open yet: nothing to await
        timeout = httpx.Timeout(60.0, read=WAIT_S + 60.0)
        client = stack.enter_context(httpx.Client(base_url=url, timeout=timeout))
        yield client, proc.pid


def proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, …]; utime is [11]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(proc_stat(int(stat.parent.name))[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def cpu_s(pids: Iterable[int]) -> float:
    """User + system CPU-seconds the processes have used so far."""
    ticks = sum(int(f[11]) + int(f[12]) for f in map(proc_stat, pids))
    return ticks / os.sysconf("SC_CLK_TCK")


def ndjson_ints(values: Iterable[int], block: int = 10_000) -> Iterator[bytes]:
    """Integers as NDJSON, `block` lines per piece: the body is never whole in memory."""
    it = iter(values)
    while piece := list(itertools.islice(it, block)):
        yield ("\n".join(map(str, piece)) + "\n").encode()


def post_wait(client: httpx.Client, function: str, body: Iterator[bytes]) -> dict[str, Any]:
    """POST a batch, wait for it in the same response; seconds, result and job phases."""
    headers = {"Content-Type": NDJSON, "Accept": NDJSON, "Prefer": f"wait={WAIT_S:g}"}
    epoch, started = time.time(), time.perf_counter()
    response = client.post(f"/v1/functions/{function}", content=body, headers=headers)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{function}: HTTP {response.status_code}: {response.text[:300]}")
    status = client.get(f"/v1/jobs/{response.headers['job-id']}").json()
    at = {k: _epoch(status[k]) for k in ("created_at", "started_at", "finished_at")}
    phases = {
        "upload_s": at["created_at"] - epoch,  # a map job is created once its body is stored
        "queued_s": at["started_at"] - at["created_at"],
        "run_s": at["finished_at"] - at["started_at"],
        "answer_s": epoch + seconds - at["finished_at"],
    }
    return {"seconds": seconds, "content": response.content, "phases": phases}


def _epoch(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def result_ints(content: bytes, count: int) -> list[int]:
    """The NDJSON results as integers; WrongAnswer unless there are `count` of them."""
    values = [int(line) for line in content.split(b"\n") if line]
    if len(values) != count:
        raise WrongAnswer(f"{len(values)} results for {count} items")
    return values


def check(values: list[int], expect: Callable[[int], int], total: int) -> dict[str, Any]:
    """Compare the sum and ~30 spot checks (ends, middle, random) with the expected values."""
    count = len(values)
    spots = {0, 1, count // 3, count // 2, count - 1} | set(random.sample(range(count), 25))
    wrong = [i for i in sorted(spots) if values[i] != expect(i)]
    if wrong or sum(values) != total:
        raise WrongAnswer(f"sum {sum(values)} (expected {total}); wrong at items {wrong[:5]}")
    return {"count": count, "sum": total, "spot_checks": len(spots)}


def proc_status_kb(pid: int, *fields: str) -> dict[str, int]:
    """The named `Vm…` fields of /proc/PID/status, in kB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0])
    return found
