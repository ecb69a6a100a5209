"""The `echo` baseline: a bare Starlette app whose one POST route returns the body.

Served by `bench/roundtrip.py` with the uvicorn settings `batchgate serve` uses, so the
difference to batchgate is batchgate itself, not the HTTP stack.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def echo(request: Request) -> Response:
    """Answer with the request body, as JSON."""
    return Response(await request.body(), media_type="application/json")


app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
