"""Real `batchgate serve` processes on free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.ports import free_port

TEST_APP = str(Path(__file__).parents[1] / "apps" / "testapp.py")
STARTUP_S = 60.0


class ServeProcess:
    """One `batchgate serve` subprocess and an HTTP client pointed at it."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        app: str = TEST_APP,
    ) -> None:
        self.data_dir = data_dir
        self.app = app
        self.extra = extra
        self.env = {**os.environ, "BATCHGATE_RETRY_BACKOFF": "0.05", **(env or {})}
        self.port = port or free_port()  # a restart takes its predecessor's port
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"serve-{self.port}.log"

    def start(self) -> ServeProcess:
        cmd = [
            sys.executable, "-m", "batchgate", "serve", self.app,
            "--port", str(self.port), "--data-dir", str(self.data_dir), "--workers", "2",
            *self.extra,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling a port that is not open yet: nothing to await
        raise RuntimeError(f"serve did not start:\n{self.log.read_text()}")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[object]:
    started: list[ServeProcess] = []

    def make(*extra: str, data_dir: Path | None = None, **kw: object) -> ServeProcess:
        proc = ServeProcess(data_dir or tmp_path / "data", *extra, **kw)  # type: ignore[arg-type]
        started.append(proc.start())
        return proc

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def server(serve_factory: object) -> ServeProcess:
    return serve_factory()  # type: ignore[operator,no-any-return]
