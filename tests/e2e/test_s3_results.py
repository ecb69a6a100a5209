"""Large results in S3 (moto_server): served inline, or by a 303 to a presigned URL."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from batchgate.client import AsyncClient, Client

pytestmark = pytest.mark.slow


def test_large_result_redirects_to_a_presigned_url(serve_factory: Any, s3_url: str) -> None:
    server = serve_factory(env={"BATCHGATE_STORE": s3_url})
    with server.client() as http:
        r = http.post("/v1/functions/big", json={"kib": 200})
        assert r.status_code == 200
        assert len(r.json()) == 200  # the gateway itself streams it from S3 by default
        location = r.headers["location"]
        redirect = http.get(location + "/result", params={"redirect": 1})
        assert redirect.status_code == 303
        presigned = redirect.headers["location"]
        assert presigned.startswith(s3_url.split("?")[1].split("endpoint_url=")[1])
        assert "Signature" in presigned or "X-Amz-Signature" in presigned
        fetched = httpx.get(presigned, timeout=30)
        assert fetched.status_code == 200
        assert fetched.json() == ["x" * 1000] * 200
        # A small result lives in the job record: no redirect even when asked.
        small = http.post("/v1/functions/echo", json=1).headers["location"]
        assert http.get(small + "/result", params={"redirect": 1}).status_code == 200


def test_redirects_can_be_the_default(serve_factory: Any, s3_url: str) -> None:
    server = serve_factory(env={"BATCHGATE_STORE": s3_url, "BATCHGATE_REDIRECT_RESULTS": "1"})
    with server.client() as http:
        location = http.post("/v1/functions/big", json={"kib": 100}).headers["location"]
        assert http.get(location + "/result").status_code == 303


def test_the_clients_follow_the_redirect_without_the_api_key(
    serve_factory: Any, s3_url: str
) -> None:
    env = {"BATCHGATE_STORE": s3_url, "BATCHGATE_REDIRECT_RESULTS": "1"}
    server = serve_factory("--api-key", "secret", env=env)
    sent: list[httpx.Request] = []
    hooks = {"request": [sent.append]}
    expected = ["x" * 1000] * 100
    with Client(server.url, "secret", http=httpx.Client(event_hooks=hooks)) as client:
        assert client.submit("big", {"kib": 100}).result() == expected
    (presigned,) = [r for r in sent if r.url.port != server.port]
    assert "authorization" not in presigned.headers  # the API key stays with the gateway

    async def fetch() -> Any:
        async with AsyncClient(server.url, "secret") as client:
            handle = await client.submit("big", {"kib": 100})
            return await handle.result()

    assert asyncio.run(fetch()) == expected
