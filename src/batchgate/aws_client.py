"""The edge to aiobotocore shared by the SQS queue and the S3 store.

aiobotocore ships no type information, so it is imported by name and its objects are `Any`
only inside this module and at the few places a backend reads a response; every failure
it raises leaves here as an `AwsError` (a BackendError carrying the AWS error code).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from batchgate.errors import BackendError, ConfigError, missing_extra

__all__ = ["AwsClient", "AwsError", "open_client"]

# A worker heartbeats every in-flight task while it long-polls for more; the botocore
# default of 10 pooled connections would queue those calls behind each other.
MAX_POOL_CONNECTIONS = 50
CONNECT_TIMEOUT_S = 10.0
# Above SQS's longest long poll (20 s), so a poll is never cut short by the client.
READ_TIMEOUT_S = 60.0
# botocore's "standard" retry mode: 3 attempts with backoff on throttling and 5xx.
MAX_ATTEMPTS = 3


class AwsError(BackendError):
    """An AWS call failed; `code` is the service's error code ('' when it never answered)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message, public=f"an AWS service failed ({code or 'no answer'})")
        self.code = code


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise missing_extra("aiobotocore", "aws") from None


def _botocore_errors() -> tuple[type[BaseException], ...]:
    exceptions = _import("botocore.exceptions")
    return (exceptions.ClientError, exceptions.BotoCoreError)


class AwsClient:
    """One aiobotocore client: typed calls with translated errors, closed by `aclose`."""

    def __init__(self, service: str, raw: Any, stack: contextlib.AsyncExitStack) -> None:
        self.service = service
        self.raw = raw
        self._stack = stack
        self._errors = _botocore_errors()

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Run one API operation (snake_case name); raises AwsError on any failure."""
        try:
            response: dict[str, Any] = await getattr(self.raw, operation)(**params)
        except self._errors as exc:
            raise self.error(operation, exc) from exc
        return response

    def error(self, operation: str, exc: BaseException) -> AwsError:
        """The AwsError for a botocore exception raised by `operation`."""
        response = getattr(exc, "response", None)
        code = ""
        if isinstance(response, Mapping):
            code = str(response.get("Error", {}).get("Code", ""))
        return AwsError(f"{self.service} {operation} failed: {exc}", code)

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """The botocore exception classes `call` translates (for calls made on `raw`)."""
        return self._errors

    async def aclose(self) -> None:
        """Close the client's connection pool."""
        await self._stack.aclose()


async def open_client(service: str, params: Mapping[str, str]) -> AwsClient:
    """An aiobotocore client for `service`, configured by a backend URL's query parameters.

    `region` and `endpoint_url` are read from `params`; credentials come from botocore's
    usual chain (environment, shared files, container or instance role).
    """
    session_module = _import("aiobotocore.session")
    config_module = _import("aiobotocore.config")
    endpoint_url = params.get("endpoint_url") or None
    if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
        raise ConfigError(f"endpoint_url {endpoint_url!r} is not an http(s) URL")
    options: dict[str, Any] = {}
    if service == "s3":
        # S3-compatible servers (MinIO, moto, Ceph) at an endpoint_url rarely resolve
        # bucket.host names; path style works everywhere and AWS still accepts it.
        style = "path" if endpoint_url and params.get("path_style", "1") == "1" else "auto"
        options["s3"] = {"addressing_style": style}
    config = config_module.AioConfig(
        max_pool_connections=MAX_POOL_CONNECTIONS,
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        **options,
    )
    session = session_module.get_session()
    stack = contextlib.AsyncExitStack()
    try:
        raw = await stack.enter_async_context(
            session.create_client(
                service,
                region_name=params.get("region") or None,
                endpoint_url=endpoint_url,
                config=config,
            )
        )
    except _botocore_errors() as exc:
        await stack.aclose()
        raise ConfigError(f"cannot make a {service} client: {exc}") from exc
    return AwsClient(service, raw, stack)
