"""Functions with short time limits, for the Lambda feeder tests.

A feeder hop stops taking tasks once less than the longest function's limit plus a margin
is left, so an app whose longest limit is 2 s lets a hop run with a budget of seconds.
"""

from __future__ import annotations

from typing import Any

from batchgate import App

app = App("lambdaapp")


@app.function(timeout=2)
def echo(payload: Any) -> Any:
    return payload
