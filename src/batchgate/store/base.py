"""The Store port: named blobs (inputs, chunk parts, results), streamed in and out."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Protocol


class Store(Protocol):
    """Blob storage. Writes are atomic: a reader sees the whole blob or none of it."""

    async def put(self, key: str, data: bytes) -> None:
        """Write `data` under `key`, replacing any earlier blob."""
        ...

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Write a blob from an async stream without holding it in memory; returns its size."""
        ...

    async def get(self, key: str) -> bytes:
        """The whole blob; raises NotFound when there is none."""
        ...

    def open_stream(self, key: str, chunk_bytes: int = 1 << 16) -> AsyncIterator[bytes]:
        """Stream a blob in pieces; raises NotFound (on first iteration) when there is none."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete blobs; missing keys are ignored."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with `prefix`; returns how many."""
        ...

    async def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A URL a client can GET the blob from directly, or None if the backend has none."""
        ...

    async def check_health(self) -> None:
        """Raise BackendError if this backend could not take writes now (its disk is full).

        Cheap and side-effect free: readiness probes call it. Backends with nothing to
        check beyond answering at all return at once.
        """
        ...

    async def aclose(self) -> None: ...
