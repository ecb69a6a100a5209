"""Hostile and odd requests against a real `batchgate serve`: each answer is a problem
document with the right status, never a plain-text 500 and never an accepted job that
cannot finish."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import TEST_APP, ServeProcess

pytestmark = pytest.mark.slow

PROBLEM = "application/problem+json"
# Short waits: a server that wrongly accepts one of these answers 202 instead of hanging.
WAIT = {"Prefer": "wait=2"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path_factory.mktemp("hostile") / "data").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data = tmp_path_factory.mktemp("keyed") / "data"
    proc = ServeProcess(data, "--api-key", "s3cret").start()
    yield proc
    proc.stop()


def assert_problem(r: httpx.Response, status: int, kind: str = "") -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, object] = r.json()
    assert str(body["type"]).endswith(kind or "")
    assert body["status"] == status
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["detail"]
    return body


@pytest.mark.parametrize(
    "body",
    [
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b'{"x": [1, NaN]}',
        b"1e400",
        b'"\\ud800"',
        b'{"\\udc00": 1}',
        b"9" * 5000,
        b"[" * 100_000 + b"]" * 100_000,
        b"[" * 600 + b"]" * 600,
    ],
    ids=lambda body: body[:12].decode(),
)
def test_a_body_breaking_the_json_rules_is_a_400(server: ServeProcess, body: bytes) -> None:
    with server.client() as http:
        r = http.post("/v1/functions/echo", content=body, headers=WAIT)
        assert_problem(r, 400, "bad-request")
        assert "job-id" not in r.headers


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"[1, NaN, 2]"),
        ("application/json", b"[1, 1e400]"),
        ("application/json", b'[1, "\\ud800"]'),
        ("application/x-ndjson", b"1\n1e400\n2\n"),
        ("application/x-ndjson", b'1\n"\\udfff"\n'),
        ("application/x-ndjson", b"1\n" + b"9" * 5000 + b"\n"),
    ],
)
def test_a_batch_item_breaking_the_rules_is_a_400(
    server: ServeProcess, content_type: str, body: bytes
) -> None:
    with server.client() as http:
        headers = {**WAIT, "Content-Type": content_type}
        r = http.post("/v1/functions/square", content=body, headers=headers)
        assert_problem(r, 400, "bad-request")


def test_a_leading_bom_is_skipped(server: ServeProcess) -> None:
    with server.client() as http:
        r = http.post("/v1/functions/echo", content=b'\xef\xbb\xbf{"a": 1}', headers=WAIT)
        assert r.status_code == 200, r.text
        assert r.json() == {"a": 1}
        r = http.post("/v1/functions/square", content=b"\xef\xbb\xbf[2, 3]", headers=WAIT)
        assert r.json() == [4, 9]


@pytest.mark.parametrize("wait", ["nan", "inf", "-inf", "1e400", "9" * 5000, "NaN"])
def test_a_wait_that_is_no_number_of_seconds_is_a_400(server: ServeProcess, wait: str) -> None:
    with server.client() as http:
        r = http.post("/v1/functions/echo", json=1, headers={"Prefer": f"wait={wait}"})
        assert_problem(r, 400, "bad-request")
        assert "job-id" not in r.headers  # refused before any job exists
        job_id = http.post("/v1/functions/echo", json=1).headers["job-id"]
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result"):
            assert_problem(http.get(path, params={"wait": wait}), 400, "bad-request")


@pytest.mark.parametrize(
    "last_event_id", [b"9" * 5000, "²".encode("latin-1"), "1³".encode("latin-1"), b"-1", b"x"]
)
def test_a_last_event_id_that_is_no_event_id_is_a_400(
    server: ServeProcess, last_event_id: bytes
) -> None:
    with server.client() as http:
        job_id = http.post("/v1/functions/echo", json=1).headers["job-id"]
        r = http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last_event_id})
        assert_problem(r, 400, "bad-request")
        ok = http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "3"})
        assert ok.status_code == 200
        assert "event: succeeded" in ok.text


def test_an_unexpected_exception_is_a_500_problem_naming_the_request(
    server: ServeProcess,
) -> None:
    with server.client() as http:
        job_id = http.post("/v1/functions/echo", json=1).headers["job-id"]
        # A record no version of batchgate writes: reading it raises inside the server.
        with sqlite3.connect(server.data_dir / "state.db") as db:
            db.execute("UPDATE jobs SET kind = 'bogus' WHERE id = ?", (job_id,))
        r = http.get(f"/v1/jobs/{job_id}", headers={"X-Request-Id": "trace-me-1"})
        body = assert_problem(r, 500, "internal-error")
        assert body["request_id"] == "trace-me-1"
        assert "bogus" not in r.text  # the exception's text stays in the server's log
    log = server.log.read_text()
    assert f"unexpected error on GET /v1/jobs/{job_id}" in log
    assert "KeyError: 'bogus'" in log  # logged once, with its traceback


def test_router_errors_are_problems_with_a_detail(server: ServeProcess) -> None:
    with server.client() as http:
        body = assert_problem(http.get("/v1/nothing-here"), 404, "not-found")
        assert "/v1/nothing-here" in str(body["detail"])
        r = http.put("/v1/jobs/some-id", json=1)
        body = assert_problem(r, 405, "http-error")
        allowed = {m.strip() for m in r.headers["allow"].split(",")}
        assert {"GET", "DELETE"} <= allowed
        assert "PUT" in str(body["detail"])
        assert http.delete("/v1/jobs/some-id").status_code == 404  # DELETE still routes


def test_a_401_names_the_auth_scheme(keyed_server: ServeProcess) -> None:
    with keyed_server.client() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = http.post("/v1/functions/echo", json=1, headers=headers)
            assert_problem(r, 401, "unauthorized")
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = http.post("/v1/functions/echo", json=1, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200


def run_serve(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "batchgate", "serve", TEST_APP, "--data-dir",
           str(tmp_path / "data"), "--workers", "1", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("key", ["", "   ", " padded "])
def test_a_blank_api_key_is_refused(tmp_path: Path, key: str) -> None:
    done = run_serve("--host", "0.0.0.0", "--api-key", key, tmp_path=tmp_path)
    assert done.returncode != 0
    assert "API key" in done.stderr
    assert "serving" not in done.stderr


def test_a_refused_bind_exits_non_zero_before_announcing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = run_serve("--port", port, tmp_path=tmp_path)
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "serving" not in done.stderr
