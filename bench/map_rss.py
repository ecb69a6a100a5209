"""Measurement (c) of bench/map.py: the gateway's RSS while a large NDJSON batch streams in."""

from __future__ import annotations

import argparse
import contextlib
import random
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from map_report import Headline, Measurement
from map_server import MB, NDJSON, WAIT_S, WrongAnswer, cpu_s, proc_status_kb, serve

TARGET_MB = 200.0


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every `interval_s`, tagging each sample with a phase."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.phase = "idle"
        self.samples: list[tuple[float, str, int]] = []  # (monotonic s, phase, kB)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                rss = proc_status_kb(self.pid, "VmRSS")["VmRSS"]
                self.samples.append((time.monotonic(), self.phase, rss))
            self._done.wait(self.interval_s)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def series_mb(self, every_s: float = 1.0) -> list[tuple[float, str, float]]:
        """About one sample per `every_s`: (seconds since the first, phase, MB), for the JSON."""
        out: list[tuple[float, str, float]] = []
        for at, phase, kb in self.samples:
            at -= self.samples[0][0]
            if not out or at - out[-1][0] >= every_s or phase != out[-1][1]:
                out.append((round(at, 2), phase, round(kb * 1024 / MB, 1)))
        return out

    def peak_mb(self, *phases: str) -> float:
        return max((kb for _, p, kb in self.samples if p in phases), default=0) * 1024 / MB


TEXT_CHARS = string.ascii_letters + string.digits + " .,-"


def text_lines(size_bytes: int, sent: dict[str, int]) -> Iterator[bytes]:
    """`{"id": n, "text": "<90-110 chars>"}` lines until `size_bytes`, ~1 MB a piece;
    counts items, bytes and the sum of text lengths into `sent`."""
    rng = random.Random(7)
    texts = ["".join(rng.choices(TEXT_CHARS, k=rng.randint(90, 110))) for _ in range(97)]
    n = 0
    while sent["bytes"] < size_bytes:
        piece = "".join([f'{{"id": {i}, "text": "{texts[i % 97]}"}}\n' for i in range(n, n + 8192)])
        data = piece.encode()
        sent["items"] = n = n + 8192
        sent["bytes"] += len(data)
        yield data
    full, rest = divmod(n, 97)
    sent["text_len_sum"] = full * sum(map(len, texts)) + sum(map(len, texts[:rest]))


def measure_c(m: Measurement, tmp: Path, args: argparse.Namespace) -> None:
    size, chunk = int(args.size_mb * MB), args.text_chunk
    sent = {"items": 0, "bytes": 0}
    with serve(tmp, {"MAP_BENCH_TEXT_CHUNK": str(chunk)}) as (client, pid):
        sampler = RssSampler(pid)
        # Reset VmHWM (peak RSS) so it shows this batch, not start-up.
        hwm_reset = _write_quietly(Path(f"/proc/{pid}/clear_refs"), "5")
        sampler.start()
        try:
            time.sleep(1.0)  # a second of idle samples: the starting point
            sampler.phase = "upload"
            headers = {"Content-Type": NDJSON, "Prefer": "respond-async"}
            cpu_before = cpu_s([pid]), time.process_time()
            started = time.perf_counter()
            response = client.post(
                "/v1/functions/text_len", content=text_lines(size, sent), headers=headers
            )
            upload_s = time.perf_counter() - started
            upload_cpu = cpu_s([pid]) - cpu_before[0], time.process_time() - cpu_before[1]
            if response.status_code != 202:
                raise RuntimeError(f"upload: HTTP {response.status_code}: {response.text[:300]}")
            location = response.headers["location"]
            phases = {"upload_s": upload_s, "upload_gateway_cpu_s": upload_cpu[0]}
            phases["upload_client_cpu_s"] = upload_cpu[1]
            sampler.phase = "run"
            status = _finish_c(client, location, args.c_after, phases, sampler, sent)
            if status["progress"]["total"] != sent["items"]:
                raise WrongAnswer(f"the gateway counted {status['progress']} of {sent['items']}")
            sampler.phase = "after"
            time.sleep(1.0)
            vm = proc_status_kb(pid, "VmHWM", "VmRSS")
        finally:
            sampler.stop()
    upload_peak = sampler.peak_mb("upload")
    m.figures.update(
        size_mb_asked=args.size_mb, bytes=sent["bytes"], items=sent["items"], chunk_size=chunk,
        after_upload=args.c_after, phases=phases, job=status, idle_rss_mb=sampler.peak_mb("idle"),
        peak_rss_upload_mb=upload_peak, peak_rss_run_mb=sampler.peak_mb("run"),
        peak_rss_result_mb=sampler.peak_mb("result"), rss_end_mb=vm["VmRSS"] * 1024 / MB,
        vmhwm_mb=vm["VmHWM"] * 1024 / MB, vmhwm_reset_before_upload=hwm_reset,
        samples=len(sampler.samples), upload_mb_per_s=sent["bytes"] / MB / upload_s,
        rss_series_mb=sampler.series_mb(),
    )  # fmt: skip
    label = f"{sent['bytes'] / MB:,.0f} MB, {sent['items']:,} items, chunk_size={chunk}"
    m.headlines += [
        Headline(f"{label}: peak gateway RSS during upload", upload_peak, "MB", "<= 200 MB",
                 upload_peak <= TARGET_MB),
        Headline("gateway RSS idle before upload", sampler.peak_mb("idle"), "MB"),
        Headline("upload (sent -> 202)", upload_s, "s"),
        Headline("upload rate", sent["bytes"] / MB / upload_s, "MB/s"),
        Headline("gateway CPU during upload / upload time", upload_cpu[0] / upload_s * 100, "%"),
        Headline("this client's CPU during upload / upload time", upload_cpu[1] / upload_s * 100,
                 "%"),
        Headline(f"VmHWM at end ({'reset before upload' if hwm_reset else 'since start'})",
                 vm["VmHWM"] * 1024 / MB, "MB"),
    ]  # fmt: skip
    if args.c_after == "wait":
        m.headlines += [
            Headline("peak gateway RSS while executors ran it", sampler.peak_mb("run"), "MB"),
            Headline("peak gateway RSS streaming the result", sampler.peak_mb("result"), "MB"),
            Headline("run (202 -> succeeded)", phases["run_s"], "s"),
        ]
    m.figures["notes"] = [
        f"RSS of the `batchgate serve` process (not its executors) from /proc/PID/status "
        f"every 50 ms ({len(sampler.samples)} samples); after the upload the job was "
        + (
            "run to completion and its result streamed and verified (count, sum of text lengths)"
            if args.c_after == "wait"
            else "cancelled (DELETE)"
        ),
    ]


def _finish_c(
    client: httpx.Client,
    location: str,
    after: str,
    phases: dict[str, float],
    sampler: RssSampler,
    sent: dict[str, int],
) -> dict[str, Any]:
    """Cancel the job, or wait for it, then stream its result and verify it."""
    if after == "cancel":
        response = client.delete(location)
        if response.status_code != 200:
            raise RuntimeError(f"cancel: HTTP {response.status_code}: {response.text[:300]}")
        status: dict[str, Any] = response.json()
        return status
    started = time.perf_counter()
    while True:
        status = client.get(location, params={"wait": "60"}).json()
        if status["status"] in ("succeeded", "failed", "cancelled"):
            break
        if time.perf_counter() - started > WAIT_S:
            raise RuntimeError(f"the job is still {status['status']} after {WAIT_S:g} s")
    phases["run_s"] = time.perf_counter() - started
    if status["status"] != "succeeded":
        raise RuntimeError(f"the job ended {status['status']}: {status.get('error')}")
    sampler.phase = "result"
    started, count, total = time.perf_counter(), 0, 0
    with client.stream("GET", f"{location}/result", headers={"Accept": NDJSON}) as response:
        for line in response.iter_lines():
            if line:
                count, total = count + 1, total + int(line)
    phases["result_s"] = time.perf_counter() - started
    if (count, total) != (sent["items"], sent["text_len_sum"]):
        raise WrongAnswer(f"{count} results summing to {total}; sent {sent}")
    return status


def _write_quietly(path: Path, text: str) -> bool:
    try:
        path.write_text(text)
        return True
    except OSError:
        return False
