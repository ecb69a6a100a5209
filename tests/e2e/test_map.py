"""Map jobs through a real `batchgate serve`: order, formats, errors, cancel, events, expiry."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServeProcess

pytestmark = pytest.mark.slow

NDJSON = "application/x-ndjson"


@pytest.fixture(scope="module")
def mapserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data = tmp_path_factory.mktemp("map") / "data"
    proc = ServeProcess(data, "--max-items", "5000", "--result-ttl", "2s").start()
    yield proc
    proc.stop()


def ndjson(items: list[Any]) -> bytes:
    return b"".join(json.dumps(i).encode() + b"\n" for i in items)


def parse_sse(text: str) -> list[tuple[str, str | None, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            events.append((fields["event"], fields.get("id"), json.loads(fields["data"])))
    return events


def test_many_chunks_come_back_in_input_order(mapserver: ServeProcess) -> None:
    items = list(range(1000))  # 100 chunks over 2 executors
    with mapserver.client() as http:
        r = http.post("/v1/functions/square", json=items)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        assert r.json() == [i * i for i in items]
        status = http.get(r.headers["location"]).json()
        assert status["status"] == "succeeded"
        assert status["progress"] == {"done": 1000, "failed": 0, "total": 1000}


def test_ndjson_in_ndjson_out_and_result_in_either_format(mapserver: ServeProcess) -> None:
    items = [{"n": i} for i in range(23)]
    with mapserver.client() as http:
        r = http.post(
            "/v1/functions/echo_items",
            content=ndjson(items),
            headers={"content-type": NDJSON},
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith(NDJSON)
        assert [json.loads(line) for line in r.text.splitlines()] == items
        location = r.headers["location"]
        assert http.get(location + "/result").json() == items
        as_ndjson = http.get(location + "/result", headers={"accept": NDJSON})
        assert as_ndjson.headers["content-type"].startswith(NDJSON)
        assert [json.loads(line) for line in as_ndjson.text.splitlines()] == items


def test_batched_function_and_wrong_length(mapserver: ServeProcess) -> None:
    with mapserver.client() as http:
        r = http.post("/v1/functions/square_batched", json=list(range(50)))
        assert r.json() == [i * i for i in range(50)]
        r = http.post("/v1/functions/wrong_length", json=list(range(12)))
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "TypeError"
        assert re.search(r"must return a list of \d+ results", r.json()["error"]["message"])


def test_errors_collect_keeps_going(mapserver: ServeProcess) -> None:
    with mapserver.client() as http:
        r = http.post("/v1/functions/reciprocal", json=[1, 0, 2, 0, 4, 5, 8, 0, 10])
        assert r.status_code == 200, r.text
        out = r.json()
        assert out[0] == 1.0 and out[2] == 0.5 and out[8] == 0.1
        for index in (1, 3, 7):
            assert out[index]["error"]["type"] == "ZeroDivisionError"
        status = http.get(r.headers["location"]).json()
        assert status["progress"] == {"done": 6, "failed": 3, "total": 9}


def test_errors_fail_names_the_item(mapserver: ServeProcess) -> None:
    with mapserver.client() as http:
        r = http.post("/v1/functions/reciprocal_or_fail", json=[1, 2, 3, 4, 5, 6, 0, 8])
        assert r.status_code == 500
        problem = r.json()
        assert problem["type"].endswith("job-failed")
        assert problem["error"]["type"] == "ZeroDivisionError"
        assert problem["error"]["message"].startswith("item 6:")


def test_empty_batches(mapserver: ServeProcess) -> None:
    with mapserver.client() as http:
        r = http.post("/v1/functions/square", json=[])
        assert r.status_code == 200
        assert r.json() == []
        r = http.post("/v1/functions/square", content=b"", headers={"content-type": NDJSON})
        assert r.status_code == 200
        assert r.content == b""


@pytest.mark.parametrize(
    ("content", "content_type", "status", "detail"),
    [
        (b'{"not": "a list"}', "application/json", 400, "array"),
        (b"[1, 2,", "application/json", 400, ""),
        (b"1\n2\n{broken\n4\n", NDJSON, 400, "line 3"),
        (json.dumps(list(range(5001))).encode(), "application/json", 413, ""),
        (b"1\n", "text/csv", 415, ""),
    ],
)
def test_bad_batches_are_refused_and_leave_nothing_behind(
    mapserver: ServeProcess, content: bytes, content_type: str, status: int, detail: str
) -> None:
    with mapserver.client() as http:
        r = http.post(
            "/v1/functions/square", content=content, headers={"content-type": content_type}
        )
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert detail in r.json()["detail"]
        assert "job-id" not in r.headers


def test_event_stream_then_resume(mapserver: ServeProcess) -> None:
    with mapserver.client() as http:
        r = http.post(
            "/v1/functions/square",
            json=list(range(300)),
            headers={"accept": "text/event-stream"},
        )
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.text)
        kinds = [kind for kind, _, _ in events]
        assert kinds[-1] == "succeeded"
        assert set(kinds[:-1]) <= {"progress"}
        counts = [data["done"] for kind, _, data in events if kind == "progress"]
        assert counts == sorted(counts)
        assert all(data["total"] == 300 for kind, _, data in events if kind == "progress")
        assert events[-1][2]["result"] == f"/v1/jobs/{r.headers['job-id']}/result"
        again = http.get(f"/v1/jobs/{r.headers['job-id']}/events", headers={"last-event-id": "300"})
        assert [kind for kind, _, _ in parse_sse(again.text)] == ["succeeded"]


def test_cancel_mid_batch_stops_remaining_chunks(mapserver: ServeProcess, tmp_path: Path) -> None:
    items = [{"marker": str(tmp_path / f"m{n}"), "seconds": 0.3, "n": n} for n in range(30)]
    outcome: dict[str, httpx.Response] = {}
    with mapserver.client() as http:
        job_id = http.post(
            "/v1/functions/slow_item", json=items, headers={"Prefer": "respond-async"}
        ).headers["job-id"]

        def wait_for_result() -> None:
            with mapserver.client() as waiter:
                outcome["r"] = waiter.get(f"/v1/jobs/{job_id}/result", params={"wait": 60})

        thread = threading.Thread(target=wait_for_result)
        thread.start()
        deadline = time.monotonic() + 30
        while not any(tmp_path.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)  # the executors write the markers; nothing to await here
        assert http.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        thread.join(timeout=60)
        assert outcome["r"].status_code == 409
        # Wait until the workers have dropped the rest of the batch from the queue.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            queue = http.get("/readyz").json()["queue"]
            if queue["ready"] == 0 and queue["in_flight"] == 0:
                break
            time.sleep(0.05)
        assert len(list(tmp_path.iterdir())) < len(items)


def test_results_expire_after_the_retention_period(mapserver: ServeProcess) -> None:
    with mapserver.client() as http:
        r = http.post("/v1/functions/square", json=[1, 2, 3])
        location = r.headers["location"]
        assert http.get(location + "/result").json() == [1, 4, 9]
        deadline = time.monotonic() + 30
        status = 200
        while time.monotonic() < deadline and status == 200:
            status = http.get(location + "/result").status_code
            time.sleep(0.1)  # the cleanup loop runs on its own clock
        assert status == 404
