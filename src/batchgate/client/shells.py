"""What the blocking and asyncio shells share: their construction, and job handles."""

from __future__ import annotations

from typing import Generic, TypeVar, Unpack

import httpx

from batchgate.batches import BatchFormat
from batchgate.client.answers import JobRef
from batchgate.client.config import ClientConfig, ClientOptions
from batchgate.client.core import ClientCore

C = TypeVar("C")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class ClientBase(Generic[H]):
    """A client over an httpx client of type H (its own, or `http` if given).

    `base_url` and `api_key` default to $BATCHGATE_URL and $BATCHGATE_API_KEY, then to
    http://127.0.0.1:8000 and no key. Options (ClientConfig's): `timeout_s` bounds
    connecting, sending, and an answer beyond a requested wait (30); `poll_s` is the longest
    one request blocks on a job (60); `retry` is a RetryPolicy. `http` is an httpx client
    set up as you need (proxies, certificates, a test transport…); closing this client
    closes it too.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        http: H | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self.core = ClientCore(ClientConfig.resolve(base_url, api_key, **options))
        self._http: H = self._new_http() if http is None else http

    def _new_http(self) -> H:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return self.core.config.base_url


class HandleBase(Generic[C]):
    """A job followed through a client of type C; the methods are the client's own."""

    def __init__(self, client: C, ref: JobRef) -> None:
        self.client = client
        self.ref = ref

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ref.id!r})"

    @property
    def id(self) -> str:
        return self.ref.id

    @property
    def location(self) -> str:
        """The job's URL (a path on the gateway)."""
        return self.ref.location

    @property
    def format(self) -> BatchFormat:
        """The format a map job's result comes back in."""
        return self.ref.format
