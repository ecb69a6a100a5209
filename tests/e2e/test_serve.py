"""`batchgate serve` over real HTTP: outcomes, retries, kills, restarts, cancellation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServeProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_body_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path_factory.mktemp("small") / "data", "--max-body", "1KB").start()
    yield proc
    proc.stop()


PROBLEM = "application/problem+json"


def wait_for_file(path: Path, timeout_s: float = 30) -> str:
    """The file's text once a function has written it (it signals 'I am running')."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.02)  # another process writes it; there is no event to await here
    raise AssertionError(f"{path} was never written")


def start_sleeper(http: httpx.Client, pid_file: Path, sleep_s: float) -> tuple[str, int]:
    """Submit `pid_then_sleep` without waiting; its Location and its executor's pid once the
    function is running."""
    location = http.post(
        "/v1/functions/pid_then_sleep",
        json={"pid_file": str(pid_file), "sleep": sleep_s},
        headers={"Prefer": "respond-async"},
    ).headers["location"]
    return location, int(wait_for_file(pid_file))


def test_plain_function_returns_its_result_in_the_same_response(server: ServeProcess) -> None:
    with server.client() as http:
        r = http.post("/v1/functions/echo", json={"hello": ["world", 1, None]})
        assert r.status_code == 200, r.text
        assert r.json() == {"hello": ["world", 1, None]}
        job_id = r.headers["job-id"]
        assert len(job_id) >= 22
        assert r.headers["location"] == f"/v1/jobs/{job_id}"

        r = http.post("/v1/functions/add", json={"a": 2, "b": 40})  # an async function
        assert r.json() == 42

        status = http.get(f"/v1/jobs/{job_id}").json()
        assert status["status"] == "succeeded"
        assert status["attempts"] == 1
        assert status["finished_at"] is not None
        assert http.get(f"/v1/jobs/{job_id}/result").json() == {"hello": ["world", 1, None]}


def test_wait_budget_spent_gives_202_then_wait_then_result(server: ServeProcess) -> None:
    with server.client() as http:
        r = http.post("/v1/functions/sleep", json={"seconds": 1.5}, headers={"Prefer": "wait=0.1"})
        assert r.status_code == 202, r.text
        assert r.headers["preference-applied"] == "wait=0.1"
        assert int(r.headers["retry-after"]) >= 1
        location = r.headers["location"]
        assert r.json()["status"] in ("queued", "running")

        status = http.get(location, params={"wait": 30}).json()
        assert status["status"] == "succeeded"
        r = http.get(location + "/result")
        assert r.status_code == 200
        assert r.json() == 1.5


def test_respond_async_answers_at_once(server: ServeProcess) -> None:
    with server.client() as http:
        r = http.post(
            "/v1/functions/sleep", json={"seconds": 0.5}, headers={"Prefer": "respond-async"}
        )
        assert r.status_code == 202
        assert r.headers["preference-applied"] == "respond-async"
        r = http.get(r.headers["location"] + "/result", params={"wait": 30})
        assert r.status_code == 200
        assert r.json() == 0.5


def test_failure_after_retries_is_a_job_failed_problem(server: ServeProcess) -> None:
    with server.client() as http:
        r = http.post("/v1/functions/always_fails", json="bad input")
        assert r.status_code == 500
        assert r.headers["content-type"] == PROBLEM
        problem = r.json()
        assert problem["type"].endswith("job-failed")
        assert problem["error"] == {"type": "ValueError", "message": "cannot handle 'bad input'"}
        assert problem["job_id"] == r.headers["job-id"]
        status = http.get(f"/v1/jobs/{problem['job_id']}").json()
        assert status["status"] == "failed"
        assert status["attempts"] == 3  # retries=2: three attempts in all


def test_flaky_function_succeeds_on_retry(server: ServeProcess, tmp_path: Path) -> None:
    counter = tmp_path / "flaky-count"
    with server.client() as http:
        r = http.post("/v1/functions/flaky", json={"counter": str(counter), "fail_times": 2})
        assert r.status_code == 200, r.text
        assert r.json() == {"calls": 3}
        assert http.get(r.headers["location"]).json()["attempts"] == 3


def test_executor_killed_mid_task_is_redelivered(server: ServeProcess, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with server.client() as http:
        location, victim = start_sleeper(http, pid_file, 60)
        os.kill(victim, signal.SIGKILL)
        r = http.get(location + "/result", params={"wait": 60})
        assert r.status_code == 200, r.text
        assert r.json()["first"] is False
        assert r.json()["pid"] != victim
        assert http.get(location).json()["attempts"] == 2


def test_hung_function_is_killed_at_its_timeout(server: ServeProcess) -> None:
    with server.client() as http:
        r = http.post("/v1/functions/hangs", content=b"null")
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "TimeoutError"
        # Both executors still serve: more work than one process at a time.
        results = [http.post("/v1/functions/echo", json=i).json() for i in range(4)]
        assert results == [0, 1, 2, 3]


def test_accepted_job_survives_kill_9_of_the_whole_server(
    serve_factory: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = serve_factory(data_dir=data_dir)
    pid_file = tmp_path / "pid"
    with first.client() as http:
        running, _ = start_sleeper(http, pid_file, 60)
        queued = [
            http.post("/v1/functions/echo", json=i, headers={"Prefer": "respond-async"})
            for i in range(3)
        ]
    first.kill9()
    second = serve_factory(data_dir=data_dir)
    with second.client() as http:
        r = http.get(running + "/result", params={"wait": 60})
        assert r.status_code == 200, r.text
        assert r.json()["first"] is False
        for i, accepted in enumerate(queued):
            assert accepted.status_code == 202
            r = http.get(accepted.headers["location"] + "/result", params={"wait": 60})
            assert r.json() == i


def test_cancel_answers_waiters_with_409(server: ServeProcess) -> None:
    with server.client() as http:
        job_id = http.post(
            "/v1/functions/sleep", json={"seconds": 30}, headers={"Prefer": "respond-async"}
        ).headers["job-id"]
        outcome: dict[str, httpx.Response] = {}

        def wait_for_result() -> None:
            with server.client() as waiter:
                outcome["r"] = waiter.get(f"/v1/jobs/{job_id}/result", params={"wait": 60})

        thread = threading.Thread(target=wait_for_result)
        thread.start()
        r = http.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200
        assert r.json()["status"] == "cancelled"
        thread.join(timeout=60)
        assert outcome["r"].status_code == 409
        assert outcome["r"].json()["type"].endswith("job-cancelled")
        r = http.delete(f"/v1/jobs/{job_id}")
        assert r.json()["status"] == "cancelled"
        # A finished job cannot be cancelled.
        done = http.post("/v1/functions/echo", json=1).headers["job-id"]
        r = http.delete(f"/v1/jobs/{done}")
        assert r.status_code == 409
        assert r.json()["type"].endswith("job-finished")


def test_idempotency_key_attaches_to_the_first_job(server: ServeProcess) -> None:
    with server.client() as http:
        headers = {"Idempotency-Key": "order-17"}
        first = http.post("/v1/functions/echo", json={"n": 1}, headers=headers)
        again = http.post("/v1/functions/echo", json={"n": 1}, headers=headers)
        assert first.status_code == again.status_code == 200
        assert first.headers["job-id"] == again.headers["job-id"]
        other = http.post("/v1/functions/echo", json={"n": 2}, headers=headers)
        assert other.status_code == 422
        assert other.json()["type"].endswith("idempotency-key-reused")
        assert other.json()["job_id"] == first.headers["job-id"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "problem"),
    [
        ("POST", "/v1/functions/echo", {"content": b'{"a": '}, 400, "bad-request"),
        ("POST", "/v1/functions/echo", {"content": b'"\xff\xfe"'}, 400, "bad-request"),
        ("POST", "/v1/functions/echo", {"content": b""}, 400, "bad-request"),
        ("POST", "/v1/functions/nope", {"json": 1}, 404, "not-found"),
        ("GET", "/v1/jobs/no-such-job", {}, 404, "not-found"),
        ("GET", "/v1/jobs/no-such-job/result", {}, 404, "not-found"),
        ("DELETE", "/v1/jobs/no-such-job", {}, 404, "not-found"),
        ("GET", "/v1/nothing-here", {}, 404, "not-found"),
        (
            "POST",
            "/v1/functions/echo",
            {"content": b"x" * 2000, "headers": {"content-type": "application/json"}},
            413,
            "payload-too-large",
        ),
        (
            "POST",
            "/v1/functions/echo",
            {"content": b"1", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported-media-type",
        ),
        (
            "POST",
            "/v1/functions/echo",
            {"json": 1, "headers": {"prefer": "wait=soon"}},
            400,
            "bad-request",
        ),
        ("GET", "/v1/jobs/x", {"params": {"wait": "-1"}}, 400, "bad-request"),
    ],
)
def test_bad_input_is_a_problem_document(
    small_body_server: ServeProcess,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    problem: str,
) -> None:
    with small_body_server.client() as http:
        r = http.request(method, path, **kwargs)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == PROBLEM
        body = r.json()
        assert body["type"].endswith(problem)
        assert body["status"] == status


def test_meta_endpoints(server: ServeProcess) -> None:
    with server.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        names = {f["name"] for f in http.get("/v1/functions").json()["functions"]}
        assert {"echo", "add", "flaky", "hangs"} <= names
        spec = http.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.")
        assert "/v1/functions/echo" in spec["paths"]
        http.post("/v1/functions/echo", json=1)
        metrics = http.get("/metrics").text
        assert 'batchgate_jobs_submitted_total{function="echo"}' in metrics


def test_dead_letters_are_listed_and_redriven(server: ServeProcess, tmp_path: Path) -> None:
    def dlq(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "batchgate", "dlq", *args, "--data-dir", str(server.data_dir)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=server.env)

    with server.client() as http:
        r = http.post("/v1/functions/fails_once", json={"marker": str(tmp_path / "marker")})
        assert r.status_code == 500
        job_id = r.headers["job-id"]
        listed = dlq("list")
        assert listed.returncode == 0, listed.stderr
        assert f"job={job_id}" in listed.stdout
        assert "RuntimeError: first call fails" in listed.stdout
        message_id = listed.stdout.split()[0]
        assert dlq("redrive").returncode == 2  # neither ids nor --all: a usage error
        redriven = dlq("redrive", message_id)
        assert redriven.returncode == 0, redriven.stderr
        assert "re-drove 1 task" in redriven.stdout
        r = http.get(f"/v1/jobs/{job_id}/result", params={"wait": 60})
        assert r.status_code == 200, r.text
        assert r.json() == "worked"
        assert dlq("list").stdout.strip() == ""


def test_sigterm_finishes_in_flight_work_then_exits(serve_factory: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = serve_factory(data_dir=data_dir)
    pid_file = tmp_path / "pid"
    with first.client() as http:
        location, _ = start_sleeper(http, pid_file, 1.0)
    assert first.stop() == 0  # SIGTERM: drains the running task, then exits cleanly
    second = serve_factory(data_dir=data_dir)
    with second.client() as http:
        status = http.get(location).json()
        assert status["status"] == "succeeded"
        assert status["attempts"] == 1  # finished during the drain, not run again
        assert http.get(location + "/result").json()["first"] is True
