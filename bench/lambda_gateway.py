"""What one Lambda invocation of the gateway costs, against the same request on a warm app.

A benchmark, not a test: it records latency figures and never fails on speed. It starts a
private redis-server (state) and moto_server (SQS queue, S3 store) on loopback, writes the
manifest `batchgate aws package` would, and calls `batchgate.aws.gateway_handler` in this
process, one invocation after another as one warm execution environment runs them:

- `healthz`: GET /healthz through the handler (Mangum, backends, nothing stored);
- `submit`: POST /v1/functions/echo with `Prefer: respond-async` through the handler
  (job record in Redis, task in SQS);
- `submit-asgi`: the same POST to the gateway's ASGI app over backends opened once, as
  `batchgate gateway` serves it: the baseline, the request's own work.

    .venv/bin/python bench/lambda_gateway.py --requests 300
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
from roundtrip import STARTUP_S, free_port, redis_server, running

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
TEST_APP = ROOT / "tests" / "apps" / "testapp.py"
REGION = "us-east-1"
URL_HOST = "m7ftjwkx3pbsq4ocbvzhwx2u5e0ldkaq.lambda-url.us-east-1.on.aws"
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/nonexistent/bench/config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/bench/credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextlib.contextmanager
def moto_server(tmp: Path) -> Iterator[str]:
    """A moto_server (SQS, S3) on a free loopback port; yields its endpoint."""
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if binary is None:
        raise RuntimeError("moto_server is not in this venv (pip install -e '.[test]')")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp / "moto.log"
    with running([binary, "-H", "127.0.0.1", "-p", str(port)], log) as proc:
        deadline = time.monotonic() + STARTUP_S
        while True:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(endpoint, timeout=1)
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)  # the port is not open yet: nothing to await
        yield endpoint


class Context:
    """Lambda's context object: 60 s from its creation."""

    def __init__(self) -> None:
        self.function_name = "batchgate-GatewayFunction"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:gw"
        self.aws_request_id = str(uuid.uuid4())
        self._ends_at = time.monotonic() + 60

    def get_remaining_time_in_millis(self) -> int:
        return int((self._ends_at - time.monotonic()) * 1000)


def url_event(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
              ) -> dict[str, Any]:  # fmt: skip
    """A Function URL request (payload format 2.0)."""
    all_headers = {"host": URL_HOST, "x-forwarded-proto": "https", **(headers or {})}
    if body is not None:
        all_headers["content-type"] = "application/json"
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": all_headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": URL_HOST.split(".")[0],
            "domainName": URL_HOST,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "bench",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
        },
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[int(len(ms) * 0.9) - 1], 3),
        "p99_ms": round(ms[max(0, int(len(ms) * 0.99) - 1)], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def time_handler(event_of: Callable[[], dict[str, Any]], expect: int, n: int) -> list[float]:
    from batchgate.aws import gateway_handler

    samples = []
    for _ in range(n):
        event, context = event_of(), Context()
        started = time.perf_counter()
        response = gateway_handler(event, context)
        samples.append(time.perf_counter() - started)
        if response["statusCode"] != expect:
            raise RuntimeError(f"the handler answered {response['statusCode']}: {response}")
    return samples


def time_asgi(n: int) -> list[float]:
    """The same POST on the gateway's ASGI app, backends opened once (the warm baseline)."""
    from batchgate.aws import runtime
    from batchgate.gateway import create_gateway
    from batchgate.jobs import Jobs
    from batchgate.server import open_backends

    async def run() -> list[float]:
        settings = runtime.load_settings()
        async with open_backends(settings) as (queue, state, store):
            jobs = Jobs(runtime.registry(), queue, state, store, settings)
            transport = httpx.ASGITransport(create_gateway(jobs))
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                samples = []
                for _ in range(n):
                    started = time.perf_counter()
                    r = await client.post("/v1/functions/echo", json={"n": 1},
                                          headers={"Prefer": "respond-async"})  # fmt: skip
                    samples.append(time.perf_counter() - started)
                    if r.status_code != 202:
                        raise RuntimeError(f"the app answered {r.status_code}: {r.text}")
                return samples

    return runtime.run(run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per measurement")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    os.environ.update(FAKE_AWS)
    with tempfile.TemporaryDirectory(prefix="bench-lambda-") as tmp_name:
        tmp = Path(tmp_name)
        with redis_server(tmp) as redis_url, moto_server(tmp) as endpoint:
            figures = measure(tmp, endpoint, redis_url, args.requests)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "load_1m": os.getloadavg()[0]}  # fmt: skip
    result = {
        "bench": "lambda_gateway",
        "when": stamp,
        "machine": machine,
        "commit": subprocess.run(git, capture_output=True, text=True).stdout.strip(),
        "requests": args.requests,
        "figures": figures,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"lambda-gateway-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'measurement':<22}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name, fig in figures.items():
        print(f"{name:<22}{fig['p50_ms']:>10}{fig['p90_ms']:>10}{fig['p99_ms']:>10}"
              f"{fig['mean_ms']:>10}")  # fmt: skip
    print(f"written to {out}")
    return 0


def measure(tmp: Path, endpoint: str, redis_url: str, n: int) -> dict[str, dict[str, float]]:
    from batchgate.app import load_app
    from batchgate.aws import runtime
    from batchgate.aws.package import MANIFEST_NAME

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    task_root = tmp / "task"
    task_root.mkdir()
    functions = load_app(f"{TEST_APP}:app").registry().manifest()
    manifest = {"app": f"{TEST_APP}:app", "functions": functions}
    (task_root / MANIFEST_NAME).write_text(json.dumps(manifest))
    os.environ.update({
        "LAMBDA_TASK_ROOT": str(task_root),
        "BATCHGATE_QUEUE": f"sqs://bench?endpoint_url={endpoint}&region={REGION}",
        "BATCHGATE_STATE": redis_url,
        "BATCHGATE_STORE": f"s3://bench/?endpoint_url={endpoint}&region={REGION}",
    })  # fmt: skip
    submit = url_event("POST", "/v1/functions/echo", {"n": 1}, {"prefer": "respond-async"})
    try:
        time_handler(lambda: url_event("GET", "/healthz"), 200, 20)  # warm-up
        return {
            "healthz": summary(time_handler(lambda: url_event("GET", "/healthz"), 200, n)),
            "submit": summary(time_handler(lambda: submit, 202, n)),
            "submit-asgi": summary(time_asgi(n)),
        }
    finally:
        runtime.shutdown()


if __name__ == "__main__":
    sys.exit(main())
