"""Plumbing shared by the Redis queue and state backends: URLs, clients, error translation.

`redis://[user:password@]host:port/db?prefix=…` (or `rediss://` for TLS). Every key a
backend writes starts with the prefix (default `batchgate:`), so several deployments can
share one Redis database. Other query parameters are redis-py's own (`socket_timeout`,
`max_connections`, …). Clients speak RESP2, which every Redis >= 6.2 and Valkey serve.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from batchgate.errors import BackendError, ConfigError, missing_extra

try:
    import redis.asyncio as aioredis
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # the 'redis' extra is not installed; client() says so
    aioredis = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from redis.asyncio import Redis

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_PREFIX = "batchgate:"
# Connections per client unless the URL says `max_connections=`; a blocking receive holds
# one for up to a second, everything else for one round trip.
DEFAULT_MAX_CONNECTIONS = 64
# How long a call waits for a free pooled connection before failing.
POOL_TIMEOUT_S = 20.0
# redis-py query parameters that are not in URL_QUERY_ARGUMENT_PARSERS but that
# redis.connection.parse_url passes through to the connection (see its docstring).
_PASSTHROUGH_PARAMS = frozenset(
    {"client_name", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile"}
)


def split_url(url: str, own_params: frozenset[str]) -> tuple[str, str, dict[str, str]]:
    """(URL for redis-py, key prefix, batchgate's own query parameters) from a backend URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"{url!r}: expected a redis:// or rediss:// URL")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "prefix" or name in own_params:
            ours[name] = value
        elif name == "protocol":
            continue  # the backends parse RESP2 replies; see the module docstring
        elif aioredis is not None and (
            name in URL_QUERY_ARGUMENT_PARSERS or name in _PASSTHROUGH_PARAMS
        ):
            theirs.append((name, value))
        else:
            expected = ", ".join(sorted({"prefix", *own_params}))
            raise ConfigError(
                f"{url!r}: unknown query parameter {name!r} (expected {expected} "
                "or a redis-py connection parameter)"
            )
    prefix = ours.pop("prefix", DEFAULT_PREFIX)
    plain = urlunsplit(parts._replace(query=urlencode(theirs)))
    return plain, prefix, ours


def client(url: str) -> Redis:
    """A redis-py asyncio client (a lazily connecting pool) for a URL from `split_url`."""
    if aioredis is None:
        raise missing_extra("redis", "redis")
    try:
        # A blocking pool: past max_connections a call waits for a free connection
        # instead of failing (redis-py's plain pool raises "Too many connections").
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            protocol=2,
            decode_responses=False,
            max_connections=DEFAULT_MAX_CONNECTIONS,
            timeout=POOL_TIMEOUT_S,
        )
    except ValueError as exc:
        raise ConfigError(f"bad redis URL: {exc}") from exc
    return aioredis.Redis.from_pool(pool)


def translate(
    what: str,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorate a backend coroutine method so redis errors surface as BackendError."""

    def decorate(method: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(method)
        async def translated(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await method(*args, **kwargs)
            except RedisError as exc:
                raise BackendError(f"redis {what}: {type(exc).__name__}: {exc}") from exc

        return translated

    return decorate


def has_error_code(exc: BaseException, code: str) -> bool:
    """Whether `exc` is a Redis error reply starting with `code` (NOGROUP, BUSYGROUP…)."""
    return aioredis is not None and isinstance(exc, ResponseError) and str(exc).startswith(code)


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` means the connection is gone (so reconnecting may help)."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    return aioredis is not None and isinstance(exc, RedisConnectionError | RedisTimeoutError)
