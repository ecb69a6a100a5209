"""Functions the AWS Lambda end-to-end test deploys (tests/e2e/test_aws_lambda.py).

Short time limits keep the worker Lambdas' timeouts, and so the feeder's hops, short.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from batchgate import App

app = App("lambda_e2e")


@app.function(timeout=5)
def echo(payload: Any) -> Any:
    return payload


@app.function(timeout=15, retries=0)
def sleep(payload: dict[str, float]) -> float:
    time.sleep(payload["seconds"])
    return payload["seconds"]


@app.function(timeout=5, retries=1)
def fails_once(payload: dict[str, str]) -> str:
    """Fails on its first call (remembered in a file), so only a retry can succeed."""
    marker = Path(payload["marker"])
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError("first call fails")
    return "worked"


@app.function(timeout=5, retries=1)
def always_fails(payload: Any) -> Any:
    raise ValueError(f"cannot handle {payload!r}")


@app.map(chunk_size=10, timeout=5)
def square(x: int) -> int:
    return x * x
