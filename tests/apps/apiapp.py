"""The functions the OpenAPI conformance run (Schemathesis) drives.

Every function finishes at once and cannot fail on any input the gateway accepts, so a
5xx or a failed job in that run is a bug, never the function's doing.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from batchgate import App

app = App("apiapp")


class Point(TypedDict):
    x: float
    y: float
    label: NotRequired[str | None]


class Placement(TypedDict):
    quadrant: Literal[1, 2, 3, 4] | None
    label: str


@app.function
def echo(payload: Any) -> Any:
    return payload


@app.function
def place(point: Point) -> Placement:
    """A typed body: the gateway refuses anything that is not a Point."""
    x, y = point["x"], point["y"]
    quadrant: Literal[1, 2, 3, 4] | None = None
    if x and y:
        quadrant = (1 if y > 0 else 4) if x > 0 else (2 if y > 0 else 3)
    return {"quadrant": quadrant, "label": point.get("label") or ""}


@app.map(chunk_size=3)
def echo_items(item: Any) -> Any:
    return item


@app.map(chunk_size=4, batched=True)
def kinds(items: list[Any]) -> list[str]:
    return [type(item).__name__ for item in items]
