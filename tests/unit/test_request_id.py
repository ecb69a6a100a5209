"""The gateway's outermost layer: request ids, and a problem document for every crash."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from batchgate.context import accept_request_id, current_request_id
from batchgate.gateway.requestid import RequestIdMiddleware
from batchgate.models import Task


async def _echo_id(request: Request) -> Response:
    return JSONResponse({"request_id": current_request_id()})


async def _crash(request: Request) -> Response:
    raise RuntimeError("boom at /srv/secret/path")


pytestmark = pytest.mark.anyio


async def _get(path: str, headers: dict[str, str | bytes] | None = None) -> httpx.Response:
    app = Starlette(
        routes=[Route("/id", _echo_id), Route("/crash", _crash)],
        middleware=[Middleware(RequestIdMiddleware)],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers=headers)


async def test_a_client_request_id_is_kept_and_returned() -> None:
    response = await _get("/id", headers={"X-Request-Id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json() == {"request_id": "abc-123"}


@pytest.mark.parametrize("presented", [None, "", "x" * 129, "bad id", "é".encode()])
async def test_a_missing_or_unusable_request_id_is_replaced(presented: str | bytes | None) -> None:
    headers: dict[str, str | bytes] = {} if presented is None else {"X-Request-Id": presented}
    response = await _get("/id", headers=headers)
    rid = response.headers["x-request-id"]
    assert rid != presented and len(rid) == 16
    assert response.json() == {"request_id": rid}


async def test_an_unexpected_exception_is_a_problem_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, "batchgate.gateway"):
        response = await _get("/crash", headers={"X-Request-Id": "r-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/internal-error")
    assert body["request_id"] == "r-1"
    assert "/srv/secret" not in response.text  # the exception's text stays in the log
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.__dict__["request_id"] == "r-1"
    assert "boom" in str(record.exc_info[1])


async def test_accept_request_id() -> None:
    assert accept_request_id("req-1.2:3") == "req-1.2:3"
    assert accept_request_id("a b") != "a b"


async def test_the_task_envelope_carries_the_request_id() -> None:
    task = Task("job", "fn", payload=b"{}", request_id="r-9")
    assert Task.decode(task.encode()).request_id == "r-9"
    assert Task.decode(Task("job", "fn", payload=b"1").encode()).request_id is None
