"""Clients that leave or dawdle, on real sockets against a real `batchgate serve`: a wait
ends when its client goes, and a body that comes too slowly is answered 408."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import ServeProcess

pytestmark = pytest.mark.slow

BODY_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data = tmp_path_factory.mktemp("vanished") / "data"
    proc = ServeProcess(data, env={"BATCHGATE_BODY_TIMEOUT": str(BODY_TIMEOUT_S)}).start()
    yield proc
    proc.stop()


def waiting(http: httpx.Client) -> float:
    metrics = http.get("/metrics").text
    match = re.search(r"^batchgate_requests_waiting (\S+)$", metrics, re.MULTILINE)
    assert match is not None
    return float(match.group(1))


def wait_for_gauge(http: httpx.Client, value: float, timeout_s: float = 20) -> float:
    """Poll the gauge (another process's state: there is no event to await) until it shows
    `value`; returns what it last showed."""
    deadline = time.monotonic() + timeout_s
    seen = waiting(http)
    while seen != value and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = waiting(http)
    return seen


def raw_request(server: ServeProcess, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        rest += piece
    return int(status_line.split()[1]), headers, rest


def test_waits_end_when_their_clients_leave(server: ServeProcess) -> None:
    with server.client() as http:
        assert waiting(http) == 0
        r = http.post("/v1/functions/sleep", json={"seconds": 60},
                      headers={"Prefer": "respond-async"})  # fmt: skip
        job = r.headers["location"]
        body = json.dumps({"seconds": 60}).encode()
        clients = [
            raw_request(
                server,
                "POST /v1/functions/sleep HTTP/1.1\r\nHost: t\r\nIdempotency-Key: gone-1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n",
                body,
            ),
            raw_request(server, f"GET {job}?wait=120 HTTP/1.1\r\nHost: t\r\n"),
            raw_request(server, f"GET {job}/events HTTP/1.1\r\nHost: t\r\n"),
        ]
        assert wait_for_gauge(http, 3) == 3  # a POST wait, a GET wait, an event stream

        for sock in clients:
            sock.close()

        assert wait_for_gauge(http, 0) == 0
        # Their waits ended with the clients, not because the jobs were done.
        again = {"Idempotency-Key": "gone-1", "Prefer": "respond-async"}
        posted = http.post("/v1/functions/sleep", content=body, headers=again).headers["location"]
        for location in (job, posted):
            assert http.get(location).json()["status"] in ("queued", "running")
            http.delete(location)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/v1/functions/echo", "application/json"), ("/v1/functions/square", "application/x-ndjson")],
)
def test_a_body_that_comes_too_slowly_is_a_408(
    server: ServeProcess, path: str, content_type: str
) -> None:
    sock = raw_request(
        server,
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
        "Content-Length: 1000\r\n",
        b"[",
    )
    stop = threading.Event()

    def trickle() -> None:
        # A client sending a byte now and then: each piece must not buy more time.
        while not stop.wait(0.3):
            try:
                sock.sendall(b" ")
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        status, headers, body = read_response(sock)
    finally:
        stop.set()
        sender.join()
        sock.close()
    assert status == 408
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["type"].endswith("request-timeout")
    assert f"within {BODY_TIMEOUT_S} s" in problem["detail"]
