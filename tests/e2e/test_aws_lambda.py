"""batchgate on AWS Lambda, end to end, on a local emulator (ministack) without Docker.

The test builds the real deployment zip (`batchgate aws package`), writes the real SAM
template (`batchgate aws template`), deploys it through the emulator's CloudFormation, and
talks to the gateway's Function URL over HTTP, as a client of a real stack would. The
emulator runs the handlers as Lambda does: the gateway per request, the workers from an
SQS event source mapping (with partial batch failures) or as feeder chains invoking
themselves with InvocationType=Event. ElastiCache is not emulated: job state is a local
redis-server, passed as the template's RedisUrl.

What the emulator's CloudFormation does not apply is set through the Lambda API after the
deploy: the feeder's `RecursiveLoop: Allow` (PutFunctionRecursionConfig; without it the
emulator, like Lambda, stops a chain after 16 hops) and the event source mapping's numbers
(it keeps Number parameters as strings). The controller's schedule is disabled so that
the test alone decides when the controller runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchgate.app import load_app
from batchgate.aws.chains import Chains
from batchgate.aws.template import TemplateOptions, build_template
from tests.fixtures.ministack import REGION, MiniStack
from tests.fixtures.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).parents[2]
APP = ROOT / "tests" / "apps" / "lambda_e2e.py"
CODE_BUCKET = "deploy-artifacts"
CODE_KEY = "batchgate-lambda.zip"
API_KEY = "e2e-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# The gateway's timeout: BATCHGATE_MAX_WAIT is 20 s less, so a 13 s job outlasts it.
GATEWAY_TIMEOUT_S = 30
# A feeder hop stops taking tasks when the longest limit (15 s) + 5 s is left: hops of 10 s.
FEEDER_TIMEOUT_S = 30
WAIT_S = 120.0


@pytest.fixture(scope="module")
def deployed_code(ministack: MiniStack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The app's deployment zip, built for the emulator's Python and uploaded to its S3."""
    zip_path = tmp_path_factory.mktemp("package") / CODE_KEY
    command = [
        sys.executable, "-m", "batchgate", "aws", "package", str(APP), "-o", str(zip_path),
        "-c", str(ROOT / "constraints.txt"), "--python-version", ministack.python_version,
    ]  # fmt: skip
    built = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    assert built.returncode == 0, built.stderr
    s3 = ministack.client("s3")
    s3.create_bucket(Bucket=CODE_BUCKET)
    s3.upload_file(str(zip_path), CODE_BUCKET, CODE_KEY)
    return f"s3://{CODE_BUCKET}/{CODE_KEY}"


class Stack:
    """A deployed batchgate stack: its outputs and an HTTP client for its Function URL."""

    def __init__(self, ministack: MiniStack, name: str, outputs: dict[str, str]) -> None:
        self.ministack = ministack
        self.name = name
        self.outputs = outputs
        self.http = httpx.Client(
            base_url=ministack.function_url(outputs["GatewayUrl"]), headers=AUTH, timeout=WAIT_S
        )

    @property
    def store_url(self) -> str:
        return (
            f"s3://{self.outputs['BucketName']}?region={REGION}"
            f"&endpoint_url={self.ministack.endpoint}"
        )

    def function_name(self, logical_id: str) -> str:
        return self.ministack.resource_id(self.name, logical_id)

    def result_of(self, job_id: str) -> httpx.Response:
        """GET the job's result, waiting as long as the gateway lets a request wait."""
        deadline = time.monotonic() + WAIT_S
        while True:
            response = self.http.get(f"/v1/jobs/{job_id}/result", params={"wait": 60})
            if response.status_code != 202 or time.monotonic() > deadline:
                return response


def deploy(
    ministack: MiniStack, code_uri: str, redis: RedisServer, workers: str, **options: Any
) -> Iterator[Stack]:
    name = f"bg-{workers}-{uuid.uuid4().hex[:8]}"
    redis_url = f"{redis.url}?prefix={name}:"
    template = build_template(
        load_app(str(APP)).registry(),
        TemplateOptions(
            workers=workers,  # type: ignore[arg-type]
            redis_url=redis_url,
            public_url=True,
            code_uri=code_uri,
            gateway_timeout_s=GATEWAY_TIMEOUT_S,
            app_name=name,
            **options,
        ),
    )
    parameters = {"ApiKeys": API_KEY, "ResultRetentionDays": "1"}
    if workers == "feeder":
        parameters |= {"MaxChains": "3", "MinChains": "0", "TasksPerChain": "2"}
    stack = Stack(ministack, name, ministack.create_stack(name, template, parameters))
    try:
        yield stack
    finally:
        stack.http.close()


@pytest.fixture(scope="module")
def esm_stack(
    ministack: MiniStack, deployed_code: str, redis_server: RedisServer
) -> Iterator[Stack]:
    for stack in deploy(ministack, deployed_code, redis_server, "esm"):
        # The emulator's CloudFormation passes the mapping's Number parameters on as
        # strings, which its poller cannot compare; CloudFormation makes them integers.
        mapping = stack.function_name("WorkerEventSource")
        stack.ministack.client("lambda").update_event_source_mapping(
            UUID=mapping,
            BatchSize=2,
            MaximumBatchingWindowInSeconds=0,
            ScalingConfig={"MaximumConcurrency": 4},
        )
        yield stack


@pytest.fixture(scope="module")
def feeder_stack(
    ministack: MiniStack, deployed_code: str, redis_server: RedisServer
) -> Iterator[Stack]:
    for stack in deploy(
        ministack, deployed_code, redis_server, "feeder", worker_timeout_s=FEEDER_TIMEOUT_S
    ):
        lam = ministack.client("lambda")
        feeder = stack.outputs["FeederFunctionName"]
        lam.put_function_recursion_config(FunctionName=feeder, RecursiveLoop="Allow")
        rule = stack.function_name("ControllerFunctionEveryMinute")
        ministack.client("events").disable_rule(Name=rule)
        yield stack


def test_esm_workers_answer_the_blocking_post(esm_stack: Stack, tmp_path: Path) -> None:
    http = esm_stack.http
    # The functions' cold starts can outlast one request's wait: a first job warms them.
    warm = http.post("/v1/functions/echo", json="warm", headers={"Prefer": "respond-async"})
    assert esm_stack.result_of(warm.headers["Job-Id"]).json() == "warm"

    r = http.post("/v1/functions/echo", json={"hello": ["lambda", 1]})
    assert r.status_code == 200, r.text
    assert r.json() == {"hello": ["lambda", 1]}

    r = http.post("/v1/functions/square", json=list(range(25)))
    assert r.status_code == 200, r.text
    assert r.json() == [x * x for x in range(25)]

    # Attempt 1 fails: the worker reports the message in batchItemFailures, and only the
    # retry (a new delivery from the event source) can succeed.
    r = http.post("/v1/functions/fails_once", json={"marker": str(tmp_path / "failed")})
    assert r.status_code == 200, r.text
    assert r.json() == "worked"
    status = http.get(f"/v1/jobs/{r.headers['Job-Id']}").json()
    assert status["attempts"] == 2

    r = http.post("/v1/functions/always_fails", json=7)
    assert r.status_code == 500, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("job-failed")

    r = httpx.post(f"{http.base_url}v1/functions/echo", json=1)  # no API key
    assert r.status_code == 401


def test_gateway_answers_202_before_its_time_limit(esm_stack: Stack) -> None:
    r = esm_stack.http.post("/v1/functions/sleep", json={"seconds": 13})
    assert r.status_code == 202, r.text  # BATCHGATE_MAX_WAIT is 10 s: never the URL's 502/504
    assert r.headers["Location"] == f"/v1/jobs/{r.headers['Job-Id']}"
    result = esm_stack.result_of(r.headers["Job-Id"])
    assert result.status_code == 200, result.text
    assert result.json() == 13


def _live_chains(stack: Stack, redis: RedisServer) -> list[Any]:
    import asyncio

    async def read() -> list[Any]:
        chains = Chains.open(f"{redis.url}?prefix={stack.name}:")
        try:
            live, _ = await chains.alive()
            return live
        finally:
            await chains.aclose()

    return asyncio.run(read())


def _wait_for(what: str, check: Any, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _feeding(stack: Stack, switch: str) -> str:
    command = [sys.executable, "-m", "batchgate", "aws", "feeding", switch]
    command += ["--store", stack.store_url]
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    env = {**os.environ, **credentials}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _run_controller(stack: Stack) -> dict[str, Any]:
    lam = stack.ministack.client("lambda")
    answer = lam.invoke(FunctionName=stack.function_name("ControllerFunction"), Payload=b"{}")
    payload = json.loads(answer["Payload"].read())
    assert "FunctionError" not in answer, payload
    return dict(payload)


def test_feeder_chains_grow_run_reinvoke_and_stop(
    feeder_stack: Stack, redis_server: RedisServer
) -> None:
    http = feeder_stack.http
    # A backlog before any chain runs: 12 queued jobs.
    backlog = [
        http.post("/v1/functions/sleep", json={"seconds": 1}, headers={"Prefer": "respond-async"})
        for _ in range(12)
    ]
    assert all(r.status_code == 202 for r in backlog)

    assert _feeding(feeder_stack, "status") == "feeding is off"
    off = _run_controller(feeder_stack)
    assert off["target"] == 0 and off["started"] == 0  # the kill switch is off

    assert _feeding(feeder_stack, "on") == "feeding is on"
    grown = _run_controller(feeder_stack)
    assert grown["demand"] >= 12
    assert grown["target"] == 3 and grown["started"] == 3  # 12 tasks / 2 per chain, max 3

    # The chains drain the backlog (their cold starts can outlast one request's wait, so
    # the results are polled), then answer a blocking POST within it.
    for queued in backlog:
        assert feeder_stack.result_of(queued.headers["Job-Id"]).json() == 1
    r = http.post("/v1/functions/echo", json={"via": "feeder"})
    assert r.status_code == 200, r.text
    assert r.json() == {"via": "feeder"}

    # Each hop stops with time to spare and invokes the next one itself.
    _wait_for(
        "a chain's second hop",
        lambda: any(c.hop >= 2 for c in _live_chains(feeder_stack, redis_server)),
    )
    steady = _run_controller(feeder_stack)
    assert steady["live"] == 3 and steady["dead"] == 0
    assert steady["target"] == 2  # an empty queue: down one chain a run

    # The kill switch ends every chain at its next check; the controller starts none.
    assert _feeding(feeder_stack, "off") == "feeding is off"
    _wait_for("every chain to end", lambda: not _live_chains(feeder_stack, redis_server))
    after = _run_controller(feeder_stack)
    assert after["live"] == 0 and after["started"] == 0
