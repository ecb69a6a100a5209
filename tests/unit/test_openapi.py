"""The OpenAPI document: every route of the gateway, in a valid OpenAPI 3.1 document,
with security and 401s exactly when API keys are on. (Its agreement with the live server
is `tests/e2e/test_openapi_conformance.py`.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from starlette.routing import Route

from batchgate.app import load_app
from batchgate.gateway.app import create_gateway
from batchgate.gateway.openapi import openapi_document
from batchgate.jobs import Jobs
from batchgate.queue import open_queue
from batchgate.settings import Settings
from batchgate.state import open_state
from batchgate.store import open_store

pytestmark = pytest.mark.anyio

API_APP = str(Path(__file__).parents[1] / "apps" / "apiapp.py")
METHODS = {"get", "post", "put", "patch", "delete"}


async def _gateway_and_document(api_keys: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    settings = Settings.load({"api_keys": api_keys}, env={})
    registry = load_app(API_APP).registry()
    jobs = Jobs(
        registry,
        await open_queue("memory://"),
        await open_state("memory://"),
        await open_store("memory://"),
        settings,
    )
    return create_gateway(jobs), openapi_document(registry, api_keys=bool(api_keys))


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


@pytest.mark.parametrize("api_keys", [(), ("k1", "k2")], ids=["keys-off", "keys-on"])
async def test_every_route_is_documented_and_nothing_else(api_keys: tuple[str, ...]) -> None:
    gateway, doc = await _gateway_and_document(api_keys)
    served = set()
    for route in gateway.routes:
        assert isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}:
            if route.path == "/v1/functions/{name}":
                served |= {(f"/v1/functions/{i.name}", method.lower()) for i in (
                    load_app(API_APP).registry()
                )}  # fmt: skip
            else:
                served.add((route.path, method.lower()))
    documented = {(path, method) for path, method, _ in _operations(doc)}
    assert documented == served


@pytest.mark.parametrize("api_keys", [False, True], ids=["keys-off", "keys-on"])
def test_the_document_is_valid_openapi(api_keys: bool) -> None:
    doc = openapi_document(load_app(API_APP).registry(), api_keys=api_keys)
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI 3.1 meta-schema; raises on any error
    loaded = [result.ok() for result in schema.get_all_operations()]  # .ok() raises on error
    assert len(loaded) == sum(1 for _ in _operations(doc))
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids))


def test_every_response_names_its_request_and_every_error_is_a_problem() -> None:
    doc = openapi_document(load_app(API_APP).registry(), api_keys=True)
    for path, method, operation in _operations(doc):
        assert {"$ref": "#/components/parameters/X-Request-Id"} in operation["parameters"]
        for status, response in operation["responses"].items():
            assert "X-Request-Id" in response["headers"], (path, method, status)
            if int(status) >= 400 and path not in ("/readyz",):
                assert set(response["content"]) == {"application/problem+json"}, (path, status)


def test_keys_on_protect_every_v1_operation_and_leave_operations_public() -> None:
    doc = openapi_document(load_app(API_APP).registry(), api_keys=True)
    assert set(doc["components"]["securitySchemes"]) == {"bearerAuth", "apiKeyAuth"}
    for path, _, operation in _operations(doc):
        if path.startswith("/v1/"):
            assert operation["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
        else:
            assert operation["security"] == []
            assert "401" not in operation["responses"]


def test_keys_off_declare_no_security() -> None:
    doc = openapi_document(load_app(API_APP).registry(), api_keys=False)
    assert "securitySchemes" not in doc["components"]
    for _, _, operation in _operations(doc):
        assert "security" not in operation
        assert "401" not in operation["responses"]


def test_function_entries_follow_the_function() -> None:
    doc = openapi_document(load_app(API_APP).registry())
    place = doc["paths"]["/v1/functions/place"]["post"]
    assert place["requestBody"]["content"]["application/json"]["schema"]["required"] == ["x", "y"]
    ok = place["responses"]["200"]["content"]
    assert set(ok) == {"application/json", "text/event-stream"}
    assert ok["application/json"]["schema"]["properties"]["quadrant"]
    assert set(place["responses"]["202"]["headers"]) >= {"Job-Id", "Location", "Retry-After"}

    batch = doc["paths"]["/v1/functions/kinds"]["post"]
    assert set(batch["requestBody"]["content"]) == {
        "application/json", "application/x-ndjson", "application/ndjson",
        "application/jsonl", "application/x-jsonlines",
    }  # fmt: skip
    answer = batch["responses"]["200"]["content"]
    assert set(answer) == {"application/json", "application/x-ndjson", "text/event-stream"}
    assert answer["application/json"]["schema"] == {"type": "array", "items": {"type": "string"}}
    links = batch["responses"]["200"]["links"]
    assert {link["operationId"] for link in links.values()} == {
        "get_job", "get_job_result", "get_job_events", "cancel_job",
    }  # fmt: skip
