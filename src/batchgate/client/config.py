"""What a client is told: the gateway URL, the API key, timeouts and the retry policy."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import TypedDict

from batchgate.client.retry import RetryPolicy
from batchgate.errors import ConfigError
from batchgate.settings import CLIENT_API_KEY_ENV, CLIENT_URL_ENV

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclasses.dataclass(frozen=True, slots=True)
class ClientConfig:
    """A client's settings (see `resolve` for where each comes from).

    `timeout_s` bounds connecting, sending, and an answer beyond a requested wait;
    `poll_s` is the longest one request blocks on a job (longer waits are a series of such
    requests). `clock` and `draw` (uniform in [0, 1), for backoff jitter) are for tests.
    """

    base_url: str = DEFAULT_URL
    api_key: str | None = None
    timeout_s: float = 30.0
    poll_s: float = 60.0
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    clock: Callable[[], float] = time.monotonic
    draw: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"the gateway URL must start with http:// or https://, not {self.base_url!r}"
            )
        if self.timeout_s <= 0 or self.poll_s < 0:
            raise ConfigError("timeout_s must be positive and poll_s >= 0")

    @classmethod
    def resolve(
        cls,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        poll_s: float = 60.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> ClientConfig:
        """Explicit values first, then BATCHGATE_URL / BATCHGATE_API_KEY, then the defaults.

        An empty `api_key` ("") means no key, even when BATCHGATE_API_KEY is set.
        """
        env = os.environ if env is None else env
        url = base_url or env.get(CLIENT_URL_ENV) or DEFAULT_URL
        key = env.get(CLIENT_API_KEY_ENV) if api_key is None else api_key
        return cls(
            base_url=url.rstrip("/"),
            api_key=key or None,
            timeout_s=timeout_s,
            poll_s=poll_s,
            retry=retry or RetryPolicy(),
            clock=clock,
            draw=draw,
        )


class ClientOptions(TypedDict, total=False):
    """The keyword options of `Client(...)` and `AsyncClient(...)` (see ClientConfig)."""

    timeout_s: float
    poll_s: float
    retry: RetryPolicy
    clock: Callable[[], float]
    draw: Callable[[], float]
