"""Request bodies and result outputs as the client core sees them: sources, not bytes.

A `Body` says where its bytes come from (memory, a file, a file object, an iterable of
items) and whether they can be sent twice; the shells read it. An `Output` is where a
result is written; the shells write it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, TypeGuard, TypeVar, cast

from batchgate.batches import BatchFormat

PIECE_BYTES = 64 * 1024  # upload piece size
S = TypeVar("S")

# Told the bytes of a body sent so far (from 0 again when a retry starts over) and the
# total, when known.
UploadCallback = Callable[[int, int | None], object]


class Readable(Protocol):
    """A binary file, or anything with its `read`."""

    def read(self, size: int = -1, /) -> bytes: ...


FileSource = str | os.PathLike[str] | Readable
FileTarget = str | os.PathLike[str] | IO[bytes]
Items = Iterable[Any] | AsyncIterable[Any]


def dump_json(value: Any) -> bytes:
    """Compact JSON for a payload or an NDJSON line; NaN and infinities are refused."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def as_format(value: BatchFormat | str) -> BatchFormat:
    """A BatchFormat from itself, its media type, or `json` / `ndjson` / `jsonl`."""
    short = {"json": BatchFormat.JSON, "ndjson": BatchFormat.NDJSON, "jsonl": BatchFormat.NDJSON}
    if isinstance(value, str) and value.lower() in short:
        return short[value.lower()]
    return BatchFormat.from_content_type(value)


def is_path(source: object) -> TypeGuard[str | os.PathLike[str]]:
    return isinstance(source, str | os.PathLike)


def file_format(source: FileSource, fmt: BatchFormat | str | None) -> BatchFormat:
    """The explicit format, else `.ndjson`/`.jsonl` -> NDJSON, else JSON."""
    if fmt is not None:
        return as_format(fmt)
    name = source if is_path(source) else getattr(source, "name", "")
    suffix = Path(os.fsdecode(name)).suffix.lower() if is_path(name) else ""
    return BatchFormat.NDJSON if suffix in (".ndjson", ".jsonl") else BatchFormat.JSON


def source_name(source: FileSource) -> str:
    """How to name an input in a message."""
    if is_path(source):
        return os.fsdecode(source)
    return str(getattr(source, "name", "the input"))


class NdjsonPacker:
    """Items to NDJSON pieces of about PIECE_BYTES: never the whole batch in memory."""

    def __init__(self) -> None:
        self._lines: list[bytes] = []
        self._size = 0

    def add(self, item: Any) -> bytes:
        """Take an item; a full piece when one is ready, else b""."""
        line = dump_json(item) + b"\n"
        self._lines.append(line)
        self._size += len(line)
        return self.flush() if self._size >= PIECE_BYTES else b""

    def flush(self) -> bytes:
        """What is left: the last, short piece."""
        piece = b"".join(self._lines)
        self._lines, self._size = [], 0
        return piece


def ndjson_pieces(items: Iterable[Any]) -> Iterator[bytes]:
    packer = NdjsonPacker()
    for item in items:
        if piece := packer.add(item):
            yield piece
    if tail := packer.flush():
        yield tail


async def ndjson_apieces(items: Items) -> AsyncIterator[bytes]:
    """NDJSON pieces of sync or async items, for the asyncio shell."""
    if not isinstance(items, AsyncIterable):
        for piece in ndjson_pieces(items):
            yield piece
        return
    packer = NdjsonPacker()
    async for item in items:
        if piece := packer.add(item):
            yield piece
    if tail := packer.flush():
        yield tail


class Body:
    """A request body: exactly one of `data`, `path`, `file` or `items` is set.

    `replayable` says whether a retry can send it again: bytes, a path, a seekable file
    and a re-iterable collection can; an iterator, an async iterator and a pipe cannot
    once their first piece was taken. The shells call `restart` before each send and pass
    every piece through `count`, which feeds `on_upload`.
    """

    def __init__(
        self,
        format: BatchFormat,
        *,
        data: bytes | None = None,
        path: str | os.PathLike[str] | None = None,
        file: Readable | None = None,
        items: Items | None = None,
        on_upload: UploadCallback | None = None,
    ) -> None:
        self.format = format
        self.data, self.path, self.file, self.items = data, path, file, items
        self.on_upload = on_upload
        self.total_bytes: int | None = len(data) if data is not None else None
        self.started = False
        self.sent_bytes = 0
        self._offset: int | None = None
        self._regular = True
        if path is not None:
            info = os.stat(path)  # also: a missing file fails here, early
            self._regular = stat.S_ISREG(info.st_mode)  # not a pipe such as /dev/stdin
            self.total_bytes = info.st_size if self._regular else None
        if file is not None and _seekable(file):
            self._offset = file.tell()  # type: ignore[attr-defined]  # _seekable checked it

    @classmethod
    def of_json(cls, value: Any) -> Body:
        return cls(BatchFormat.JSON, data=dump_json(value))

    @classmethod
    def of_source(
        cls,
        source: FileSource | Items,
        format: BatchFormat | str | None = None,
        on_upload: UploadCallback | None = None,
    ) -> Body:
        """A path or binary file object sent as it is, or items sent as NDJSON."""
        if is_path(source):
            return cls(file_format(source, format), path=source, on_upload=on_upload)
        if _is_readable(source):
            return cls(file_format(source, format), file=source, on_upload=on_upload)
        return cls(BatchFormat.NDJSON, items=cast(Items, source), on_upload=on_upload)

    @property
    def media_type(self) -> str:
        return self.format.value

    @property
    def replayable(self) -> bool:
        """Whether the body can be sent again after its first piece was taken."""
        if self.file is not None:
            return self._offset is not None
        if self.path is not None:
            return self._regular
        if self.items is not None:
            return not isinstance(self.items, Iterator | AsyncIterator)
        return True

    @property
    def resendable(self) -> bool:
        """Whether a retry may send this body now."""
        return self.replayable or not self.started

    def restart(self) -> None:
        """Get ready to send the body (again): rewind a seekable file, reset the count."""
        if self.started and self._offset is not None:
            self.file.seek(self._offset)  # type: ignore[union-attr]  # set with the file
        self.started = False
        self.sent_bytes = 0

    def content(self, stream: Callable[[Body], S]) -> bytes | S:
        """What a shell gives httpx: bytes in memory as they are (sent with a length), else
        `stream(self)`, the shell's reader of the body's pieces (which passes each through
        `count`)."""
        if self.data is not None:
            return self.count(self.data)
        return stream(self)

    def count(self, piece: bytes) -> bytes:
        """Note a piece on its way out; returns it."""
        self.started = True
        self.sent_bytes += len(piece)
        if self.on_upload is not None:
            self.on_upload(self.sent_bytes, self.total_bytes)
        return piece


def _is_readable(source: object) -> TypeGuard[Readable]:
    return callable(getattr(source, "read", None))


def _seekable(file: object) -> bool:
    seekable = getattr(file, "seekable", None)
    try:
        return bool(seekable and seekable())
    except (OSError, ValueError):
        return False


class Output:
    """Where a result goes: a path (created only once the result arrives) or a binary file.

    The shells pass every piece through `take` and then write `ending()`: a newline when
    the result does not end with one (a JSON result gets its line ended too).
    """

    def __init__(self, target: FileTarget) -> None:
        self.path: str | os.PathLike[str] | None = None
        self.file: IO[bytes] | None = None
        if is_path(target):
            self.path = target
        else:
            self.file = cast(IO[bytes], target)
        self.written_bytes = 0
        self._last = b""

    def take(self, piece: bytes) -> bytes:
        if piece:
            self.written_bytes += len(piece)
            self._last = piece[-1:]
        return piece

    def ending(self) -> bytes:
        tail = b"\n" if self._last not in (b"\n", b"") else b""
        self.written_bytes += len(tail)
        self._last = tail or self._last
        return tail

    def restart(self) -> None:
        """Forget what was written: the result is being written again from its start."""
        self.written_bytes = 0
        self._last = b""
