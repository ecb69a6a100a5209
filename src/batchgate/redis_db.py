"""Plumbing shared by the Redis queue and state backends: URLs, clients, error translation,
and `PipelinedClient`, the one connection that carries their non-blocking commands.

`redis://[user:password@]host:port/db?prefix=…` (or `rediss://` for TLS). Every key a
backend writes starts with the prefix (default `batchgate:`), so several deployments can
share one Redis database. Other query parameters are redis-py's own (`socket_timeout`,
`max_connections`, …). Clients speak RESP2, which every Redis >= 6.2 and Valkey serve.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from batchgate.errors import BackendError, ConfigError, missing_extra

try:
    import redis.asyncio as aioredis
    from redis._parsers.base import BaseParser
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # the 'redis' extra is not installed; client() says so
    aioredis = None  # type: ignore[assignment]

    class RedisError(Exception):  # type: ignore[no-redef]
        """Never raised: keeps `translate`'s except clause valid without redis."""


if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool, Redis
    from redis.asyncio.connection import AbstractConnection

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_PREFIX = "batchgate:"
# Connections per client unless the URL says `max_connections=`; a blocking receive holds
# one for up to a second, everything else for one round trip.
DEFAULT_MAX_CONNECTIONS = 64
# How long a call waits for a free pooled connection before failing.
POOL_TIMEOUT_S = 20.0
# A call whose connection broke (a pooled connection to a restarted server, a failover)
# is retried on a fresh one this often, backing off from RETRY_BASE_S up to RETRY_CAP_S.
# A Lua call cut off after it ran may so run twice: see docs/backends/redis.md.
RETRIES = 3
RETRY_BASE_S = 0.05
RETRY_CAP_S = 1.0
# Values longer than this are written as chunks of their own instead of copied.
_INLINE_MAX_BYTES = 6000
_READ_BYTES = 256 * 1024
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
            retry=Retry(ExponentialWithJitterBackoff(RETRY_BASE_S, RETRY_CAP_S), RETRIES),
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
                raise BackendError(
                    f"redis {what}: {type(exc).__name__}: {exc}",
                    public=f"the redis {what} failed ({type(exc).__name__})",
                ) from exc

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


@dataclasses.dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script and its SHA1, for EVALSHA."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> LuaScript:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


@dataclasses.dataclass(slots=True)
class _Call:
    packed: list[bytes]
    future: asyncio.Future[Any]
    tries: int = 0


class PipelinedClient:
    """Every caller's commands over one connection, pipelined.

    Commands issued during one event-loop turn go out in one write and their replies are
    read in order by one task: a command costs a fraction of a redis-py pooled call (a
    connection checkout, a write and a wakeup each). Blocking commands and MULTI
    transactions must not go through it. When the connection breaks, commands awaiting a
    reply are sent again on a new one, up to RETRIES times, like redis-py's own retry.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: AbstractConnection | None = None
        self._queued: list[_Call] = []
        self._sent: collections.deque[_Call] = collections.deque()
        self._wake = asyncio.Event()
        self._failures = 0
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    async def execute(self, *args: Any) -> Any:
        """Send one command; its reply (raw RESP2: bytes, ints, lists) or its error."""
        if self._closed:
            raise RedisConnectionError("the redis client is closed")
        loop = asyncio.get_running_loop()
        if self._writer is None:
            self._writer = loop.create_task(self._write(), name="redis-pipeline-write")
        call = _Call(pack_command(args), loop.create_future())
        self._queued.append(call)
        self._wake.set()
        return await call.future

    async def run_script(self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """EVALSHA, loading the script first if the server lost it (a restart)."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script.source)
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Close the connection; pending and later commands fail."""
        self._closed = True
        for task in (self._writer, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._conn is not None:
            await self._conn.disconnect()
        await asyncio.gather(*self._closing, return_exceptions=True)
        closed = RedisConnectionError("the redis client is closed")
        for call in (*self._sent, *self._queued):
            if not call.future.done():
                call.future.set_exception(closed)

    async def _write(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            if not self._queued:
                continue
            conn = self._conn
            if conn is None:
                if self._failures:
                    await asyncio.sleep(_backoff_s(self._failures))
                conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
                try:
                    await connect(conn)
                except Exception as exc:
                    self._failures += 1
                    self._queued = self._give_back(self._queued, exc)
                    self._wake.set()
                    continue
                self._failures = 0
                self._conn = conn
                self._reader = asyncio.get_running_loop().create_task(
                    self._read(conn), name="redis-pipeline-read"
                )
            batch, self._queued = self._queued, []
            self._sent.extend(batch)
            # Straight to the stream: redis-py's send would reconnect a dropped connection
            # behind the reader's back.
            stream: asyncio.StreamWriter = conn._writer  # type: ignore[assignment]
            try:
                stream.writelines([chunk for call in batch for chunk in call.packed])
                await stream.drain()
            except Exception as exc:
                self._broken(conn, exc)

    async def _read(self, conn: AbstractConnection) -> None:
        replies = ReplyReader(conn)
        try:
            while True:
                for reply in await replies.read():
                    if isinstance(reply, RedisConnectionError):
                        raise reply  # LOADING and the like: retry on a new connection
                    self._deliver(reply)
        except Exception as exc:
            self._broken(conn, exc)

    def _deliver(self, reply: Any) -> None:
        if not self._sent:
            raise RedisConnectionError(f"unexpected reply {reply!r:.100}")
        call = self._sent.popleft()
        if call.future.done():
            return  # its caller was cancelled
        if isinstance(reply, ResponseError):
            call.future.set_exception(reply)
        else:
            call.future.set_result(reply)

    def _broken(self, conn: AbstractConnection, exc: Exception) -> None:
        """Drop a failed connection; what awaited replies on it is sent again or fails."""
        if self._conn is not conn:
            return
        self._conn = None
        self._failures += 1
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None
        closing = asyncio.get_running_loop().create_task(conn.disconnect())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        unanswered = list(self._sent)
        self._sent.clear()
        self._queued[:0] = self._give_back(unanswered, exc)
        self._wake.set()

    @staticmethod
    def _give_back(calls: list[_Call], exc: Exception) -> list[_Call]:
        """Count a failed try against each call; fail those out of tries, return the rest."""
        if not isinstance(exc, RedisError):
            exc = RedisConnectionError(f"{type(exc).__name__}: {exc}")
        again = []
        for call in calls:
            call.tries += 1
            if call.future.done():
                continue
            if call.tries <= RETRIES and is_connection_error(exc):
                again.append(call)
            else:
                call.future.set_exception(exc)
        return again


class ReplyReader:
    """RESP2 replies parsed straight off a connection's socket, a batch per read.

    redis-py has no public raw-stream API, hence the private `_reader`; its own parser
    costs a coroutine and a readline per element, which dominated a busy gateway's CPU.
    Cancelling `read` loses nothing: partial replies stay buffered here.
    """

    def __init__(self, conn: AbstractConnection) -> None:
        self._stream: asyncio.StreamReader = conn._reader  # type: ignore[assignment]
        self._chunks: list[bytes] = []
        self._size = 0
        self._need = 1  # bytes to buffer before the next parse can complete

    async def read(self) -> list[Any]:
        """The next complete replies (at least one); error replies come as exceptions."""
        while True:
            data = await self._stream.read(_READ_BYTES)
            if not data:
                raise RedisConnectionError("Connection closed by server.")
            self._chunks.append(data)
            self._size += len(data)
            if self._size < self._need:
                continue
            buf = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            pos, self._need = 0, 1
            replies = []
            while pos < len(buf):
                try:
                    reply, after = _parse(buf, pos)
                except _Incomplete as incomplete:
                    self._need = max(incomplete.need, len(buf) + 1) - pos
                    break
                replies.append(reply)
                pos = after
            rest = buf[pos:]
            self._chunks = [rest] if rest else []
            self._size = len(rest)
            if replies:
                return replies


class _Incomplete(Exception):
    """The buffer ends inside a reply; `need` bytes would complete it (if known)."""

    def __init__(self, need: int = 0) -> None:
        self.need = need


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 reply at `pos`: (value, position after it); raises _Incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete()
    kind = buf[pos]
    if kind == 0x24:  # $ bulk string
        length = int(buf[pos + 1 : end])
        if length < 0:
            return None, end + 2
        stop = end + 2 + length
        if len(buf) < stop + 2:
            raise _Incomplete(stop + 2)
        return buf[end + 2 : stop], stop + 2
    if kind == 0x2A:  # * array
        count = int(buf[pos + 1 : end])
        if count < 0:
            return None, end + 2
        pos = end + 2
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 0x3A:  # : integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 0x2B:  # + simple string
        return buf[pos + 1 : end], end + 2
    if kind == 0x2D:  # - error
        error = buf[pos + 1 : end].decode(errors="replace")
        return BaseParser.parse_error(error), end + 2  # type: ignore[no-untyped-call]
    raise RedisConnectionError(f"protocol error: {buf[pos : pos + 50]!r}")


def pack_command(args: Sequence[Any]) -> list[bytes]:
    """A command in RESP, as chunks; several times cheaper than redis-py's packer."""
    parts = [b"*%d\r\n" % len(args)]
    big = False
    for arg in args:
        kind = type(arg)  # exact types first: the common case, and the fast one
        if kind is bytes:
            value = arg
        elif kind is str:
            value = arg.encode()
        elif kind is int:
            value = b"%d" % arg
        elif isinstance(arg, bytes | bytearray | memoryview):
            value = bytes(arg)
        elif isinstance(arg, str):
            value = str(arg).encode()
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            value = repr(arg).encode()
        else:
            raise DataError(f"cannot send a {kind.__name__} to redis: {arg!r:.50}")
        if len(value) > _INLINE_MAX_BYTES:
            parts += (b"$%d\r\n" % len(value), value, b"\r\n")  # no copy of a big value
            big = True
        else:
            parts.append(b"$%d\r\n%b\r\n" % (len(value), value))
    return parts if big else [b"".join(parts)]


async def connect(conn: AbstractConnection) -> None:
    """`conn.connect()`, honouring a cancellation that redis-py 8.1 can swallow there."""
    task = asyncio.current_task()
    cancelling = 0 if task is None else task.cancelling()
    try:
        await conn.connect()  # type: ignore[no-untyped-call]
    finally:
        if task is not None and task.cancelling() > cancelling:
            raise asyncio.CancelledError


def _backoff_s(failures: int) -> float:
    return float(min(RETRY_BASE_S * 2 ** (failures - 1), RETRY_CAP_S))
