"""Benchmark a no-op job's HTTP round trip through batchgate against baselines run alongside.

A benchmark, not a test: it records p50/p99 latency and throughput and never fails on
speed. It exits 1 only when a target misbehaves (failed start, non-2xx answers, socket
errors). See bench/README.md for the modes.

    .venv/bin/python bench/roundtrip.py --quick --modes echo,embedded,raw-redis
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from roundtrip_report import ModeResult, WrkRun, print_tables, ratios, write_results

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
TEST_APP = ROOT / "tests" / "apps" / "testapp.py"
MODES = ("echo", "embedded", "raw-redis", "redis")
CONCURRENCIES = (1, 32)
WARMUP_CONNECTIONS = 32
STARTUP_S = 60.0
STOP_S = 30.0
WRK_TIMEOUT_S = 10  # per request; a slower answer counts as a wrk timeout error
BODY = b"1"

# Each wrk thread has its own Lua state: `non_2xx` is per thread, summed in done().
WRK_LUA = r"""
wrk.method = "POST"
wrk.body = "1"
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread) table.insert(threads, thread) end

non_2xx = 0
function response(status, headers, body)
  if status < 200 or status > 299 then non_2xx = non_2xx + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("non_2xx") end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"non_2xx":%d,"p50_us":%.1f,' ..
    '"p99_us":%.1f,"mean_us":%.1f,"max_us":%.1f,"errors":{"connect":%d,' ..
    '"read":%d,"write":%d,"timeout":%d,"status_gt_399":%d}}\n',
    summary.requests, summary.duration, bad, latency:percentile(50),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write,
    e.timeout, e.status))
end
"""


class TargetSkipped(Exception):
    """A mode cannot run here yet (e.g. a backend not written); not an error."""


# -- processes -------------------------------------------------------------------------


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cmd` (its own process group, output to `log`) and always stop it after."""
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, cwd=ROOT, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL the whole group (executor children included) if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_S)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created: ours alone
    proc.wait()


def _log_tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(url: str, procs: list[subprocess.Popen[bytes]], log: Path) -> None:
    """Poll with the benchmark request itself until it answers 2xx."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"target exited early:\n{_log_tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            headers = {"content-type": "application/json"}
            if httpx.post(url, content=BODY, headers=headers, timeout=10).is_success:
                return
        time.sleep(0.05)  # the port is not open yet: nothing to await
    raise RuntimeError(f"target not ready after {STARTUP_S:.0f} s:\n{_log_tail(log)}")


def _wait_redis(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{_log_tail(log)}")
            time.sleep(0.05)  # the port is not open yet: nothing to await
    finally:
        client.close()


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A private, non-persistent redis-server on a free loopback port; yields its URL."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no", "--daemonize", "no", "--dir", str(tmp)]
    log = tmp / "redis-server.log"
    with running(cmd, log) as proc:
        _wait_redis(port, proc, log)
        yield f"redis://127.0.0.1:{port}/0"


# -- targets: each yields a ready URL and stops what it started ------------------------


@contextlib.contextmanager
def echo_target(tmp: Path) -> Iterator[str]:
    """bench/echo_app.py on uvicorn with batchgate's settings."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "echo_app:app", "--app-dir", str(BENCH_DIR)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--http", "httptools"]
    cmd += ["--loop", "uvloop", "--lifespan", "off", "--no-access-log", "--no-server-header"]
    log = tmp / "echo.log"
    with running(cmd, log) as proc:
        url = f"http://127.0.0.1:{port}/echo"
        wait_ready(url, [proc], log)
        yield url


@contextlib.contextmanager
def _batchgate(tmp: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "batchgate", "serve", str(TEST_APP), "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--workers", "2", "--data-dir", str(tmp / "data"), *extra]
    log = tmp / "batchgate.log"
    with running(cmd, log) as proc:
        url = f"http://127.0.0.1:{port}/v1/functions/noop"
        wait_ready(url, [proc], log)
        yield url


@contextlib.contextmanager
def embedded_target(tmp: Path) -> Iterator[str]:
    """`batchgate serve` on its embedded SQLite queue and state."""
    with _batchgate(tmp) as url:
        yield url


@contextlib.contextmanager
def redis_target(tmp: Path) -> Iterator[str]:
    """`batchgate serve` with Redis queue and state (skipped until those backends exist)."""
    for module in ("batchgate.queue.redis", "batchgate.state.redis"):
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise TargetSkipped(f"{module} cannot be imported yet ({exc!r})") from exc
    with (
        redis_server(tmp) as redis_url,
        _batchgate(tmp, "--queue", redis_url, "--state", redis_url) as url,
    ):
        yield url


@contextlib.contextmanager
def raw_redis_target(tmp: Path) -> Iterator[str]:
    """bench/raw_redis.py: one gateway process and one worker process."""
    script = str(BENCH_DIR / "raw_redis.py")
    with redis_server(tmp) as redis_url:
        port = free_port()
        gateway = [sys.executable, script, "gateway", "--redis-url", redis_url]
        log = tmp / "raw-redis.log"
        # Worker first, so it stops last: the gateway's shutdown waits for in-flight jobs.
        with (
            running([sys.executable, script, "worker", "--redis-url", redis_url], log) as wk,
            running([*gateway, "--port", str(port)], log) as gw,
        ):
            url = f"http://127.0.0.1:{port}/submit"
            wait_ready(url, [gw, wk], log)
            yield url


TARGETS: dict[str, Callable[[Path], contextlib.AbstractContextManager[str]]] = {
    "echo": echo_target,
    "embedded": embedded_target,
    "raw-redis": raw_redis_target,
    "redis": redis_target,
}


# -- wrk -------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """Path to wrk; installs the Debian package when root, else says how and exits."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("wrk is not installed: run `sudo apt-get install -y wrk` (Debian/Ubuntu)")
    print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
    install = ["apt-get", "install", "-y", "wrk"]
    if subprocess.run(install, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update"], timeout=600, check=True)
        subprocess.run(install, timeout=600, check=True)
    return shutil.which("wrk") or sys.exit("apt-get installed wrk but it is not on PATH")


def run_wrk(wrk: str, lua: Path, url: str, connections: int, seconds: int, threads: int) -> WrkRun:
    """One wrk run; its done() hook prints the figures as a BENCH_JSON line."""
    cmd = [wrk, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s"]
    cmd += [f"--timeout={WRK_TIMEOUT_S}s", "--latency", "-s", str(lua), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    raw = json.loads(lines[-1].removeprefix("BENCH_JSON "))
    duration_s = raw["duration_us"] / 1e6
    return WrkRun(
        connections=connections,
        requests=raw["requests"],
        duration_s=round(duration_s, 3),
        req_per_s=round(raw["requests"] / duration_s, 1),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        mean_ms=round(raw["mean_us"] / 1000, 4),
        max_ms=raw["max_us"] / 1000,
        non_2xx=raw["non_2xx"],
        socket_errors=raw["errors"],
    )


def load_avg() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages, to two decimals."""
    one, five, fifteen = (round(x, 2) for x in os.getloadavg())
    return one, five, fifteen


def _machine_busy_s() -> float:
    """Busy CPU-seconds of the whole machine since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_busy_s() -> float:
    """CPU-seconds of this process and every child it has waited for (targets, wrk)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


@contextlib.contextmanager
def other_cpu(result: ModeResult) -> Iterator[None]:
    """Record the share of all CPUs that processes other than ours used during the block."""
    start, machine, own = time.monotonic(), _machine_busy_s(), _own_busy_s()
    yield
    wall_s = time.monotonic() - start
    other_s = (_machine_busy_s() - machine) - (_own_busy_s() - own)
    result.wall_s = round(wall_s, 2)
    result.other_cpu_pct = round(max(0.0, other_s) / (wall_s * (os.cpu_count() or 1)) * 100, 1)


def measure(mode: str, tmp: Path, args: argparse.Namespace, wrk: str, lua: Path) -> ModeResult:
    """Start the mode's target, warm it up, measure each concurrency, stop it."""
    result = ModeResult(mode, "ok", load_avg_before=load_avg())
    try:
        with other_cpu(result), TARGETS[mode](tmp) as url:
            run_wrk(wrk, lua, url, WARMUP_CONNECTIONS, args.warmup, args.threads)
            for connections in CONCURRENCIES:
                run = run_wrk(wrk, lua, url, connections, args.seconds, args.threads)
                result.runs[connections] = run
    except TargetSkipped as exc:
        result.status, result.note = "skipped", str(exc)
    except Exception as exc:
        # The Redis placeholder skips on any failure until its backends land.
        result.status = "skipped" if mode == "redis" else "failed"
        result.note = f"{type(exc).__name__}: {exc}"
    return result


# -- facts ------------------------------------------------------------------------------


def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def machine_facts() -> dict[str, Any]:
    """What the figures depend on: CPUs, Python, versions, commit, current load."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln]
    commit = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"  # uncommitted work in the tree was measured too
    versions = {p: importlib.metadata.version(p) for p in ("uvicorn", "starlette", "redis")}
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": models[0] if models else platform.processor() or "unknown",
        "python": platform.python_version(),
        "batchgate_commit": commit,
        "packages": versions,
        "load_avg_start": load_avg(),
    }


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """--modes, --seconds/--quick, --warmup, --threads, --results-dir."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: %(default)s")
    parser.add_argument("--seconds", type=int, default=10, help="per measurement [10]")
    parser.add_argument("--quick", action="store_true", help="3 s measurements, 1 s warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds [2]")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads [1]")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - set(MODES)
    if unknown or not args.modes:
        parser.error(f"unknown modes {sorted(unknown)}; expected some of {','.join(MODES)}")
    if args.quick:
        args.seconds, args.warmup = 3, 1
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected modes one after another; 1 if a target failed or answered badly."""
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every started process is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    wrk = ensure_wrk()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    facts = machine_facts()
    results = []
    with tempfile.TemporaryDirectory(prefix="batchgate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        lua = tmp / "roundtrip.lua"
        lua.write_text(WRK_LUA)
        for mode in args.modes:
            print(f"{mode}: measuring…", file=sys.stderr)
            (tmp / mode).mkdir()
            results.append(measure(mode, tmp / mode, args, wrk, lua))
            print(f"{mode}: {results[-1].status} in {results[-1].wall_s} s", file=sys.stderr)
    report: dict[str, Any] = {
        "started_at": started,
        "machine": facts,
        "load_avg_end": load_avg(),
        "settings": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "warmup_connections": WARMUP_CONNECTIONS,
            "threads": args.threads,
            "wrk_timeout_s": WRK_TIMEOUT_S,
        },
        "batchgate_env": {k: v for k, v in os.environ.items() if k.startswith("BATCHGATE_")},
        "modes": [dataclasses.asdict(r) for r in results],
        "ratios": ratios(results),
    }
    print_tables(results, report["ratios"])
    print(f"wrote {write_results(report, results, args.results_dir)}", file=sys.stderr)
    bad = [r for r in results if r.status == "failed" or not all(x.clean for x in r.runs.values())]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
