"""Blobs as files under a local folder (`file:///absolute/dir`, `file:relative/dir`).

A key is a relative path with `/` separators; its segments may not be empty or start
with `.` (which rules out `.` and `..`, and reserves dot-names for temp files). A key
cannot name a blob and also a "folder" of other keys (`a` and `a/b`).

Writes go to a temp file beside the target and are renamed over it, so a reader sees the
old blob or the new one, never a torn one. There is no fsync: a blob survives a crash of
any process, not necessarily a power loss (like the SQLite backends' synchronous=NORMAL).

Small reads and writes run on the event loop (a thread hop costs more than they do);
larger ones, and every piece of a stream, run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from io import BufferedReader, BufferedWriter
from pathlib import Path

from batchgate.diskspace import check_free_space
from batchgate.errors import BackendError, ConfigError, NotFound
from batchgate.urls import local_path

# Up to this size a read or write runs inline: a few µs from the page cache.
INLINE_BYTES = 256 * 1024
# put_stream gathers small pieces up to this size so each thread hop writes a useful amount.
WRITE_BUFFER_BYTES = 1 << 20

_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


async def open(url: str) -> FileStore:
    """Open the folder named by `url`, creating it if needed."""
    root = local_path(url).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{url!r}: cannot create the store folder {root}: {exc}") from exc
    return FileStore(root)


def _segments(key: str) -> list[str]:
    """The path segments of a key or key folder; ValueError if it could escape the root."""
    if "\\" in key or "\0" in key:
        raise ValueError(f"store key {key!r} contains a backslash or NUL")
    segments = key.split("/")
    for segment in segments:
        if not segment or segment.startswith("."):
            raise ValueError(
                f"store key {key!r} has an empty segment or one starting with '.' "
                "(keys are relative paths like 'inputs/job/0')"
            )
    return segments


@contextlib.contextmanager
def _backend_errors(key: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        raise BackendError(
            f"file store, key {key!r}: {exc}", public=f"the file store failed: {reason}"
        ) from exc


def _open_temp(path: Path) -> tuple[Path, BufferedWriter]:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        return temp, temp.open("xb")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return temp, temp.open("xb")


def _write_atomic(path: Path, data: bytes) -> None:
    temp, file = _open_temp(path)
    try:
        with file:
            file.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _unlink_all(paths: Sequence[str]) -> None:
    for path in paths:
        _unlink(path)


def _delete_tree(path: str) -> int:
    """Delete a folder and every file in it; counts blobs, not temp files."""
    count = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                count += _delete_tree(entry.path)
            elif _unlink(entry.path) and not entry.name.startswith("."):
                count += 1
    with contextlib.suppress(OSError):  # a concurrent put wrote here; its blob stays
        os.rmdir(path)
    return count


class FileStore:
    """The Store port on a local folder; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_segments(key))

    def _open_read(self, key: str) -> BufferedReader:
        path = self._path(key)
        try:
            return path.open("rb")
        except _MISSING:
            raise NotFound(f"no blob stored under {key!r}") from None

    async def put(self, key: str, data: bytes) -> None:
        """Write `data` under `key` atomically, replacing any earlier blob."""
        path = self._path(key)
        with _backend_errors(key):
            if len(data) <= INLINE_BYTES:
                _write_atomic(path, data)
            else:
                await asyncio.to_thread(_write_atomic, path, data)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Write a blob from a stream, holding at most WRITE_BUFFER_BYTES; returns its size."""
        path = self._path(key)
        size = 0
        with _backend_errors(key):
            temp, file = _open_temp(path)
            try:
                with file:
                    buffer = bytearray()
                    async for piece in chunks:
                        buffer += piece
                        size += len(piece)
                        if len(buffer) >= WRITE_BUFFER_BYTES:
                            await asyncio.to_thread(file.write, buffer)
                            buffer.clear()
                    if len(buffer) > INLINE_BYTES:
                        await asyncio.to_thread(file.write, buffer)
                    else:
                        file.write(buffer)
                os.replace(temp, path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        return size

    async def get(self, key: str) -> bytes:
        """The whole blob; raises NotFound when there is none."""
        with _backend_errors(key), self._open_read(key) as file:
            if os.fstat(file.fileno()).st_size <= INLINE_BYTES:
                return file.read()
            return await asyncio.to_thread(file.read)

    async def open_stream(self, key: str, chunk_bytes: int = 1 << 16) -> AsyncIterator[bytes]:
        """Stream a blob in pieces; raises NotFound on first iteration when there is none."""
        with _backend_errors(key), self._open_read(key) as file:
            inline = os.fstat(file.fileno()).st_size <= INLINE_BYTES
            while True:
                if inline:
                    piece = file.read(chunk_bytes)
                else:
                    piece = await asyncio.to_thread(file.read, chunk_bytes)
                if not piece:
                    return
                yield piece

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete blobs; missing keys are ignored."""
        paths = [str(self._path(key)) for key in keys]
        if not paths:
            return
        with _backend_errors(keys[0] if len(keys) == 1 else f"{keys[0]} (+{len(keys) - 1})"):
            await asyncio.to_thread(_unlink_all, paths)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with `prefix` (not only at a `/`)."""
        folder, _, name = prefix.rpartition("/")
        if prefix.startswith("/"):
            raise ValueError(f"store key prefix {prefix!r} is absolute")
        base = self._path(folder) if folder else self.root
        with _backend_errors(prefix):
            return await asyncio.to_thread(self._delete_prefix, base, name)

    @staticmethod
    def _delete_prefix(base: Path, name: str) -> int:
        try:
            entries = list(os.scandir(base))
        except _MISSING:
            return 0
        count = 0
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.startswith(name):
                continue
            if entry.is_dir(follow_symlinks=False):
                count += _delete_tree(entry.path)
            elif _unlink(entry.path):
                count += 1
        return count

    async def presigned_url(self, key: str, expires_s: int) -> str | None:
        """None: a local folder has no URL a client could fetch from."""
        return None

    async def check_health(self) -> None:
        """Fails when the folder's disk is (nearly) full."""
        check_free_space(self.root, "file store")

    async def aclose(self) -> None:
        """Nothing to release."""
