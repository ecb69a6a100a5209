"""Attempts and their two budgets, with real worker processes killed with SIGKILL.

An attempt counts only when the function starts on an executor: a task a worker held
but never ran spends nothing. Crashes of the infrastructure (a worker or executor killed,
a lease lost) have a budget of their own (BATCHGATE_CRASH_RETRIES), apart from the
function's `retries`, and a job's error names the real cause.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchgate.app import load_app
from batchgate.jobs import Jobs
from batchgate.models import Job, JobStatus, dumps
from batchgate.queue import open_queue
from batchgate.settings import Settings
from batchgate.state import open_state
from batchgate.store import open_store
from tests.e2e.conftest import TEST_APP

pytestmark = pytest.mark.slow

LEASE_S = 2.0


class Deployment:
    """Embedded backends in a folder, `batchgate worker` processes, and a Jobs facade."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.settings = Settings.load({"data_dir": root, "lease_s": LEASE_S}, env={})
        self.env = {
            **os.environ,
            "BATCHGATE_DATA_DIR": str(root),
            "BATCHGATE_LEASE": str(LEASE_S),
            "BATCHGATE_RETRY_BACKOFF": "0.05",
        }
        self.workers: list[subprocess.Popen[bytes]] = []
        self.registry = load_app(TEST_APP).registry()

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = (self.root / "worker.log").open("ab")
        cmd = [sys.executable, "-m", "batchgate", "worker", TEST_APP, "--concurrency", "1"]
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)
        self.workers.append(proc)
        return proc

    def kill9(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)

    async def _jobs(self) -> Jobs:
        s = self.settings
        return Jobs(self.registry, await open_queue(s.queue_url), await open_state(s.state_url),
                    await open_store(s.store_url), s)  # fmt: skip

    def submit(self, function: str, payload: Any) -> str:
        async def run() -> str:
            jobs = await self._jobs()
            try:
                job = await jobs.submit(self.registry.get(function), dumps(payload), wait_s=0)
                return job.id
            finally:
                await jobs.queue.aclose()
                await jobs.state.aclose()
                await jobs.store.aclose()

        return asyncio.run(run())

    def job(self, job_id: str) -> Job:
        async def run() -> Job:
            state = await open_state(self.settings.state_url)
            try:
                job = await state.get_job(job_id)
                assert job is not None
                return job
            finally:
                await state.aclose()

        return asyncio.run(run())

    def wait_terminal(self, job_id: str, timeout_s: float = 90) -> Job:
        """Poll the job (another process finishes it; no notice reaches this one)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job.status.terminal:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} is still {self.job(job_id).status.value}")


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path / "data")
    try:
        yield d
    finally:
        d.stop_all()


def executions(marker: Path) -> list[int]:
    """The pids that started the function, one per execution."""
    return [int(line) for line in marker.read_text().splitlines()] if marker.exists() else []


def wait_for_executions(marker: Path, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(executions(marker)) < count:
        assert time.monotonic() < deadline, f"{marker.name}: {executions(marker)}"
        time.sleep(0.02)  # written by an executor process: nothing to await here


def test_a_task_held_but_never_run_spends_nothing(deployment: Deployment, tmp_path: Path) -> None:
    # One executor, two long jobs: each worker holds both tasks, runs the first and keeps
    # the second waiting. Three SIGKILLs while the first runs.
    first, second = tmp_path / "first", tmp_path / "second"
    a = deployment.submit("sleep_marked", {"marker": str(first), "seconds": 4})
    b = deployment.submit("sleep_marked", {"marker": str(second), "seconds": 4})
    for kill in range(1, 4):
        worker = deployment.start_worker()
        wait_for_executions(first, kill)
        deployment.kill9(worker)
    deployment.start_worker()

    done_a, done_b = deployment.wait_terminal(a), deployment.wait_terminal(b)

    assert done_a.status is JobStatus.SUCCEEDED, done_a.error
    assert done_b.status is JobStatus.SUCCEEDED, done_b.error
    # attempts count executions: the killed ones of the first job, and only those.
    assert done_a.attempts == len(executions(first)) == 4
    assert done_b.attempts == len(executions(second)) == 1


def test_a_killed_executor_does_not_spend_the_functions_retries(
    deployment: Deployment, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    deployment.start_worker()
    # `sleep_marked` with retries=2 would do; `sleep` has retries=0: no retry at all.
    job_id = deployment.submit("sleep_marked", {"marker": str(marker), "seconds": 30})
    wait_for_executions(marker, 1)
    os.kill(executions(marker)[0], signal.SIGKILL)
    wait_for_executions(marker, 2)
    os.kill(executions(marker)[1], signal.SIGKILL)
    wait_for_executions(marker, 3)
    os.kill(executions(marker)[2], signal.SIGKILL)
    # Three crashes: more than the function's retries (2), within the crash budget (3).
    wait_for_executions(marker, 4)
    status = deployment.job(job_id)
    assert status.status is JobStatus.RUNNING
    assert status.attempts == 4
    assert status.error is not None and status.error.type == "ExecutorLost"


def test_crashes_past_their_budget_fail_the_job_naming_the_cause(deployment: Deployment) -> None:
    deployment.start_worker()
    job_id = deployment.submit("crashes", None)

    done = deployment.wait_terminal(job_id)

    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.type == "ExecutorLost"
    # The default budget: 3 crash retries, so 4 attempts, all of them crashes.
    assert done.attempts == 4
    assert "4 of 4 attempts ended without an outcome" in done.error.message
    assert "executor process died" in done.error.message


def test_a_function_that_raises_fails_with_its_own_error(deployment: Deployment) -> None:
    deployment.start_worker()
    job_id = deployment.submit("always_fails", "x")

    done = deployment.wait_terminal(job_id)

    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert (done.error.type, done.error.message) == ("ValueError", "cannot handle 'x'")
    assert done.attempts == 3  # retries=2
