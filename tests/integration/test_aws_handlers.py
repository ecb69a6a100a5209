"""The four Lambda entry points (`batchgate.aws.*_handler`), called as Lambda calls them.

Each test calls a handler in this process with an event shaped as AWS documents it (a
Function URL request, an API Gateway HTTP API or REST API request, an SQS event source
mapping batch, a feeder hop's event, an EventBridge schedule) and a stand-in for Lambda's
context object whose remaining time counts down from a chosen budget. The backends are
real: a redis-server (job state, feeder chains) and a moto_server (SQS queue and DLQ, S3
store). The handlers run on their own event loop and keep their executor processes between
calls, as a warm Lambda environment does; the module's teardown ends them.

The feeder and the controller start hops with Lambda's Invoke API (InvocationType=Event).
Botocore is pointed at `InvokeRecorder` through AWS_ENDPOINT_URL_LAMBDA: a loopback HTTP
server that stands in only for that one API. It records each call and answers 202, as
Lambda answers an asynchronous invoke, and runs nothing. Real Lambda is exercised by a
separate emulator test.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
import pytest
import redis

from batchgate import aws
from batchgate.app import load_app
from batchgate.aws import chains as chain_store
from batchgate.aws import runtime
from batchgate.aws.package import MANIFEST_NAME
from batchgate.errors import ConfigError
from batchgate.redis_db import split_url
from batchgate.store import open_store
from tests.fixtures.redis_server import RedisServer, start_redis_server

APPS = Path(__file__).parents[1] / "apps"
TEST_APP = APPS / "testapp.py"
# Short time limits, so a feeder hop's budget can be seconds (see lambdaapp's docstring).
LAMBDA_APP = APPS / "lambdaapp.py"
REGION = "us-east-1"
ACCOUNT = "123456789012"
URL_ID = "m7ftjwkx3pbsq4ocbvzhwx2u5e0ldkaq"
API_ID = "r3pmxmplak"
FEEDER = "batchgate-FeederFunction-Ab12Cd34Ef56"

T = TypeVar("T")


# --- the Lambda environment ---------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def lambda_environment() -> Iterator[None]:
    """One warm environment for the module: its loop and executors end with it."""
    yield
    runtime.shutdown()


class FakeContext:
    """Lambda's context object: the fields batchgate reads, time counting down from `budget_s`."""

    def __init__(self, budget_s: float, function_name: str = "batchgate-GatewayFunction") -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self.memory_limit_in_mb = 1024
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "2025/01/01/[$LATEST]0123456789abcdef"
        self._ends_at = time.monotonic() + budget_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._ends_at - time.monotonic()) * 1000))


@dataclasses.dataclass(frozen=True)
class Backends:
    queue_url: str
    state_url: str
    store_url: str
    queue_name: str
    task_root: Path


def write_manifest(task_root: Path, app: Path) -> None:
    """`batchgate-lambda.json` as `batchgate aws package` writes it (the app by path here)."""
    task_root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "app": f"{app}:app",
        "batchgate": "0.1.0",
        "functions": load_app(f"{app}:app").registry().manifest(),
    }
    (task_root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.fixture
def backends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqs_url: str, redis_url: str, s3_url: str
) -> Backends:
    """The BATCHGATE_* environment a deployed stack sets, and a task root for testapp."""
    task_root = tmp_path / "task"
    write_manifest(task_root, TEST_APP)
    monkeypatch.setenv("BATCHGATE_QUEUE", sqs_url)
    monkeypatch.setenv("BATCHGATE_STATE", redis_url)
    monkeypatch.setenv("BATCHGATE_STORE", s3_url)
    monkeypatch.setenv("BATCHGATE_WORKERS", "2")
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(task_root))
    return Backends(sqs_url, redis_url, s3_url, urlsplit(sqs_url).netloc, task_root)


def on_loop(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run test set-up on the environment's loop (between invocations, as nothing else can)."""

    async def run() -> T:
        return await coro_fn()

    return runtime.run(run)


# --- the Invoke API stand-in ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Invoke:
    function: str
    invocation_type: str
    payload: Any


class InvokeRecorder:
    """Lambda's Invoke API on loopback: records every call, answers 202, runs nothing."""

    PATH = re.compile(r"/2015-03-31/functions/([^/]+)/invocations")

    def __init__(self) -> None:
        self.calls: list[Invoke] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                match = recorder.PATH.fullmatch(urlsplit(self.path).path)
                if match is None:
                    self._answer(404)
                    return
                invoke = Invoke(
                    unquote(match.group(1)),
                    self.headers.get("X-Amz-Invocation-Type", ""),
                    json.loads(body) if body else None,
                )
                with recorder._lock:
                    recorder.calls.append(invoke)
                self._answer(202)  # an accepted asynchronous invoke: empty body

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def taken(self) -> list[Invoke]:
        """The calls recorded since the last `taken`."""
        with self._lock:
            calls, self.calls = self.calls, []
        return calls

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, moto_server: str) -> Iterator[InvokeRecorder]:
    rec = InvokeRecorder()
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", rec.url)
    try:
        yield rec
    finally:
        rec.close()


# --- HTTP events ------------------------------------------------------------------------------


def _body_fields(body: Any) -> dict[str, Any]:
    if body is None:
        return {"body": None, "isBase64Encoded": False}
    return {"body": json.dumps(body), "isBase64Encoded": False}


def _base_headers(host: str, body: Any, headers: dict[str, str] | None) -> dict[str, str]:
    base = {
        "host": host,
        "user-agent": "pytest",
        "accept": "*/*",
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
        "x-amzn-trace-id": "Root=1-65a1b2c3-0123456789abcdef01234567",
    }
    if body is not None:
        base["content-type"] = "application/json"
    return {**base, **(headers or {})}


def _v2_event(
    domain: str, api_id: str, method: str, path: str, body: Any, headers: dict[str, str] | None
) -> dict[str, Any]:
    """Payload format 2.0: a Function URL's or an API Gateway HTTP API's ($default stage)."""
    path, _, query = path.partition("?")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": _base_headers(domain, body, headers),
        "requestContext": {
            "accountId": "anonymous" if ".lambda-url." in domain else ACCOUNT,
            "apiId": api_id,
            "domainName": domain,
            "domainPrefix": api_id,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "pytest",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Jan/2025:00:00:00 +0000",
            "timeEpoch": 1735689600000,
        },
        **_body_fields(body),
    }
    if query:
        event["queryStringParameters"] = dict(parse_qsl(query))
    return event


def function_url_event(
    method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    return _v2_event(f"{URL_ID}.lambda-url.{REGION}.on.aws", URL_ID, method, path, body, headers)


def http_api_event(
    method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    domain = f"{API_ID}.execute-api.{REGION}.amazonaws.com"
    return _v2_event(domain, API_ID, method, path, body, headers)


def rest_api_event(
    method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Payload format 1.0: an API Gateway REST API proxy integration (stage `prod`)."""
    path, _, query = path.partition("?")
    domain = f"{API_ID}.execute-api.{REGION}.amazonaws.com"
    all_headers = _base_headers(domain, body, headers)
    params = dict(parse_qsl(query)) or None
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {name: [value] for name, value in all_headers.items()},
        "queryStringParameters": params,
        "multiValueQueryStringParameters": (
            {k: [v] for k, v in params.items()} if params else None
        ),
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": API_ID,
            "domainName": domain,
            "domainPrefix": API_ID,
            "extendedRequestId": "EXAMPLEa1b2c3=",
            "httpMethod": method,
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "pytest"},
            "path": f"/prod{path}",
            "protocol": "HTTP/1.1",
            "requestId": str(uuid.uuid4()),
            "requestTime": "01/Jan/2025:00:00:00 +0000",
            "requestTimeEpoch": 1735689600000,
            "resourceId": "abc123",
            "resourcePath": "/{proxy+}",
            "stage": "prod",
        },
        **_body_fields(body),
    }


def body_of(response: dict[str, Any]) -> Any:
    raw = response.get("body") or ""
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    return json.loads(raw)


def call_gateway(event: dict[str, Any], budget_s: float = 60.0) -> dict[str, Any]:
    return aws.gateway_handler(event, FakeContext(budget_s))


def submit_async(function: str, payload: Any) -> str:
    """A job queued through the gateway with `Prefer: respond-async`; its id."""
    event = function_url_event(
        "POST", f"/v1/functions/{function}", payload, {"prefer": "respond-async"}
    )
    response = call_gateway(event)
    assert response["statusCode"] == 202, response
    job_id: str = response["headers"]["job-id"]
    return job_id


def job_status(job_id: str) -> dict[str, Any]:
    response = call_gateway(function_url_event("GET", f"/v1/jobs/{job_id}"))
    assert response["statusCode"] == 200, response
    status: dict[str, Any] = body_of(response)
    return status


# --- SQS: real messages as an event source mapping hands them over --------------------------


def sqs_client(endpoint: str) -> Any:
    return boto3.client("sqs", endpoint_url=endpoint, region_name=REGION)


def queue_attributes(sqs: Any, url: str, *names: str) -> dict[str, str]:
    attributes: dict[str, str] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(names))[
        "Attributes"
    ]
    return attributes


def messages_held(sqs: Any, url: str) -> int:
    """Every message of the queue: ready, in flight and delayed."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    return sum(int(v) for v in queue_attributes(sqs, url, *names).values())


def receive(sqs: Any, url: str, count: int, wait_s: int = 5) -> list[dict[str, Any]]:
    """`count` messages, long-polling for each batch (the queue's own visibility timeout)."""
    got: list[dict[str, Any]] = []
    for _ in range(count * 2):
        response = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=min(10, count - len(got)),
            WaitTimeSeconds=wait_s,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        )
        got += response.get("Messages", [])
        if len(got) >= count:
            break
    assert len(got) == count, f"expected {count} messages, got {len(got)}"
    return got


def lambda_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """A ReceiveMessage message as Lambda's SQS event source mapping passes it on."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message["Attributes"],
        "messageAttributes": {
            name: {
                "stringValue": value["StringValue"],
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value["DataType"],
            }
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


class SqsBatch:
    """Receives the queue's messages and turns them into an SQS event, keyed by job id."""

    def __init__(self, backends: Backends, moto_server: str) -> None:
        self.sqs = sqs_client(moto_server)
        self.url = self.sqs.get_queue_url(QueueName=backends.queue_name)["QueueUrl"]
        self.dlq_url = self.sqs.get_queue_url(QueueName=f"{backends.queue_name}-dlq")["QueueUrl"]
        self.arn = queue_attributes(self.sqs, self.url, "QueueArn")["QueueArn"]

    def event(self, count: int) -> tuple[dict[str, Any], dict[str, str]]:
        """(an SQS event of `count` messages, {job id or raw body: SQS message id})."""
        messages = receive(self.sqs, self.url, count)
        ids = {}
        for message in messages:
            try:
                key = json.loads(message["Body"])["job"]
            except (ValueError, KeyError, TypeError):
                key = message["Body"]
            ids[key] = message["MessageId"]
        return {"Records": [lambda_record(m, self.arn) for m in messages]}, ids

    def dead_letters(self, count: int) -> list[dict[str, Any]]:
        return receive(self.sqs, self.dlq_url, count)


# --- the gateway ------------------------------------------------------------------------------


@contextlib.contextmanager
def worker_process(app: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `batchgate worker APP` on the same BATCHGATE_* backends as the handlers."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchgate", "worker", str(app)],
            env=dict(os.environ),
            stdout=out,
            stderr=out,
        )
    try:
        yield proc
    finally:
        # SIGKILL: a SIGTERM'd worker waits out its SQS long poll (up to 20 s) to release
        # what it might bring; this test is done with the queue. Executors die with it.
        proc.kill()
        proc.wait()


def test_function_url_request_blocks_until_a_worker_finishes(
    backends: Backends, tmp_path: Path
) -> None:
    payload = {"hello": "lambda", "n": [1, 2, 3]}
    event = function_url_event("POST", "/v1/functions/echo", payload)
    context = FakeContext(60.0)
    with worker_process(TEST_APP, tmp_path / "worker.log") as worker:
        response = aws.gateway_handler(event, context)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
    assert response["statusCode"] == 200, response
    assert response["headers"]["content-type"] == "application/json"
    assert response["isBase64Encoded"] is False
    assert json.loads(response["body"]) == payload
    job_id = response["headers"]["job-id"]
    assert job_status(job_id)["status"] == "succeeded"


@pytest.mark.parametrize("make_event", [http_api_event, rest_api_event])
def test_healthz_through_api_gateway(
    backends: Backends, make_event: Callable[..., dict[str, Any]]
) -> None:
    response = call_gateway(make_event("GET", "/healthz"))
    assert response["statusCode"] == 200, response
    assert body_of(response) == {"status": "ok"}


def test_an_http_api_on_a_named_stage_routes_without_the_stage(backends: Backends) -> None:
    event = http_api_event("GET", "/prod/healthz")
    event["requestContext"]["stage"] = "prod"  # rawPath carries a named stage
    response = call_gateway(event)
    assert response["statusCode"] == 200, response
    assert body_of(response) == {"status": "ok"}


@pytest.mark.parametrize("make_event", [function_url_event, http_api_event, rest_api_event])
def test_an_unknown_function_is_a_404_problem(
    backends: Backends, make_event: Callable[..., dict[str, Any]]
) -> None:
    response = call_gateway(make_event("POST", "/v1/functions/no_such_function", {"x": 1}))
    assert response["statusCode"] == 404, response
    assert response["headers"]["content-type"].startswith("application/problem+json")
    assert response["isBase64Encoded"] is False
    problem = body_of(response)
    assert problem["status"] == 404
    assert "no_such_function" in problem["detail"]


def test_gateway_answers_202_before_the_invocation_ends(backends: Backends) -> None:
    """No worker runs: the request waits the remaining time less 3 s, then gets 202."""
    context = FakeContext(5.0)
    event = function_url_event("POST", "/v1/functions/echo", {"never": "run"})
    response = aws.gateway_handler(event, context)
    assert context.get_remaining_time_in_millis() > 0
    assert response["statusCode"] == 202, response
    job_id = response["headers"]["job-id"]
    assert response["headers"]["location"] == f"/v1/jobs/{job_id}"
    assert body_of(response)["status"] == "queued"
    # the job goes on: a later request (through API Gateway this time) finds it queued
    later = call_gateway(rest_api_event("GET", f"/v1/jobs/{job_id}"))
    assert later["statusCode"] == 200
    assert body_of(later)["status"] == "queued"


def test_warm_invocations_reuse_the_backends_and_survive_lost_connections(
    backends: Backends, redis_server: RedisServer
) -> None:
    first = submit_async("echo", {"warm": 0})  # opens the backends
    assert job_status(first)["status"] == "queued"
    with redis.Redis(port=redis_server.port) as admin:
        before = admin.info("stats")["total_connections_received"]
        jobs = [submit_async("echo", {"warm": n}) for n in range(1, 6)]
        assert [job_status(j)["status"] for j in jobs] == ["queued"] * 5
        assert admin.info("stats")["total_connections_received"] == before

        # A long freeze can outlast connections: the next invocation makes them again.
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        admin.client_kill_filter(_type="pubsub", skipme=True)
    assert job_status(first)["status"] == "queued"
    assert job_status(submit_async("echo", {"warm": 6}))["status"] == "queued"


def test_a_backend_error_drops_the_warm_backends(
    backends: Backends, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = start_redis_server(tmp_path / "state-redis")
    try:
        monkeypatch.setenv("BATCHGATE_STATE", server.url)
        job_id = submit_async("echo", {"n": 1})
        server.stop()
        response = call_gateway(function_url_event("GET", f"/v1/jobs/{job_id}"))
        assert response["statusCode"] == 503, response
        assert body_of(response)["type"].endswith("backend-unavailable")
        assert runtime._backends is None  # the next invocation opens them afresh
        server.start()
        assert call_gateway(function_url_event("GET", "/healthz"))["statusCode"] == 200
        assert runtime._backends is not None
    finally:
        server.stop()


# --- the SQS worker ---------------------------------------------------------------------------


def test_sqs_batch_reports_exactly_the_messages_left_in_the_queue(
    backends: Backends, moto_server: str
) -> None:
    ok_job = submit_async("echo", {"n": 1})
    failing_job = submit_async("always_fails", "boom")
    batch = SqsBatch(backends, moto_server)
    batch.sqs.send_message(QueueUrl=batch.url, MessageBody="not a task")
    event, ids = batch.event(3)

    context = FakeContext(30.0, "batchgate-WorkerFunction")
    result = aws.sqs_handler(event, context)

    # only the retried message: the settled ones Lambda may delete (they are gone already)
    assert result == {"batchItemFailures": [{"itemIdentifier": ids[failing_job]}]}
    assert job_status(ok_job)["status"] == "succeeded"
    answer = call_gateway(function_url_event("GET", f"/v1/jobs/{ok_job}/result"))
    assert body_of(answer) == {"n": 1}
    failing = job_status(failing_job)
    assert (failing["status"], failing["attempts"]) == ("queued", 1)
    assert failing["error"]["type"] == "ValueError"
    # the retried message comes back after its backoff, as attempt 2; nothing else is left
    [again] = receive(batch.sqs, batch.url, 1, wait_s=10)
    assert json.loads(again["Body"])["job"] == failing_job
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"
    assert messages_held(batch.sqs, batch.url) == 1
    # the undecodable message was dead-lettered with its reason
    [dead] = batch.dead_letters(1)
    assert dead["Body"] == "not a task"
    assert "UndecodableTask" in dead["MessageAttributes"]["bg-reason"]["StringValue"]


def test_sqs_batch_of_map_chunks(backends: Backends, moto_server: str) -> None:
    """Chunk tasks settle through the same log: acked chunks are not reported."""
    job = submit_async("square_batched", list(range(10)))  # chunks of 7: two tasks
    batch = SqsBatch(backends, moto_server)
    event, _ = batch.event(2)
    result = aws.sqs_handler(event, FakeContext(30.0, "batchgate-WorkerFunction"))
    assert result == {"batchItemFailures": []}
    assert job_status(job)["status"] == "succeeded"
    answer = call_gateway(function_url_event("GET", f"/v1/jobs/{job}/result"))
    assert body_of(answer) == [n * n for n in range(10)]
    assert messages_held(batch.sqs, batch.url) == 0


def test_sqs_worker_cuts_time_limits_to_the_invocation(
    backends: Backends, moto_server: str, tmp_path: Path
) -> None:
    """Both functions may run 60 s; the invocation has 8 s. Each attempt fails with a
    TimeoutError in time to be committed: `pid_then_sleep` (3 attempts) is retried and
    reported, `sleep` (1 attempt) fails and is dead-lettered."""
    retried_job = submit_async("pid_then_sleep", {"pid_file": str(tmp_path / "pid"), "sleep": 30})
    failed_job = submit_async("sleep", {"seconds": 30})
    batch = SqsBatch(backends, moto_server)
    event, ids = batch.event(2)

    context = FakeContext(8.0, "batchgate-WorkerFunction")
    result = aws.sqs_handler(event, context)
    assert context.get_remaining_time_in_millis() > 0

    assert result == {"batchItemFailures": [{"itemIdentifier": ids[retried_job]}]}
    retried = job_status(retried_job)
    assert (retried["status"], retried["attempts"]) == ("queued", 1)
    failed = job_status(failed_job)
    assert failed["status"] == "failed"
    for job in (retried, failed):
        assert job["error"]["type"] == "TimeoutError"
        limit = re.search(r"exceeded its ([\d.e-]+) s limit", job["error"]["message"])
        assert limit is not None, job["error"]
        assert float(limit.group(1)) < 8.0  # cut from the function's 60 s
    [dead] = batch.dead_letters(1)
    assert json.loads(dead["Body"])["job"] == failed_job


# --- the feeder -------------------------------------------------------------------------------


@pytest.fixture
def feeder_backends(backends: Backends) -> Backends:
    """The same backends, with lambdaapp (2 s limits) in the task root."""
    write_manifest(backends.task_root, LAMBDA_APP)
    return backends


def start_chains(backends: Backends, count: int) -> list[str]:
    async def start() -> list[str]:
        chains = chain_store.Chains.open(backends.state_url)
        try:
            return [chain.token for chain in await chains.start(count)]
        finally:
            await chains.aclose()

    return on_loop(start)


def live_chains(backends: Backends) -> list[chain_store.Chain]:
    async def alive() -> list[chain_store.Chain]:
        chains = chain_store.Chains.open(backends.state_url)
        try:
            live, _ = await chains.alive()
            return live
        finally:
            await chains.aclose()

    return on_loop(alive)


def retire_chains(backends: Backends, tokens: list[str]) -> None:
    async def retire() -> None:
        chains = chain_store.Chains.open(backends.state_url)
        try:
            await chains.retire(tokens)
        finally:
            await chains.aclose()

    on_loop(retire)


def set_kill_switch(backends: Backends, on: bool) -> None:
    """Feeding on (the store object `control/keep-feeding` exists) or off."""

    async def switch() -> None:
        store = await open_store(backends.store_url)
        try:
            await chain_store.set_keep_feeding(store, on)
        finally:
            await store.aclose()

    on_loop(switch)


def test_feeder_hop_runs_tasks_and_invokes_the_next_hop(
    feeder_backends: Backends, recorder: InvokeRecorder
) -> None:
    jobs = [submit_async("echo", {"n": n}) for n in range(3)]
    set_kill_switch(feeder_backends, True)
    [token] = start_chains(feeder_backends, 1)

    # It stops taking tasks when 2 s (lambdaapp's longest limit) + 5 s are left.
    context = FakeContext(12.0, FEEDER)
    result = aws.feeder_handler({"chain": token, "hop": 0}, context)
    assert context.get_remaining_time_in_millis() > 0

    assert result == {"chain": token, "hop": 0, "next": True, "reason": "time"}
    assert [job_status(job)["status"] for job in jobs] == ["succeeded"] * 3
    assert recorder.taken() == [Invoke(FEEDER, "Event", {"chain": token, "hop": 1})]
    [chain] = live_chains(feeder_backends)
    assert (chain.token, chain.hop) == (token, 0)


def test_feeder_hop_ends_the_chain_when_the_kill_switch_is_off(
    feeder_backends: Backends, recorder: InvokeRecorder
) -> None:
    job = submit_async("echo", {"n": 1})
    [token] = start_chains(feeder_backends, 1)  # the switch object was never written
    result = aws.feeder_handler({"chain": token, "hop": 4}, FakeContext(12.0, FEEDER))
    assert result == {"chain": token, "hop": 4, "next": False, "reason": "kill switch off"}
    assert recorder.taken() == []
    assert live_chains(feeder_backends) == []  # retired: the controller starts no hop for it
    assert job_status(job)["status"] == "queued"  # it took no task


def test_feeder_hop_of_a_retired_chain_ends_it(
    feeder_backends: Backends, recorder: InvokeRecorder
) -> None:
    set_kill_switch(feeder_backends, True)
    [token] = start_chains(feeder_backends, 1)
    retire_chains(feeder_backends, [token])
    result = aws.feeder_handler({"chain": token, "hop": 2}, FakeContext(12.0, FEEDER))
    assert result == {"chain": token, "hop": 2, "next": False, "reason": "retired"}
    assert recorder.taken() == []
    assert live_chains(feeder_backends) == []


@pytest.mark.parametrize("event", [{}, {"hop": 1}, {"chain": "tok", "hop": -1}, ["chain"]])
def test_feeder_refuses_a_malformed_event(
    feeder_backends: Backends, recorder: InvokeRecorder, event: Any
) -> None:
    with pytest.raises(ConfigError):
        aws.feeder_handler(event, FakeContext(12.0, FEEDER))
    assert recorder.taken() == []


# --- the controller ---------------------------------------------------------------------------


def scheduled_event() -> dict[str, Any]:
    """What an EventBridge `rate(1 minute)` rule sends."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": "2025-01-01T00:00:00Z",
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/batchgate-EveryMinute"],
        "detail": {},
    }


def run_controller() -> dict[str, Any]:
    return aws.controller_handler(scheduled_event(), FakeContext(60.0, "batchgate-Controller"))


def test_controller_scales_chains_with_the_queue(
    backends: Backends,
    recorder: InvokeRecorder,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: str,
    redis_server: RedisServer,
) -> None:
    monkeypatch.setenv("FEEDER_FUNCTION_NAME", FEEDER)
    monkeypatch.setenv("FEEDER_MAX_CHAINS", "3")
    monkeypatch.setenv("FEEDER_TASKS_PER_CHAIN", "2")
    for n in range(5):
        submit_async("echo", {"n": n})
    set_kill_switch(backends, True)

    # 5 tasks at 2 a chain: 3 chains, each started with a hop-0 event
    report = run_controller()
    assert report == {
        "demand": 5, "live": 0, "dead": 0, "target": 3, "started": 3, "retired": 0
    }  # fmt: skip
    invokes = recorder.taken()
    assert {(i.function, i.invocation_type, i.payload["hop"]) for i in invokes} == {
        (FEEDER, "Event", 0)
    }
    tokens = [i.payload["chain"] for i in invokes]
    assert len(set(tokens)) == 3
    assert {c.token for c in live_chains(backends)} == set(tokens)

    # a chain whose token expired (its hop crashed) is dead, and replaced in the same run
    _, prefix, _ = split_url(backends.state_url, frozenset({"ttl"}))
    with redis.Redis(port=redis_server.port, protocol=2) as admin:
        assert admin.delete(f"{prefix}chain:{tokens[0]}") == 1
    report = run_controller()
    assert (report["live"], report["dead"], report["target"], report["started"]) == (2, 1, 3, 1)
    [replacement] = recorder.taken()
    assert replacement.payload["hop"] == 0 and replacement.payload["chain"] not in tokens
    live = {c.token for c in live_chains(backends)}
    assert live == {*tokens[1:], replacement.payload["chain"]}

    # an empty queue: down by one chain a run
    sqs = sqs_client(moto_server)
    sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=backends.queue_name)["QueueUrl"])
    report = run_controller()
    assert (report["demand"], report["live"], report["target"], report["retired"]) == (0, 3, 2, 1)
    assert report["started"] == 0
    assert len(live_chains(backends)) == 2
    assert recorder.taken() == []

    # kill switch off: every chain retired at once, none started
    set_kill_switch(backends, False)
    report = run_controller()
    assert (report["target"], report["retired"], report["started"]) == (0, 2, 0)
    assert live_chains(backends) == []
    assert recorder.taken() == []


def test_controller_needs_its_configuration(backends: Backends, recorder: InvokeRecorder) -> None:
    with pytest.raises(ConfigError, match="FEEDER_FUNCTION_NAME"):
        run_controller()
    assert recorder.taken() == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("request_kind", ["events", "submit"])
def test_event_streams_end_before_the_invocation_does(
    backends: Backends, request_kind: str
) -> None:
    """Lambda buffers the reply: an event stream of a job that goes on is cut off in time
    (an EventSource reconnects with Last-Event-ID), never held until Lambda kills it."""
    context = FakeContext(5.0)
    sse = {"accept": "text/event-stream"}
    if request_kind == "events":
        job_id = submit_async("echo", {"n": 1})
        event = function_url_event("GET", f"/v1/jobs/{job_id}/events", headers=sse)
    else:
        event = function_url_event("POST", "/v1/functions/echo", {"n": 1}, sse)
    response = aws.gateway_handler(event, context)
    assert context.get_remaining_time_in_millis() > 0
    assert response["statusCode"] == 200, response
    assert response["headers"]["content-type"].startswith("text/event-stream")
