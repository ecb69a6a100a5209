"""The two client shells over httpx's mock transports (the core's own tests are in
test_client_core.py; real servers in tests/e2e/test_client.py), problem -> exception
mapping, SSE parsing, and `batchgate submit` against a mock gateway."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from batchgate import errors
from batchgate.batches import BatchFormat
from batchgate.cli import main
from batchgate.client import (
    AsyncClient,
    Client,
    JobEvent,
    RetryPolicy,
    SSEParser,
    error_from_problem,
    parse_sse,
)
from batchgate.models import Progress

BASE = errors.PROBLEM_BASE
Handler = Callable[[httpx.Request], httpx.Response]

# -- problem documents -> exceptions ------------------------------------------------------


def test_job_failed_keeps_job_id_and_error() -> None:
    doc = {
        "type": BASE + "job-failed",
        "title": "Job failed",
        "status": 500,
        "detail": "ValueError: boom",
        "instance": "/v1/jobs/abc",
        "job_id": "abc",
        "error": {"type": "ValueError", "message": "boom"},
    }
    exc = error_from_problem(doc, 500)
    assert type(exc) is errors.JobFailed
    assert exc.message == "ValueError: boom"
    assert exc.extra == {
        "instance": "/v1/jobs/abc",
        "job_id": "abc",
        "error": {"type": "ValueError", "message": "boom"},
    }
    assert exc.problem_details() == doc  # the client rebuilds what the server sent


@pytest.mark.parametrize(
    "cls",
    [
        errors.BadRequest,
        errors.Unauthorized,
        errors.NotFound,
        errors.PayloadTooLarge,
        errors.UnsupportedMediaType,
        errors.IdempotencyConflict,
        errors.JobCancelled,
        errors.BackendError,
        errors.LeaseLost,
        errors.ConfigError,
    ],
)
def test_every_server_error_round_trips(cls: type[errors.BatchgateError]) -> None:
    # A BackendError's detail is its public text (no server paths), the rest their message.
    extra = {"public": "it went wrong"} if cls is errors.BackendError else {}
    sent = cls("it went wrong", job_id="j1", **extra)
    exc = error_from_problem(sent.problem_details("/v1/x"), cls.status)
    assert type(exc) is cls
    assert exc.message == "it went wrong"
    assert exc.extra == {"instance": "/v1/x", "job_id": "j1"}


def test_overloaded_takes_retry_after() -> None:
    doc = errors.Overloaded("queue full").problem_details()
    exc = error_from_problem(doc, 503, retry_after="7")
    assert isinstance(exc, errors.Overloaded)
    assert exc.retry_after_s == 7
    assert error_from_problem({"status": 429}, 429, "soon").retry_after_s == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("doc", "status", "cls"),
    [
        ({"type": BASE + "job-finished", "status": 409, "detail": "done"}, 409, None),
        ({"type": "about:blank", "title": "Not Found", "status": 404}, 404, errors.NotFound),
        ({"detail": "HTTP 400: nope"}, 400, errors.BadRequest),
        ({"detail": "teapot"}, 418, None),
        ({"detail": "bad gateway"}, 502, errors.BackendError),
        ({"type": BASE + "not-found", "status": 404}, None, errors.NotFound),
        (None, 500, None),
    ],
)
def test_unknown_types_fall_back_on_status(
    doc: dict[str, Any] | None, status: int | None, cls: type[errors.BatchgateError] | None
) -> None:
    exc = error_from_problem(doc, status)
    assert type(exc) is (cls or errors.BatchgateError)
    assert exc.message
    if doc and doc.get("type", "").endswith("job-finished"):
        assert exc.extra["type"] == BASE + "job-finished"  # kept: the class does not say it


# -- Server-Sent Events -----------------------------------------------------------------------

STREAM = (
    ": keepalive\n"
    "\n"
    "event: progress\n"
    "id: 5\n"
    'data: {"done":4,"failed":1,"total":10}\n'
    "\n"
    "event: progress\r\n"
    'data:{"done":10,\r\n'
    'data: "failed":0,"total":10}\r\n'
    "\r\n"
    "retry: 1000\n"
    "event: succeeded\n"
    "id: end\n"
    'data: {"id":"j","status":"succeeded","progress":{"done":10,"failed":0,"total":10}}\n'
    "\n"
)


def test_parse_sse() -> None:
    events = list(parse_sse(STREAM.splitlines()))
    assert [e.event for e in events] == ["progress", "progress", "succeeded"]
    assert [e.id for e in events] == ["5", "5", "end"]  # an id carries over until changed
    assert events[0].progress == Progress(done=4, failed=1, total=10)
    assert events[1].data == {"done": 10, "failed": 0, "total": 10}  # data lines joined
    assert not events[1].terminal
    assert events[2].terminal
    assert events[2].progress == Progress(done=10, failed=0, total=10)


def test_sse_edge_cases() -> None:
    parser = SSEParser()
    assert parser.feed("event: progress") is None
    assert parser.feed("") is None  # no data: nothing dispatched, the event name resets
    assert parser.feed("data: plain text") is None
    assert parser.feed("data") is None  # a field without a colon: an empty data line
    event = parser.feed("")
    assert event == JobEvent("message", "plain text\n", None)
    assert event.progress is None and not event.terminal
    assert parser.feed("id: a\0b") is None  # ids with NUL are ignored
    assert parser.last_id is None
    failed = list(parse_sse(["event: failed", 'data: {"type":"x","job_id":"j"}', "", "data: 1"]))
    assert failed == [JobEvent("failed", {"type": "x", "job_id": "j"})]  # unfinished: dropped
    assert failed[0].terminal and failed[0].progress is None


# -- the shells over a mock transport ---------------------------------------------------------


class Recorder:
    """A mock gateway: answers from a list of (method, path-suffix, response) rules."""

    def __init__(self, *rules: tuple[str, str, Handler]) -> None:
        self.rules = list(rules)
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(request.read())
        for index, (method, path, answer) in enumerate(self.rules):
            if request.method == method and request.url.path.endswith(path):
                del self.rules[index]
                return answer(request)
        raise AssertionError(f"unexpected {request.method} {request.url}")

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return self(request)


def reply(status: int, body: Any = None, **headers: str) -> Handler:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    media = "application/problem+json" if status >= 400 else "application/json"
    hdrs = {"content-type": media, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return lambda request: httpx.Response(status, content=content, headers=hdrs)


def ndjson_reply(lines: list[Any], **headers: str) -> Handler:
    content = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    hdrs = {"content-type": "application/x-ndjson", **headers}
    return lambda request: httpx.Response(200, content=content, headers=hdrs)


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


class CutOff(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that breaks off after its first piece, as a reset connection does."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"[1,"
        raise httpx.ReadError("connection reset")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"[1,"
        raise httpx.ReadError("connection reset")


def cut_off(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, stream=CutOff(), headers={"content-type": "application/json"})


ACCEPTED = {"Job_Id": "j1", "Location": "/v1/jobs/j1"}
STATUS = {"id": "j1", "status": "running"}
FAST = RetryPolicy(backoff_s=0.001, backoff_max_s=0.001)


def make_client(recorder: Recorder, **kwargs: Any) -> Client:
    http = httpx.Client(transport=httpx.MockTransport(recorder))
    return Client("http://gw", api_key="k", http=http, **kwargs)


def make_async_client(recorder: Recorder, **kwargs: Any) -> AsyncClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(recorder.handle_async))
    return AsyncClient("http://gw", http=http, **kwargs)


def test_run_returns_the_result() -> None:
    recorder = Recorder(("POST", "/v1/functions/add", reply(200, {"sum": 3}, **ACCEPTED)))
    with make_client(recorder) as client:
        assert client.run("add", {"a": 1, "b": 2}, wait=5) == {"sum": 3}
    request = recorder.requests[0]
    assert request.headers["prefer"] == "wait=5"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-length"] == str(len(recorder.bodies[0]))
    assert request.headers["authorization"] == "Bearer k"
    assert json.loads(recorder.bodies[0]) == {"a": 1, "b": 2}


def test_run_keeps_waiting_after_202() -> None:
    recorder = Recorder(
        ("POST", "/v1/functions/slow", reply(202, STATUS, **ACCEPTED)),
        ("GET", "/v1/jobs/j1/result", reply(202, STATUS, **ACCEPTED)),
        ("GET", "/v1/jobs/j1/result", reply(200, [1, 2], **ACCEPTED)),
    )
    with make_client(recorder, poll_s=0.01) as client:
        assert client.run("slow", None) == [1, 2]
    assert recorder.requests[0].headers["prefer"] == "wait=0.01"
    assert recorder.requests[1].url.params["wait"] == "0.01"


def test_run_raises_the_job_failure() -> None:
    problem = errors.JobFailed("KeyError: 'x'", job_id="j1", error={"type": "KeyError"})
    recorder = Recorder(
        ("POST", "/v1/functions/f", reply(202, STATUS, **ACCEPTED)),
        ("GET", "/v1/jobs/j1/result", reply(500, problem.problem_details())),
    )
    with make_client(recorder) as client, pytest.raises(errors.JobFailed) as caught:
        client.run("f", 1)
    assert caught.value.extra["job_id"] == "j1"
    assert caught.value.extra["error"] == {"type": "KeyError"}


def test_non_problem_errors_still_raise() -> None:
    recorder = Recorder(
        ("POST", "/v1/functions/f", lambda r: httpx.Response(500, text="<html>bad</html>"))
    )
    with make_client(recorder) as client, pytest.raises(errors.BatchgateError) as caught:
        client.run("f", 1)
    assert "500" in caught.value.message


def test_map_streams_ndjson_and_returns_a_list() -> None:
    def items() -> Iterator[dict[str, int]]:
        yield from ({"n": n} for n in range(20_000))

    recorder = Recorder(
        ("POST", "/v1/functions/sq", reply(202, STATUS, **ACCEPTED)),
        ("GET", "/v1/jobs/j1/result", ndjson_reply(list(range(3)))),
    )
    with make_client(recorder) as client:
        assert client.map("sq", items()) == [0, 1, 2]
    request = recorder.requests[0]
    assert request.headers["content-type"] == "application/x-ndjson"
    assert request.headers["accept"] == "application/x-ndjson"
    assert request.headers["prefer"] == "respond-async"  # a generator cannot be sent twice
    assert "content-length" not in request.headers  # streamed, not built in memory
    lines = recorder.bodies[0].split(b"\n")
    assert lines[-1] == b"" and len(lines) == 20_001
    assert json.loads(lines[123]) == {"n": 123}


@pytest.mark.parametrize(
    ("name", "media"), [("in.json", "application/json"), ("in.jsonl", "application/x-ndjson")]
)
def test_map_sends_a_file_as_is(tmp_path: Path, name: str, media: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"[1, 2]" if media == "application/json" else b"1\n2\n")
    recorder = Recorder(("POST", "/v1/functions/sq", reply(200, [1, 4])))
    with make_client(recorder) as client:
        assert client.map("sq", path) == [1, 4]
    assert recorder.requests[0].headers["content-type"] == media
    assert recorder.bodies[0] == path.read_bytes()


def test_submit_then_events_result_and_cancel() -> None:
    sse = STREAM.encode()
    recorder = Recorder(
        ("POST", "/v1/functions/sq", reply(202, STATUS, **ACCEPTED)),
        ("GET", "/v1/jobs/j1/events", lambda r: httpx.Response(200, content=sse)),
        ("GET", "/v1/jobs/j1/result", ndjson_reply([1, 4, 9])),
        ("GET", "/v1/jobs/j1/result", ndjson_reply([1, 4, 9])),
        ("DELETE", "/v1/jobs/j1", reply(409, {"type": BASE + "job-finished", "detail": "done"})),
        ("GET", "/v1/jobs/j1", reply(200, {"id": "j1", "status": "succeeded"})),
    )
    with make_client(recorder) as client:
        handle = client.submit("sq", items=[1, 2, 3])
        assert (handle.id, handle.location, handle.format) == (
            "j1",
            "/v1/jobs/j1",
            "application/x-ndjson",
        )
        assert repr(handle) == "JobHandle('j1')"
        events = list(handle.events())
        assert events[-1].event == "succeeded"
        assert handle.result() == [1, 4, 9]
        assert b"".join(handle.stream_result()) == b"1\n4\n9\n"
        assert handle.cancel() == {"id": "j1", "status": "succeeded"}
    assert recorder.requests[0].headers["prefer"] == "respond-async"
    assert recorder.requests[1].headers["accept"] == "text/event-stream"
    assert recorder.requests[2].headers["accept"] == "application/x-ndjson"


def test_events_reconnect_with_last_event_id() -> None:
    first = b'event: progress\nid: 3\ndata: {"done":3,"failed":0,"total":9}\n\n'
    last = b'event: failed\nid: end\ndata: {"detail":"boom"}\n\n'
    recorder = Recorder(
        ("GET", "/v1/jobs/j1/events", lambda r: httpx.Response(200, content=first)),
        ("GET", "/v1/jobs/j1/events", lambda r: httpx.Response(200, content=last)),
    )
    with make_client(recorder) as client:
        events = list(client.job("j1").events())
    assert [e.event for e in events] == ["progress", "failed"]
    assert recorder.requests[1].headers["last-event-id"] == "3"


def test_result_wait_times_out() -> None:
    recorder = Recorder(*[("GET", "/v1/jobs/j1/result", reply(202, STATUS))] * 50)
    with make_client(recorder, poll_s=0.01) as client, pytest.raises(TimeoutError):
        client.job("j1").result(wait=0.05)


def test_connection_errors_are_retried_with_the_same_key() -> None:
    recorder = Recorder(
        ("POST", "/v1/functions/f", refuse),
        ("POST", "/v1/functions/f", cut_off),
        ("POST", "/v1/functions/f", reply(200, 7)),
    )
    with make_client(recorder, retry=FAST) as client:
        assert client.run("f", 1) == 7
    keys = {r.headers["idempotency-key"] for r in recorder.requests}
    assert len(recorder.requests) == 3 and len(keys) == 1
    assert recorder.bodies[0] == recorder.bodies[2] == b"1"


def test_run_file_writes_the_output(tmp_path: Path) -> None:
    source = tmp_path / "in.json"
    source.write_bytes(b"[1, 2, 3]")
    recorder = Recorder(
        ("GET", "/v1/functions", FUNCTIONS),
        ("POST", "/v1/functions/sq", reply(202, STATUS, **ACCEPTED)),
        ("GET", "/v1/jobs/j1/result", reply(200, [1, 4, 9])),
    )
    uploads: list[tuple[int, int | None]] = []
    with make_client(recorder) as client:
        done = client.run_file(
            "sq", source, tmp_path / "out.json", on_upload=lambda *a: uploads.append(a)
        )
    assert (tmp_path / "out.json").read_bytes() == b"[1, 4, 9]\n"
    assert (done.job_id, done.written_bytes) == ("j1", 10)
    assert uploads[-1] == (9, 9)


def test_async_client() -> None:
    async def items() -> Any:
        for n in range(5):
            yield n

    recorder = Recorder(
        ("POST", "/v1/functions/sq", reply(202, STATUS, **ACCEPTED)),
        ("GET", "/v1/jobs/j1/result", ndjson_reply([0, 1, 4, 9, 16])),
        ("POST", "/v1/functions/add", refuse),
        ("POST", "/v1/functions/add", cut_off),
        ("POST", "/v1/functions/add", reply(202, STATUS, **ACCEPTED)),
        ("GET", "/v1/jobs/j1/result", reply(200, 5)),
        ("POST", "/v1/functions/add", reply(202, STATUS, **ACCEPTED)),
        ("GET", "/v1/jobs/j1/events", lambda r: httpx.Response(200, content=STREAM.encode())),
        ("GET", "/v1/jobs/j1/result", reply(409, errors.JobCancelled("gone").problem_details())),
        ("GET", "/v1/jobs/j1/result", ndjson_reply([7])),
        ("GET", "/v1/functions", FUNCTIONS),
        ("POST", "/v1/functions/add", reply(200, 3, **ACCEPTED)),
    )

    async def run(tmp: io.BytesIO) -> None:
        async with make_async_client(recorder, poll_s=0.01, retry=FAST) as client:
            assert await client.map("sq", items()) == [0, 1, 4, 9, 16]
            assert await client.run("add", [2, 3]) == 5
            handle = await client.submit("add", [1])
            assert repr(handle) == "AsyncJobHandle('j1')"
            assert [e.event async for e in handle.events()][-1] == "succeeded"
            with pytest.raises(errors.JobCancelled):
                await handle.result()
            assert [p async for p in client.job("j1", "ndjson").stream_result()] == [b"7\n"]
            done = await client.run_file("add", io.BytesIO(b"[1, 2]"), tmp)
            assert done.kind == "function"

    out = io.BytesIO()
    asyncio.run(run(out))
    assert out.getvalue() == b"3\n"
    assert recorder.bodies[0] == b"0\n1\n2\n3\n4\n"
    adds = [r for r in recorder.requests[2:5]]
    assert len({r.headers["idempotency-key"] for r in adds}) == 1  # retried as one request


# -- batchgate submit -------------------------------------------------------------------------


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Recorder]:
    """Point every Client the CLI builds at a mock gateway with the given rules."""

    def install(*rules: Any) -> Recorder:
        recorder = Recorder(*rules)
        transport = httpx.MockTransport(recorder)
        monkeypatch.setattr(Client, "_new_http", lambda self: httpx.Client(transport=transport))
        return recorder

    return install


FUNCTIONS = reply(
    200, {"functions": [{"name": "sq", "kind": "map"}, {"name": "add", "kind": "function"}]}
)


def test_cli_submit_map(gateway: Callable[..., Recorder], tmp_path: Path) -> None:
    source = tmp_path / "in.ndjson"
    source.write_bytes(b"1\n2\n3\n")
    recorder = gateway(
        ("GET", "/v1/functions", FUNCTIONS),
        ("POST", "/v1/functions/sq", reply(202, STATUS, **ACCEPTED)),
        ("GET", "/v1/jobs/j1/events", lambda r: httpx.Response(200, content=STREAM.encode())),
        ("GET", "/v1/jobs/j1/result", ndjson_reply([1, 4, 9])),
    )
    out = tmp_path / "out.ndjson"
    result = CliRunner().invoke(
        main, ["submit", "sq", str(source), "-o", str(out), "--api-key", "k"]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b"1\n4\n9\n"
    assert recorder.bodies[1] == b"1\n2\n3\n"
    assert recorder.requests[1].headers["content-type"] == BatchFormat.NDJSON
    assert recorder.requests[1].headers["authorization"] == "Bearer k"
    assert recorder.requests[1].url.host == "127.0.0.1"


def test_cli_submit_reads_the_environment(
    gateway: Callable[..., Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHGATE_URL", "http://gw.example:9000")
    monkeypatch.setenv("BATCHGATE_API_KEY", "from-env")
    recorder = gateway(
        ("GET", "/v1/functions", FUNCTIONS),
        ("POST", "/v1/functions/add", reply(200, 3, **ACCEPTED)),
    )
    result = CliRunner().invoke(main, ["submit", "add", "--idempotency-key", "once"], input=b"[]")
    assert result.exit_code == 0, result.output
    post = recorder.requests[1]
    assert (post.url.host, post.url.port) == ("gw.example", 9000)
    assert post.headers["authorization"] == "Bearer from-env"
    assert post.headers["idempotency-key"] == "once"


def test_cli_submit_failure_exits_1(gateway: Callable[..., Recorder], tmp_path: Path) -> None:
    failed = errors.JobFailed("ValueError: item 2 is odd", job_id="j1").problem_details()
    gateway(
        ("GET", "/v1/functions", FUNCTIONS),
        ("POST", "/v1/functions/sq", reply(202, STATUS, **ACCEPTED)),
        (
            "GET",
            "/v1/jobs/j1/events",
            lambda r: httpx.Response(200, content=b"event: failed\ndata: {}\n\n"),
        ),
        ("GET", "/v1/jobs/j1/result", reply(500, failed)),
    )
    out = tmp_path / "out.json"
    result = CliRunner().invoke(main, ["submit", "sq", "-", "-o", str(out)], input=b"[1, 2]")
    assert result.exit_code == 1
    assert "ValueError: item 2 is odd" in result.stderr
    assert not out.exists()  # no output file for a failed job


def test_cli_submit_plain_function(gateway: Callable[..., Recorder]) -> None:
    recorder = gateway(
        ("GET", "/v1/functions", FUNCTIONS),
        ("POST", "/v1/functions/add", reply(200, {"sum": 3}, **ACCEPTED)),
    )
    result = CliRunner().invoke(main, ["submit", "add"], input=b'{"a": 1, "b": 2}')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"sum": 3}
    assert json.loads(recorder.bodies[1]) == {"a": 1, "b": 2}


def test_cli_submit_usage_errors(gateway: Callable[..., Recorder], tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["submit", "sq", str(tmp_path / "missing.json")]).exit_code == 2
    assert runner.invoke(main, ["submit", "sq", "--format", "csv"]).exit_code == 2
    assert runner.invoke(main, ["submit", "sq", "--url", "gw:80"], input=b"[]").exit_code == 2
    gateway(("GET", "/v1/functions", FUNCTIONS))
    result = runner.invoke(main, ["submit", "add"], input=b"{not json")
    assert result.exit_code == 2
    assert "not valid JSON" in result.stderr


def test_cli_submit_unknown_function(gateway: Callable[..., Recorder]) -> None:
    gateway(("GET", "/v1/functions", FUNCTIONS))
    result = CliRunner().invoke(main, ["submit", "nope"], input=b"[]")
    assert result.exit_code == 1
    assert "no function 'nope'" in result.stderr


def test_cli_submit_unreachable_gateway(gateway: Callable[..., Recorder]) -> None:
    gateway(*[("GET", "/v1/functions", refuse)] * 2)
    result = CliRunner().invoke(main, ["submit", "add", "--attempts", "2"], input=b"[]")
    assert result.exit_code == 1
    assert "http://127.0.0.1:8000: connection refused" in result.stderr


def test_a_presigned_redirect_is_fetched_as_given() -> None:
    presigned = "https://bucket.s3.example/r?X-Amz-Credential=a%2Fb%3D&X-Amz-Signature=f00"
    recorder = Recorder(
        ("GET", "/v1/jobs/j1/result", reply(303, b"", location=presigned)),
        ("GET", "/r", reply(200, [1])),
    )
    with make_client(recorder) as client:
        assert client.job("j1").result() == [1]
    fetched = recorder.requests[1]
    assert str(fetched.url) == presigned  # the query as signed, not re-encoded
    assert "authorization" not in fetched.headers
