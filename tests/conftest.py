"""Fixtures shared by every test layer."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.moto_server",
    "tests.fixtures.ministack",
    "tests.fixtures.podman",
]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"
