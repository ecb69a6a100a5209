"""Blobs in a dict (`memory://`): for tests and single-process experiments.

Each `open` is a fresh, unshared store; nothing survives the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence

from batchgate.errors import NotFound


async def open(url: str) -> MemoryStore:
    """A new, empty in-memory store (`memory://`)."""
    return MemoryStore()


class MemoryStore:
    """The Store port on a dict of bytes."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes) -> None:
        """Write `data` under `key`, replacing any earlier blob."""
        self._blobs[key] = bytes(data)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Collect the stream, then store it in one step (readers never see a part)."""
        buffer = bytearray()
        async for piece in chunks:
            buffer += piece
        self._blobs[key] = bytes(buffer)
        return len(buffer)

    async def get(self, key: str) -> bytes:
        """The whole blob; raises NotFound when there is none."""
        try:
            return self._blobs[key]
        except KeyError:
            raise NotFound(f"no blob stored under {key!r}") from None

    async def open_stream(self, key: str, chunk_bytes: int = 1 << 16) -> AsyncIterator[bytes]:
        """Stream a blob in pieces; raises NotFound on first iteration when there is none."""
        data = await self.get(key)
        view = memoryview(data)
        for start in range(0, len(data), chunk_bytes):
            yield bytes(view[start : start + chunk_bytes])

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete blobs; missing keys are ignored."""
        for key in keys:
            self._blobs.pop(key, None)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with `prefix`; returns how many."""
        doomed = [key for key in self._blobs if key.startswith(prefix)]
        for key in doomed:
            del self._blobs[key]
        return len(doomed)

    async def presigned_url(self, key: str, expires_s: int) -> str | None:
        return None

    async def check_health(self) -> None:
        """Nothing to check beyond answering in memory."""

    async def aclose(self) -> None:
        """Nothing to release."""
