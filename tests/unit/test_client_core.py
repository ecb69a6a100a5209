"""The I/O-free client core, driven step by step by a scripted gateway: no network, no
sleeping (the clock advances by the Sleep steps), no randomness (jitter draws 0.5)."""

from __future__ import annotations

import email.utils
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchgate import errors
from batchgate.batches import BatchFormat
from batchgate.client import (
    ClientConfig,
    ClientCore,
    InvalidInput,
    JobEvent,
    JobRef,
    RetryPolicy,
)
from batchgate.client.bodies import Body, Output, ndjson_pieces
from batchgate.client.files import run_file
from batchgate.client.retry import Retries, parse_retry_after
from batchgate.client.sse import LineSplitter
from batchgate.client.steps import Call, Driver, Emit, Flow, Next, Reply, Save, Send, Sleep, Slurp
from batchgate.errors import ConfigError
from batchgate.models import Progress
from batchgate.settings import Settings

BASE = errors.PROBLEM_BASE
ACCEPTED = {"job-id": "j1", "location": "/v1/jobs/j1", "retry-after": "1"}


class Refused:
    """An answer: the connection fails before any of the body is read."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def answer(status: int, body: Any = None, *pieces: bytes | Exception, **headers: str) -> Any:
    """A scripted answer: JSON `body` (or raw bytes, or `pieces` that may hold an error)."""
    if pieces:
        content = list(pieces)
    else:
        content = [body if isinstance(body, bytes) else json.dumps(body).encode()]
    media = "application/problem+json" if status >= 400 else "application/json"
    names = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    return status, {"content-type": media, **names}, content


def problem(exc: errors.BatchgateError, **headers: str) -> Any:
    return answer(exc.status, exc.problem_details(), **headers)


class Gateway:
    """A fake shell: performs the core's steps against a script of answers."""

    def __init__(
        self, *answers: Any, api_key: str | None = "k", poll_s: float = 60, **policy: Any
    ) -> None:
        self.answers = list(answers)
        self.held = True  # a 202 to a long poll comes after the whole wait (else at once)
        self.now = 0.0
        self.calls: list[Call] = []
        self.sent: list[bytes] = []
        self.sleeps: list[float] = []
        self.config = ClientConfig(
            base_url="http://gw",
            api_key=api_key,
            poll_s=poll_s,
            retry=RetryPolicy(**policy),
            clock=lambda: self.now,
            draw=lambda: 0.5,
        )
        self.core = ClientCore(self.config)

    def drive(self, flow: Flow[Any]) -> tuple[Any, list[Any]]:
        emitted: list[Any] = []
        with Driver(flow) as driver:
            while (step := driver.step) is not None:
                try:
                    outcome = self.perform(step, emitted)
                except httpx.TransportError as exc:
                    driver.fail(exc)
                else:
                    driver.resume(outcome)
            return driver.result(), emitted

    def __call__(self, flow: Flow[Any]) -> Any:
        return self.drive(flow)[0]

    def perform(self, step: Any, emitted: list[Any]) -> Any:
        if isinstance(step, Send):
            return self.send(step.call)
        if isinstance(step, Next):
            piece = next(step.reply.stream, b"")
            if isinstance(piece, Exception):
                raise piece
            return piece
        if isinstance(step, Sleep):
            self.sleeps.append(step.seconds)
            self.now += step.seconds
            return None
        if isinstance(step, Save):
            self.save(step)
            return None
        if isinstance(step, Slurp):
            return b"".join(read(step.body))
        assert isinstance(step, Emit)
        emitted.append(step.value)
        return None

    def send(self, call: Call) -> Reply:
        self.calls.append(call)
        scripted = self.answers.pop(0)
        if isinstance(scripted, Refused):
            raise scripted.exc
        content = call.content(lambda body: b"".join(read(body)))
        if content is not None:
            self.sent.append(content)
        if isinstance(scripted, Exception):
            raise scripted  # the body went up; the answer never came
        status, headers, pieces = scripted
        if status == 202 and self.held:
            self.now += float(call.params.get("wait", 0))
        return Reply(status, httpx.Headers(headers), call.url, iter(pieces))

    def save(self, save: Save) -> None:
        out = save.output
        target = open(out.path, "wb") if out.path is not None else out.file  # noqa: SIM115
        assert target is not None
        for piece in save.reply.stream:
            if isinstance(piece, Exception):
                target.close()
                raise piece
            target.write(out.take(piece))
        target.write(out.ending())
        if out.path is not None:
            target.close()


def read(body: Body) -> Iterator[bytes]:
    """A body's pieces, the way a shell reads them."""
    if body.path is not None:
        yield body.count(Path(body.path).read_bytes())
    elif body.file is not None:
        while piece := body.file.read(4):
            yield body.count(piece)
    else:
        yield from map(body.count, ndjson_pieces(body.items))  # type: ignore[arg-type]


# -- requests and answers -------------------------------------------------------------------


def test_run_posts_json_and_decodes_the_result() -> None:
    gw = Gateway(answer(200, {"sum": 3}, **ACCEPTED))
    assert gw(gw.core.run("add", {"a": 1, "b": 2}, wait=5)) == {"sum": 3}
    (call,) = gw.calls
    assert (call.method, call.url) == ("POST", "http://gw/v1/functions/add")
    assert call.headers["Prefer"] == "wait=5"
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["Authorization"] == "Bearer k"
    assert call.headers["Idempotency-Key"].startswith("auto-")
    assert call.timeout.read == 5 + 30  # the wait, and the timeout beyond it
    assert json.loads(gw.sent[0]) == {"a": 1, "b": 2}


def test_run_follows_a_202_to_the_result() -> None:
    gw = Gateway(
        answer(202, {"status": "running"}, **ACCEPTED),
        answer(202, {"status": "running"}, **ACCEPTED),
        answer(200, [1, 2]),
    )
    assert gw(gw.core.run("slow", None)) == [1, 2]
    polls = gw.calls[1:]
    assert [c.url for c in polls] == ["http://gw/v1/jobs/j1/result"] * 2
    assert polls[0].params == {"wait": "60"}
    assert gw.sleeps == []  # each poll held its full wait: no pause in between


def test_an_early_202_is_paced() -> None:
    gw = Gateway(answer(202, {}, **ACCEPTED), answer(202, {}, **ACCEPTED), answer(200, 1))
    gw.held = False  # the server answers at once (it is draining)
    assert gw(gw.core.result(gw.core.job("j1"))) == 1
    assert gw.sleeps == [1.0, 1.0]


def test_a_303_result_is_fetched_without_the_api_key() -> None:
    presigned = "https://bucket.s3.example/j1?X-Amz-Signature=abc"
    gw = Gateway(
        answer(303, b"", location=presigned),
        (200, {"content-type": "binary/octet-stream"}, [b'["x",', b'"y"]']),
    )
    assert gw(gw.core.result(gw.core.job("j1"))) == ["x", "y"]  # JSON, whatever S3 says
    assert gw.calls[0].headers["Authorization"] == "Bearer k"
    assert gw.calls[1].url == presigned
    assert "Authorization" not in gw.calls[1].headers


def test_a_same_origin_absolute_location_keeps_the_key() -> None:
    gw = Gateway(answer(200, 1))
    gw(gw.core.result(JobRef("j1", "http://gw/v1/jobs/j1")))
    assert gw.calls[0].headers["Authorization"] == "Bearer k"


@pytest.mark.parametrize(
    "exc",
    [
        errors.JobFailed("KeyError: 'x'", job_id="j1", error={"type": "KeyError"}),
        errors.JobCancelled("job j1 was cancelled", job_id="j1"),
        errors.NotFound("no function named 'f'"),
        errors.IdempotencyConflict("reused", job_id="j0"),
    ],
)
def test_problems_raise_their_exceptions(exc: errors.BatchgateError) -> None:
    gw = Gateway(answer(202, {}, **ACCEPTED), problem(exc))
    with pytest.raises(type(exc)) as caught:
        gw(gw.core.run("f", 1))
    assert caught.value.message == exc.message
    assert caught.value.extra.get("job_id") == exc.extra.get("job_id")


def test_map_sends_items_as_ndjson_and_wants_ndjson() -> None:
    gw = Gateway((200, {"content-type": "application/x-ndjson"}, [b"1\n4\n", b"9\n"]))
    assert gw(gw.core.map("sq", [1, 2, 3])) == [1, 4, 9]
    headers = gw.calls[0].headers
    assert headers["Content-Type"] == headers["Accept"] == BatchFormat.NDJSON
    assert gw.sent[0] == b"1\n2\n3\n"


def test_map_refuses_a_non_list_result() -> None:
    gw = Gateway(answer(200, {"not": "a list"}))
    with pytest.raises(errors.BatchgateError, match="not a list"):
        gw(gw.core.map("sq", [1]))


def test_submit_takes_exactly_one_source() -> None:
    gw = Gateway()
    with pytest.raises(TypeError):
        gw(gw.core.submit("f", 1, items=[1]))
    with pytest.raises(TypeError):
        gw(gw.core.submit("f"))


def test_submit_names_the_job() -> None:
    gw = Gateway(answer(202, {}, **ACCEPTED))
    ref = gw(gw.core.submit("sq", file=io.BytesIO(b"1\n"), format="ndjson"))
    assert (ref.id, ref.location, ref.format) == ("j1", "/v1/jobs/j1", BatchFormat.NDJSON)
    assert gw.calls[0].headers["Prefer"] == "respond-async"


def test_submit_is_done_once_the_job_is_named() -> None:
    # The 202's body (the job's status) is read only to reuse the connection.
    cut = (202, ACCEPTED, [b'{"id":', httpx.ReadError("reset")])
    gw = Gateway(cut)
    assert gw(gw.core.submit("f", 1)).id == "j1"
    assert len(gw.calls) == 1


def test_cancel_of_a_finished_job_returns_its_status() -> None:
    finished = answer(409, {"type": BASE + "job-finished", "detail": "job j1 already succeeded"})
    gw = Gateway(finished, answer(200, {"id": "j1", "status": "succeeded"}))
    assert gw(gw.core.cancel(gw.core.job("j1"))) == {"id": "j1", "status": "succeeded"}
    assert [c.method for c in gw.calls] == ["DELETE", "GET"]


def test_status_waits_and_result_times_out() -> None:
    gw = Gateway(answer(200, {"status": "running"}))
    assert gw(gw.core.status(gw.core.job("j1"), wait=5))["status"] == "running"
    assert gw.calls[0].params == {"wait": "5"}
    gw = Gateway(*[answer(202, {}, **ACCEPTED)] * 10, poll_s=2)
    with pytest.raises(TimeoutError):
        gw(gw.core.result(gw.core.job("j1"), wait=3))


# -- retries ----------------------------------------------------------------------------------


def test_a_503_is_retried_after_its_retry_after_with_the_same_key() -> None:
    gw = Gateway(problem(errors.Overloaded("queue full"), retry_after="3"), answer(200, 42))
    assert gw(gw.core.run("f", 1)) == 42
    assert gw.sleeps == [3.0]
    first, second = gw.calls
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert gw.sent[0] == gw.sent[1]


def test_connection_errors_back_off_exponentially_with_jitter() -> None:
    refused = Refused(httpx.ConnectError("refused"))
    gw = Gateway(refused, refused, refused, answer(200, 1), backoff_s=0.5)
    assert gw(gw.core.run("f", 1)) == 1
    # 0.5 * 2^(n-1), scaled by 0.5 + 0.5 * draw (0.5 here)
    assert gw.sleeps == [0.375, 0.75, 1.5]


def test_backoff_is_capped_and_jitter_stays_in_range() -> None:
    policy = RetryPolicy(backoff_s=1, backoff_max_s=4)
    assert [policy.backoff(n, 0.999) for n in (1, 2, 3, 10)] == pytest.approx(
        [1, 2, 4, 4], rel=1e-3
    )
    assert [policy.backoff(n, 0.0) for n in (1, 3, 10)] == [0.5, 2, 2]


def test_retries_stop_after_the_attempts() -> None:
    refused = Refused(httpx.ConnectError("refused"))
    gw = Gateway(refused, refused, refused, attempts=3)
    with pytest.raises(httpx.ConnectError):
        gw(gw.core.run("f", 1))
    assert len(gw.calls) == 3 and len(gw.sleeps) == 2


def test_a_retry_after_past_the_budget_is_not_waited_for() -> None:
    gw = Gateway(problem(errors.Overloaded("full"), retry_after="120"), max_elapsed_s=60)
    with pytest.raises(errors.Overloaded) as caught:
        gw(gw.core.run("f", 1))
    assert caught.value.retry_after_s == 120
    assert gw.sleeps == []


def test_retries_stop_after_max_elapsed() -> None:
    timeouts = [Refused(httpx.ConnectTimeout("slow"))] * 10
    gw = Gateway(*timeouts, attempts=10, backoff_s=4, backoff_max_s=4, max_elapsed_s=7)
    with pytest.raises(httpx.ConnectTimeout):
        gw(gw.core.functions())
    assert gw.sleeps == [3.0, 3.0]  # a third wait would end past 7 s after the first failure


def test_an_answer_cut_off_mid_body_is_fetched_again() -> None:
    cut = (200, {"content-type": "application/json"}, [b"[1,", httpx.ReadError("reset")])
    gw = Gateway(cut, answer(200, [1, 2]))
    assert gw(gw.core.run("f", 1)) == [1, 2]
    assert len(gw.calls) == 2


def test_errors_that_are_not_transient_are_not_retried() -> None:
    gw = Gateway(answer(500, {"type": BASE + "internal-error", "detail": "boom"}))
    with pytest.raises(errors.BatchgateError, match="boom"):
        gw(gw.core.run("f", 1))
    gw = Gateway(Refused(httpx.UnsupportedProtocol("ftp")))
    with pytest.raises(httpx.UnsupportedProtocol):
        gw(gw.core.run("f", 1))
    assert len(gw.calls) == 1


def test_an_iterator_already_sent_is_not_sent_again() -> None:
    gw = Gateway(httpx.RemoteProtocolError("server disconnected"), answer(202, {}, **ACCEPTED))
    with pytest.raises(httpx.RemoteProtocolError):
        gw(gw.core.map("sq", iter([1, 2])))
    assert len(gw.calls) == 1
    # A body that cannot be sent twice asks for respond-async: only its upload is at risk.
    assert gw.calls[0].headers["Prefer"] == "respond-async"


def test_an_iterator_not_yet_read_is_sent_on_retry() -> None:
    gw = Gateway(
        Refused(httpx.ConnectError("refused")),
        answer(202, {}, **ACCEPTED),
        (200, {"content-type": "application/x-ndjson"}, [b"1\n4\n"]),
    )
    assert gw(gw.core.map("sq", iter([1, 2]))) == [1, 4]
    assert gw.sent == [b"1\n2\n"]  # the refused attempt read nothing


def test_a_seekable_file_is_rewound_for_a_retry() -> None:
    source = io.BytesIO(b"header|1\n2\n3\n")
    source.seek(7)
    gw = Gateway(httpx.WriteError("reset"), answer(200, [1, 4, 9]))
    assert gw(gw.core.map("sq", source, format="ndjson")) == [1, 4, 9]
    assert gw.sent == [b"1\n2\n3\n", b"1\n2\n3\n"]


def test_without_retries_no_key_is_made_up() -> None:
    gw = Gateway(answer(200, 1), answer(200, 1), attempts=1)
    gw(gw.core.run("f", 1))
    assert "Idempotency-Key" not in gw.calls[0].headers
    gw(gw.core.run("f", 1, idempotency_key="mine"))
    assert gw.calls[1].headers["Idempotency-Key"] == "mine"


def test_retry_budget_counts_from_the_first_failure() -> None:
    now = [100.0]
    retries = Retries(RetryPolicy(max_elapsed_s=10), lambda: now[0], lambda: 0.0)
    assert retries.next_delay_s() == 0.25
    now[0] += 9.0
    assert retries.next_delay_s() == 0.5
    now[0] += 1.0
    assert retries.next_delay_s() is None  # 10 s after the first failure: no more


def test_policy_validation() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(backoff_s=-1)
    assert not RetryPolicy(attempts=1).enabled


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == 30.0
    assert parse_retry_after(email.utils.formatdate(0, usegmt=True), now=10) == 0.0


# -- events -----------------------------------------------------------------------------------


def test_events_span_pieces_and_resume_after_a_drop() -> None:
    raw = b'event: progress\r\nid: 3\r\ndata: {"done":3,"failed":0,"total":9}\r\n\r\n'
    pieces = [raw[:20], raw[20:-1], raw[-1:], b": keep", b"alive\n\n", b'data: "caf\xc3',
              b'\xa9"\n\n', b"data: cut off", httpx.ReadError("dropped")]  # fmt: skip
    last = b'event: succeeded\nid: end\ndata: {"id":"j1","status":"succeeded"}\n\n'
    gw = Gateway((200, {}, pieces), (200, {}, [last]))
    _, events = gw.drive(gw.core.events(gw.core.job("j1")))
    assert events == [
        JobEvent("progress", {"done": 3, "failed": 0, "total": 9}, "3"),
        JobEvent("message", "caf\u00e9", "3"),  # the id carries over; UTF-8 across pieces
        JobEvent("succeeded", {"id": "j1", "status": "succeeded"}, "end"),  # no "cut off"
    ]
    assert "Last-Event-ID" not in gw.calls[0].headers
    assert gw.calls[1].headers["Last-Event-ID"] == "3"
    assert gw.calls[0].headers["Accept"] == "text/event-stream"


def test_events_give_up_after_quiet_reconnects() -> None:
    gw = Gateway(*[(200, {}, [b": keepalive\n\n"])] * 4)
    with pytest.raises(errors.BatchgateError, match="without an outcome"):
        gw.drive(gw.core.events(gw.core.job("j1")))
    assert len(gw.calls) == 4


def test_events_of_an_unknown_job_raise() -> None:
    gw = Gateway(problem(errors.NotFound("no job 'x'")))
    with pytest.raises(errors.NotFound):
        gw.drive(gw.core.events(gw.core.job("x")))


def test_line_splitter() -> None:
    lines = LineSplitter()
    assert lines.feed(b"a\r") == []  # maybe half of a CRLF
    assert lines.feed(b"\nb\rc\n\xc3") == ["a", "b", "c"]
    assert lines.feed(b"\xa9\r\r\n") == ["\u00e9", ""]


def test_stream_result_emits_the_body() -> None:
    gw = Gateway((200, {"content-type": "application/x-ndjson"}, [b"1\n", b"4\n"]))
    _, pieces = gw.drive(gw.core.stream_result(gw.core.job("j1"), format="ndjson"))
    assert pieces == [b"1\n", b"4\n"]
    assert gw.calls[0].headers["Accept"] == "application/x-ndjson"


# -- files ------------------------------------------------------------------------------------

FUNCTIONS = answer(200, {"functions": [{"name": "sq", "kind": "map"}, {"name": "add"}]})
SSE = (
    b'event: progress\nid: 2\ndata: {"done":2,"failed":0,"total":3}\n\n'
    b"event: succeeded\ndata: {}\n\n"
)


def test_run_file_of_a_map_function(tmp_path: Path) -> None:
    source = tmp_path / "in.ndjson"
    source.write_bytes(b"1\n2\n3\n")
    out = tmp_path / "out.ndjson"
    seen: list[Any] = []
    gw = Gateway(
        FUNCTIONS,
        answer(202, {}, **ACCEPTED),
        (200, {}, [SSE]),
        (200, {"content-type": "application/x-ndjson"}, [b"1\n4\n", b"9"]),
    )
    done = gw(run_file(gw.core, "sq", source, out, on_upload=lambda *a: seen.append(a),
                       on_job=seen.append, on_progress=seen.append))  # fmt: skip
    assert out.read_bytes() == b"1\n4\n9\n"  # the last line ended
    assert (done.job_id, done.kind, done.written_bytes) == ("j1", "map", 6)
    assert seen == [(6, 6), "j1", Progress(done=2, failed=0, total=3)]
    assert gw.calls[1].headers["Prefer"] == "respond-async"
    assert gw.calls[1].headers["Content-Type"] == BatchFormat.NDJSON


def test_run_file_writes_nothing_for_a_failed_job(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    failed = errors.JobFailed("ValueError: odd", job_id="j1")
    gw = Gateway(FUNCTIONS, answer(202, {}, **ACCEPTED), problem(failed))
    with pytest.raises(errors.JobFailed):
        gw(run_file(gw.core, "sq", io.BytesIO(b"[1]"), out))
    assert not out.exists()


def test_run_file_of_a_plain_function_checks_the_json() -> None:
    gw = Gateway(FUNCTIONS)
    with pytest.raises(InvalidInput, match="not valid JSON"):
        gw(run_file(gw.core, "add", io.BytesIO(b"{nope"), io.BytesIO()))
    gw = Gateway(FUNCTIONS, answer(200, 3, **ACCEPTED))
    out = io.BytesIO()
    assert gw(run_file(gw.core, "add", io.BytesIO(b'{"a": 1, "b": 2}'), out)).kind == "function"
    assert out.getvalue() == b"3\n"
    assert gw.sent == [b'{"a": 1, "b": 2}']  # sent as it was read
    assert gw.calls[1].headers["Prefer"] == "wait=60"


def test_run_file_of_an_unknown_function() -> None:
    gw = Gateway(FUNCTIONS)
    with pytest.raises(errors.NotFound, match=r"no function 'nope' \(it has: add, sq\)"):
        gw(run_file(gw.core, "nope", io.BytesIO(b"1"), io.BytesIO()))


def test_run_file_fetches_a_cut_off_result_again(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    cut = (200, {}, [b"[1,", httpx.ReadError("reset")])
    gw = Gateway(FUNCTIONS, answer(202, {}, **ACCEPTED), cut, answer(200, [1, 4]))
    gw(run_file(gw.core, "sq", io.BytesIO(b"[1, 2]"), out))
    assert out.read_bytes() == b"[1, 4]\n"
    assert len(gw.sleeps) == 1


def test_output_ending() -> None:
    out = Output(io.BytesIO())
    assert out.ending() == b""  # nothing written: nothing to end
    out.take(b"[1]")
    assert out.ending() == b"\n"
    out.take(b"1\n")
    assert out.ending() == b""


# -- configuration ----------------------------------------------------------------------------


def test_client_config_reads_the_environment() -> None:
    env = {"BATCHGATE_URL": "https://gw.example/", "BATCHGATE_API_KEY": "secret"}
    config = ClientConfig.resolve(env=env)
    assert (config.base_url, config.api_key) == ("https://gw.example", "secret")
    config = ClientConfig.resolve("http://other:9000", "", env=env)
    assert (config.base_url, config.api_key) == ("http://other:9000", None)
    assert ClientConfig.resolve(env={}).base_url == "http://127.0.0.1:8000"
    with pytest.raises(ConfigError, match="http"):
        ClientConfig.resolve("gw.example:8000", env={})


def test_server_settings_accept_the_client_variables() -> None:
    env = {"BATCHGATE_URL": "http://x", "BATCHGATE_API_KEY": "k", "BATCHGATE_PORT": "9001"}
    assert Settings.load(env=env).port == 9001
    with pytest.raises(ConfigError, match="BATCHGATE_URLS"):
        Settings.load(env={"BATCHGATE_URLS": "http://x"})


def test_a_pipe_given_by_path_is_not_sent_twice(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    body = Body.of_source(fifo, "ndjson")
    assert not body.replayable and body.total_bytes is None
    regular = tmp_path / "in.json"
    regular.write_bytes(b"[1]")
    assert Body.of_source(regular).replayable and Body.of_source(regular).total_bytes == 3
