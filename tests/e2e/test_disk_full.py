"""A real full disk (a small tmpfs) under a real `batchgate serve`.

The gateway answers a request it cannot store with a 503 problem that names no server
path and carries Retry-After, leaves no job behind, and says it is not ready until space
comes back. A worker that cannot store a result counts a crash of the infrastructure,
not a failure of the function, and the job's error names the disk.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServeProcess

pytestmark = pytest.mark.slow


class SmallDisk:
    """A tmpfs of a few MiB mounted on a folder (root only), and a file to fill it."""

    def __init__(self, folder: Path, size_mib: int) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)], check=True
        )
        self.filler = folder / "filler"

    def fill(self) -> None:
        """Write until the disk refuses another byte."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 16, 512, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.folder)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    disk = SmallDisk(tmp_path / "small", size_mib=8)
    try:
        yield disk
    finally:
        disk.unmount()


def assert_unavailable(r: httpx.Response, disk: SmallDisk) -> dict[str, object]:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) >= 1
    body: dict[str, object] = r.json()
    assert str(body["type"]).endswith("backend-unavailable")
    assert str(disk.folder) not in r.text and "/tmp" not in r.text  # no server paths
    return body


def stored_jobs(data_dir: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir / "state.db") as db:
        return list(db.execute("SELECT id, status FROM jobs"))


def test_a_full_disk_refuses_cleanly_and_recovers(
    serve_factory: object, small_disk: SmallDisk
) -> None:
    data_dir = small_disk.folder / "data"
    server: ServeProcess = serve_factory(data_dir=data_dir)  # type: ignore[operator]
    big_body = {"blob": "x" * 100_000}  # over 64 KiB: the payload goes to the store
    with server.client() as http:
        assert http.post("/v1/functions/echo", json=1).status_code == 200
        before = stored_jobs(data_dir)
        small_disk.fill()

        ready = http.get("/readyz")
        body = assert_unavailable(ready, small_disk)
        assert "disk is full" in str(body["detail"])

        r = http.post("/v1/functions/echo", json=big_body, headers={"Prefer": "wait=5"})
        body = assert_unavailable(r, small_disk)
        assert "No space left on device" in str(body["detail"])
        assert "job-id" not in r.headers
        assert stored_jobs(data_dir) == before  # nothing accepted, nothing left behind

        small_disk.free()
        assert http.get("/readyz").status_code == 200
        r = http.post("/v1/functions/echo", json=big_body)
        assert r.status_code == 200, r.text
        assert r.json() == big_body
    assert all(status == "succeeded" for _, status in stored_jobs(data_dir))


def wait_for_status(http: httpx.Client, location: str, done: object, timeout_s: float = 60) -> dict:  # type: ignore[type-arg]
    """Poll the status document (another process changes it) until `done(status)`."""
    deadline = time.monotonic() + timeout_s
    status = http.get(location).json()
    while not done(status):  # type: ignore[operator]
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
        status = http.get(location).json()
    return status  # type: ignore[no-any-return]


def test_a_result_the_disk_cannot_take_is_a_crash_not_a_failure_of_the_function(
    serve_factory: object, small_disk: SmallDisk
) -> None:
    store = small_disk.folder / "store"
    server: ServeProcess = serve_factory(  # type: ignore[operator]
        "--store", f"file://{store}", env={"BATCHGATE_RETRY_BACKOFF": "1"}
    )
    with server.client() as http:
        small_disk.fill()
        # `big` has retries=2 (3 attempts); its ~100 KiB result goes to the full store.
        doomed = http.post("/v1/functions/big", json={"kib": 100},
                           headers={"Prefer": "respond-async"}).headers["location"]  # fmt: skip
        failed = wait_for_status(http, doomed, lambda s: s["status"] == "failed", 120)

        # Four crashes (the crash budget), more attempts than the function's own three.
        assert failed["attempts"] == 4
        assert failed["error"]["type"] == "StorageError"
        message = failed["error"]["message"]
        assert message.startswith("4 of 4 attempts ended without an outcome from the function")
        assert "No space left on device" in message
        assert str(store) not in message

        saved = http.post("/v1/functions/big", json={"kib": 100},
                          headers={"Prefer": "respond-async"}).headers["location"]  # fmt: skip
        status = wait_for_status(http, saved, lambda s: "error" in s)
        assert status["error"]["type"] == "StorageError"
        assert status["status"] in ("queued", "running")  # a crash: retried, not failed
        small_disk.free()
        r = http.get(saved + "/result", params={"wait": 60})
        assert r.status_code == 200, r.text
        assert len(r.json()) == 100
