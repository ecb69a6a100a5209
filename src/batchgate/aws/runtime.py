"""What the Lambda entry points share: one event loop, the settings, the app, the executors
and the backends.

A Lambda execution environment runs one invocation at a time and freezes between them. The
loop, the executor processes the workers start on it and the backends (their clients and
connections) live as long as the environment: warm invocations reuse them, as AWS advises
for SDK clients, instead of paying for new clients and connections every time. A
connection a freeze let go stale is made again by the client's own retry; an invocation
that fails with a backend error drops them all, and the next one opens them afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

from batchgate.app import Registry
from batchgate.aws.package import MANIFEST_NAME
from batchgate.errors import BackendError, ConfigError
from batchgate.queue import Queue
from batchgate.server import open_backends
from batchgate.settings import Settings
from batchgate.state import State
from batchgate.store import Store
from batchgate.worker.executor import ExecutorPool

T = TypeVar("T")

# Where the Lambda runtime unpacks the deployment zip; the current directory otherwise.
TASK_ROOT_ENV = "LAMBDA_TASK_ROOT"


class LambdaContext(Protocol):
    """The part of Lambda's context object batchgate reads."""

    function_name: str
    invoked_function_arn: str
    aws_request_id: str

    def get_remaining_time_in_millis(self) -> int: ...


class Deadline:
    """When this invocation ends, on the loop's clock, from the context's remaining time."""

    def __init__(self, context: LambdaContext, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.at = loop.time() + context.get_remaining_time_in_millis() / 1000

    def left_s(self) -> float:
        return max(0.0, self.at - self._loop.time())


@dataclasses.dataclass(frozen=True)
class _OpenBackends:
    urls: tuple[str, str, str]
    backends: tuple[Queue, State, Store]
    closer: contextlib.AsyncExitStack


_loop: asyncio.AbstractEventLoop | None = None
_pool: ExecutorPool | None = None
_backends: _OpenBackends | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The environment's event loop, made current (Mangum runs on the current loop)."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    asyncio.set_event_loop(_loop)
    return _loop


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one invocation's coroutine to the end on the environment's loop."""
    return loop().run_until_complete(coro_fn())


def load_settings() -> Settings:
    """Settings from the BATCHGATE_* environment the template sets."""
    return Settings.load()


def manifest_path() -> Path:
    return Path(os.environ.get(TASK_ROOT_ENV) or ".") / MANIFEST_NAME


def read_manifest() -> dict[str, Any]:
    """The `batchgate-lambda.json` that `batchgate aws package` put at the zip's root."""
    return _manifest_at(manifest_path())


@functools.cache
def _manifest_at(path: Path) -> dict[str, Any]:
    """Read once per environment: the deployed zip never changes under it."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is missing: deploy the zip `batchgate aws package` builds"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc.get("app"), str) or not isinstance(doc.get("functions"), list):
        raise ConfigError(f"{path} does not name an app and its functions")
    return doc


def app_ref() -> str:
    ref: str = read_manifest()["app"]
    return ref


def registry() -> Registry:
    """The app's functions, from the manifest: the gateway never imports user code."""
    return Registry.from_manifest(read_manifest()["functions"])


async def executor_pool(app: str, size: int) -> ExecutorPool:
    """The environment's executor processes, started on first use and kept while warm."""
    global _pool
    if _pool is None or _pool.app_ref != app:
        if _pool is not None:
            await _pool.aclose()
        pool = ExecutorPool(app, size)
        await pool.start()
        _pool = pool
    return _pool


async def warm_backends(settings: Settings) -> tuple[Queue, State, Store]:
    """The environment's queue, state and store: opened by the first invocation that needs
    them (or once `settings` name others) and kept while the environment is warm."""
    global _backends
    urls = (settings.queue_url, settings.state_url, settings.store_url)
    if _backends is not None and _backends.urls != urls:
        await drop_backends()
    if _backends is None:
        closer = contextlib.AsyncExitStack()
        opened = await closer.enter_async_context(open_backends(settings))
        _backends = _OpenBackends(urls, opened, closer)
    return _backends.backends


@contextlib.asynccontextmanager
async def backends(settings: Settings) -> AsyncIterator[tuple[Queue, State, Store]]:
    """The warm backends for one invocation; a BackendError out of it drops them."""
    opened = await warm_backends(settings)
    try:
        yield opened
    except BackendError:
        await drop_backends()
        raise


async def drop_backends() -> None:
    """Close the environment's backends; the next invocation opens them again."""
    global _backends
    current, _backends = _backends, None
    if current is not None:
        try:
            await current.closer.aclose()
        except Exception as exc:  # closing a broken client must not fail the invocation
            logging.getLogger("batchgate.aws").warning("closing the backends: %s", exc)


def shutdown() -> None:
    """Close the backends, kill the executors and close the loop: the end of an environment
    (on Lambda it just ends; tests and emulators call this)."""
    global _loop, _pool
    pool, _pool = _pool, None
    old, _loop = _loop, None
    if old is not None and not old.is_closed():
        old.run_until_complete(drop_backends())
        if pool is not None:
            old.run_until_complete(pool.aclose())
        old.run_until_complete(old.shutdown_asyncgens())
        old.close()
    asyncio.set_event_loop(None)


def setup_logging() -> None:
    """batchgate's INFO lines to the function's log (Lambda's root logger shows WARNING+)."""
    logger = logging.getLogger("batchgate")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
        if not logging.getLogger().handlers:  # off Lambda, e.g. under an emulator
            logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
