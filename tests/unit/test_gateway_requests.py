"""What the gateway refuses before anything is stored: bodies that break the function's
type, malformed `Prefer`, bad `Idempotency-Key`, an unknown `redirect` spelling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from batchgate.app import load_app
from batchgate.gateway.app import create_gateway
from batchgate.jobs import Jobs
from batchgate.queue import open_queue
from batchgate.settings import Settings
from batchgate.state import open_state
from batchgate.store import open_store

pytestmark = pytest.mark.anyio

API_APP = str(Path(__file__).parents[1] / "apps" / "apiapp.py")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The gateway over memory backends and no worker: accepted jobs stay queued."""
    jobs = Jobs(
        load_app(API_APP).registry(),
        await open_queue("memory://"),
        await open_state("memory://"),
        await open_store("memory://"),
        Settings.load({}, env={}),
    )
    transport = httpx.ASGITransport(app=create_gateway(jobs))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


ASYNC = {"Prefer": "respond-async"}


async def test_a_body_that_breaks_the_functions_type_is_refused(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/functions/place", json={"x": 1, "y": "north"}, headers=ASYNC)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == (
        "the body does not match the type place takes: $.y: expected a number, got a string"
    )
    r = await http.post("/v1/functions/place", json={"x": 1, "y": 2}, headers=ASYNC)
    assert r.status_code == 202, r.text
    # Untyped functions take any JSON value.
    assert (await http.post("/v1/functions/echo", json="x", headers=ASYNC)).status_code == 202


@pytest.mark.parametrize("prefer", ["wait=soon", "wait=1e3", "wait", "@", ""])
async def test_a_malformed_prefer_is_refused(http: httpx.AsyncClient, prefer: str) -> None:
    r = await http.post("/v1/functions/echo", json=1, headers={"Prefer": prefer})
    assert r.status_code == 400
    assert "Prefer" in r.json()["detail"]


async def test_prefer_wait_is_applied_and_unknown_preferences_ignored(
    http: httpx.AsyncClient,
) -> None:
    r = await http.post("/v1/functions/echo", json=1, headers={"Prefer": "return=minimal, wait=0"})
    assert r.status_code == 202
    assert r.headers["preference-applied"] == "wait=0"


@pytest.mark.parametrize("key", [b"x" * 256, "caf\u00e9".encode()])
async def test_a_bad_idempotency_key_is_refused(http: httpx.AsyncClient, key: bytes) -> None:
    r = await http.post("/v1/functions/echo", json=1, headers={"Idempotency-Key": key, **ASYNC})
    assert r.status_code == 400
    assert "Idempotency-Key" in r.json()["detail"]


async def test_redirect_takes_true_false_1_0(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/functions/echo", json=1, headers=ASYNC)
    result = f"{r.headers['location']}/result"
    assert (await http.get(result, params={"redirect": "maybe"})).status_code == 400
    for spelling in ("true", "1", "false", "0"):
        assert (await http.get(result, params={"redirect": spelling})).status_code == 202
