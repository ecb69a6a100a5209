"""Batch bodies of map jobs: cut a streamed JSON array or NDJSON body into NDJSON chunks,
and join per-chunk NDJSON results back into one JSON array or NDJSON stream.

The chunk format, for inputs and results alike: one item per line, each line one complete
JSON value with no raw newline, tab or carriage return, every line ending in `\\n`.
An NDJSON line keeps its text; so does an object or array item of a JSON array; scalar
items of an array are re-dumped compactly. Raw tabs, CRs and newlines (whitespace, in
valid JSON) are dropped, so a chunk's bytes depend only on the body, never on how it was
split into reads. Nothing here does I/O besides iterating the iterables it is given.
"""

from __future__ import annotations

import codecs
import enum
import json
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from itertools import repeat
from typing import Any

from batchgate import strictjson
from batchgate.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

try:  # the C encoder called directly: ~3x faster than JSONEncoder.encode per item
    from _json import make_encoder as _c_make_encoder
except ImportError:  # pragma: no cover - every CPython has it
    _c_make_encoder = None  # type: ignore[assignment,misc]

NDJSON_MEDIA_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
_JSON_WS = " \t\n\r"
_SKIP_WS = re.compile(r"[ \t\n\r]*")
_CONTAINER_OR_STRING = re.compile(r'["\[{]')
# Text parsed per JSON-array attempt: bounds the values held at once for a huge read.
_WINDOW_CHARS = 1 << 20
# NDJSON lines validated per json.loads call (a longer list only adds GC work).
_VALIDATE_LINES = 4096
# A parse failure this close to the end of buffered text may just be a truncated token.
_TRUNCATION_SLACK = 16


class BatchFormat(enum.StrEnum):
    """The two wire formats of a batch; the value is the media type."""

    JSON = "application/json"
    NDJSON = "application/x-ndjson"

    @classmethod
    def from_content_type(cls, header: str | None) -> BatchFormat:
        """The format of a request body; a missing header means JSON.

        Raises UnsupportedMediaType for anything but JSON (`+json` too) or NDJSON.
        """
        media = (header or "").split(";", 1)[0].strip().lower()
        if not media or media == "application/json" or media.endswith("+json"):
            return cls.JSON
        if media in NDJSON_MEDIA_TYPES:
            return cls.NDJSON
        raise UnsupportedMediaType(
            f"a batch is sent as application/json (a JSON array of items) or "
            f"application/x-ndjson (one JSON item per line), not {media!r}"
        )

    @classmethod
    def from_accept(cls, header: str | None, default: BatchFormat | None = None) -> BatchFormat:
        """The result format an `Accept` header asks for; `default` (JSON) if it names neither.

        Weights (`q`) decide; `*/*` and `application/*` count for both formats; a tie goes
        to the type named explicitly, then to the one named first, then to `default`.
        """
        weights: dict[BatchFormat, float] = {}
        named: list[BatchFormat] = []
        wildcard = -1.0
        for part in (header or "").split(","):
            media, *params = (p.strip() for p in part.split(";"))
            q = 1.0
            for param in params:
                name, _, value = param.partition("=")
                if name.strip().lower() == "q":
                    try:
                        q = float(value)
                    except ValueError:
                        q = 0.0
            media = media.lower()
            if media in ("*/*", "application/*"):
                wildcard = max(wildcard, q)
                continue
            if media in NDJSON_MEDIA_TYPES:
                fmt = cls.NDJSON
            elif media == "application/json" or media.endswith("+json"):
                fmt = cls.JSON
            else:
                continue
            weights[fmt] = max(weights.get(fmt, q), q)
            if fmt not in named:
                named.append(fmt)
        fallback = cls.JSON if default is None else default
        q_json = weights.get(cls.JSON, wildcard)
        q_ndjson = weights.get(cls.NDJSON, wildcard)
        if max(q_json, q_ndjson) <= 0:
            return fallback
        if q_json != q_ndjson:
            return cls.JSON if q_json > q_ndjson else cls.NDJSON
        return named[0] if named else fallback


def cut_chunks(
    body: AsyncIterable[bytes], fmt: BatchFormat, chunk_size: int, max_items: int
) -> ChunkCutter:
    """Cut a streamed batch body into NDJSON chunks of `chunk_size` items.

    Returns an async iterator of chunk blobs (the last may be shorter; an empty batch
    yields none) whose `items`, `chunks` and `bytes_read` attributes count what it has
    yielded and read so far. Memory stays near one chunk plus one read, whatever the
    body's size. Raises BadRequest for a malformed body and PayloadTooLarge as soon as
    the batch passes `max_items`, without reading the rest.
    """
    return ChunkCutter(body, fmt, chunk_size, max_items)


class ChunkCutter:
    """The async iterator `cut_chunks` returns: `async for blob in cutter: ...`.

    After each blob, `items` is the number of items in the blobs yielded so far (the
    batch's total once exhausted), `chunks` their number, `bytes_read` the body bytes
    consumed. A blob's own item count is `blob.count(b"\\n")`.
    """

    def __init__(
        self, body: AsyncIterable[bytes], fmt: BatchFormat, chunk_size: int, max_items: int
    ) -> None:
        if chunk_size < 1 or max_items < 0:
            raise ValueError("chunk_size must be >= 1 and max_items >= 0")
        self.items = 0
        self.chunks = 0
        self.bytes_read = 0
        splitter: _Splitter = (
            _NdjsonSplitter(chunk_size, max_items)
            if fmt == BatchFormat.NDJSON
            else _ArraySplitter(chunk_size, max_items)
        )
        self._gen = self._run(body, splitter)

    def __aiter__(self) -> ChunkCutter:
        return self

    async def __anext__(self) -> bytes:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop early: the body is not read any further."""
        await self._gen.aclose()

    async def _run(
        self, body: AsyncIterable[bytes], splitter: _Splitter
    ) -> AsyncGenerator[bytes, None]:
        async for piece in body:
            self.bytes_read += len(piece)
            for blob, count in splitter.feed(piece):
                self.items += count
                self.chunks += 1
                yield blob
        for blob, count in splitter.finish():
            self.items += count
            self.chunks += 1
            yield blob


async def join_results(chunks: AsyncIterable[bytes], fmt: BatchFormat) -> AsyncIterator[bytes]:
    """Stream the whole result from per-chunk NDJSON result blobs given in input order.

    JSON gives `[item,item,...]` (`[]` for no items); NDJSON gives the lines unchanged.
    Items are not parsed: a JSON string never holds a raw newline, so `\\n` separates items.
    """
    first = True
    async for blob in chunks:
        lines = _tidy_lines(blob)
        if not lines:
            continue
        if fmt == BatchFormat.NDJSON:
            yield lines
        else:
            yield (b"[" if first else b",") + lines[:-1].replace(b"\n", b",")
        first = False
    if fmt != BatchFormat.NDJSON:
        yield b"[]" if first else b"]"


def _tidy_lines(blob: bytes) -> bytes:
    """The blob's non-blank lines, each ending in a newline."""
    if b"\n\n" in blob or blob.startswith(b"\n"):
        return b"".join(line + b"\n" for line in blob.split(b"\n") if line)
    return blob if not blob or blob.endswith(b"\n") else blob + b"\n"


# -- the splitters: synchronous, fed one read at a time ----------------------------------


# Every item obeys the strict JSON rules (see `batchgate.strictjson`): the C parser finds
# the items, then `strictjson.check` applies the rules to their text.
_DECODER = strictjson.PLAIN


def _no_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")  # unreachable for parsed values


def _list_encoder() -> Callable[[list[Any]], Iterable[str]]:
    """A function from a list of values to their compact JSON texts, one per value."""
    if _c_make_encoder is not None:
        quote = json.encoder.encode_basestring
        encode = _c_make_encoder(None, _no_default, quote, None, ":", ",", False, False, False)
        return lambda values: map("".join, map(encode, values, repeat(0)))
    one = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return lambda values: map(one.encode, values)


_ENCODE = _list_encoder()
# The gap between two objects (arrays) in an array; elsewhere in valid JSON this text can
# only sit inside a string.
_BETWEEN = {
    "{": re.compile(r"\}[ \t\n\r]*,[ \t\n\r]*\{"),
    "[": re.compile(r"\][ \t\n\r]*,[ \t\n\r]*\["),
}


class _Splitter:
    """Shared bookkeeping: the item count, the max_items cap, and cutting full chunks."""

    def __init__(self, chunk_size: int, max_items: int) -> None:
        self.chunk_size = chunk_size
        self.max_items = max_items
        self.items = 0  # items parsed so far, including those not yet in a chunk
        self._pending: list[str] = []  # one compact JSON text per item

    def feed(self, piece: bytes) -> list[tuple[bytes, int]]:
        raise NotImplementedError

    def finish(self) -> list[tuple[bytes, int]]:
        raise NotImplementedError

    def _encode(self, lines: list[str]) -> bytes:
        text = "\n".join(lines) + "\n"
        if "\r" in text or "\t" in text:
            # Raw tabs and CRs cannot sit inside a valid JSON string: they are whitespace.
            text = text.replace("\r", "").replace("\t", "")
        return text.encode()  # no lone surrogate: the strict rules refused those

    def _check_count(self, more: int) -> None:
        if self.items + more > self.max_items:
            raise PayloadTooLarge(f"the batch has more than {self.max_items} items")

    def _take(self, final: bool) -> list[tuple[bytes, int]]:
        pending, size = self._pending, self.chunk_size
        end = len(pending) if final else len(pending) - len(pending) % size
        chunks = [pending[i : i + size] for i in range(0, end, size)]
        del pending[:end]
        return [(self._encode(chunk), len(chunk)) for chunk in chunks]


class _NdjsonSplitter(_Splitter):
    """NDJSON: split on newlines with bytes methods, validate many lines per parse."""

    def __init__(self, chunk_size: int, max_items: int) -> None:
        super().__init__(chunk_size, max_items)
        self._partial: list[bytes] = []  # the current line's pieces, until its newline
        self._lines_before = 0  # physical lines already handled, for error messages
        self._offset = 0  # byte offset of the first unhandled byte

    def feed(self, piece: bytes) -> list[tuple[bytes, int]]:
        newline = piece.rfind(b"\n")
        if newline < 0:
            if piece:
                self._partial.append(piece)
            return []
        self._partial.append(piece[:newline])
        region = b"".join(self._partial)
        rest = piece[newline + 1 :]
        self._partial = [rest] if rest else []
        self._handle(region, newline_after=True)
        return self._take(final=False)

    def finish(self) -> list[tuple[bytes, int]]:
        if self._partial:
            self._handle(b"".join(self._partial), newline_after=False)
            self._partial = []
        return self._take(final=True)

    def _handle(self, region: bytes, newline_after: bool) -> None:
        """Validate the complete lines in `region` (joined by newlines) and queue them."""
        first_line = self._lines_before + 1
        try:
            text = region.decode()
        except UnicodeDecodeError as exc:
            line = first_line + region.count(b"\n", 0, exc.start)
            raise BadRequest(
                f"line {line}: not valid UTF-8 ({exc.reason}) at byte {self._offset + exc.start}"
            ) from None
        if self._lines_before == 0 and text.startswith("\ufeff"):
            text = text[1:]
        raw = text.split("\n")
        self._lines_before += len(raw)
        self._offset += len(region) + newline_after
        if " " in text or "\t" in text or "\r" in text:
            stripped = list(map(str.strip, raw, repeat(_JSON_WS)))
        else:
            stripped = raw
        lines = list(filter(None, stripped))
        if not lines:
            return
        self._check_count(len(lines))
        for start in range(0, len(lines), _VALIDATE_LINES):
            if not _valid_lines(lines[start : start + _VALIDATE_LINES]):
                _raise_bad_line(raw, stripped, first_line)
                break  # it parsed every line of the region alone and found them all fine
        self.items += len(lines)
        self._pending.extend(lines)


def _valid_lines(lines: list[str]) -> bool:
    """Whether each line is exactly one JSON value, checked in one parse.

    Lines are joined as `[L1,"S",L2,"S",...]` with a separator value S no client can
    know in advance. A raw newline in the joint keeps it out of client strings, so if
    the parse holds every S at the odd places, each S (and so each joint) sits at the
    top level and exactly one value lies between two of them: every line is one value.
    """
    if len(lines) == 1:
        text = "[" + lines[0] + "]"
        sentinel = ""
    elif _CONTAINER_OR_STRING.search(joined := ",".join(lines)) is None:
        # Numbers and literals only: lines cannot merge, so n items means one per line.
        text = "[" + joined + "]"
        try:
            values = _DECODER.decode(text)
            strictjson.check(text, values, extra_depth=1)
        except (ValueError, RecursionError):
            return False
        return len(values) == len(lines)
    else:
        sentinel = _sentinel()
        text = "[" + f',\n"{sentinel}",\n'.join(lines) + "]"
    try:
        values = _DECODER.decode(text)
        strictjson.check(text, values, extra_depth=1)
    except (ValueError, RecursionError):
        return False
    return len(values) == 2 * len(lines) - 1 and values[1::2].count(sentinel) == len(lines) - 1


def _sentinel() -> str:
    # Random per call: a client cannot plant it, so a match proves the joint is ours.
    return secrets.token_hex(8)


def _raise_bad_line(raw: list[str], stripped: list[str], first_line: int) -> None:
    """Parse lines one by one and raise BadRequest for the first broken one."""
    for index, line in enumerate(stripped):
        if not line:
            continue
        indent = len(raw[index]) - len(raw[index].lstrip(_JSON_WS))
        problem = _parse_problem(line)
        if problem is not None:
            reason, column = problem
            where = f" (column {indent + column + 1})" if column is not None else ""
            raise BadRequest(f"line {first_line + index}: not valid JSON: {reason}{where}")


def _parse_problem(line: str) -> tuple[str, int | None] | None:
    """Why `line` is not exactly one JSON value, and where; None when it is."""
    try:
        _, end = strictjson.raw_decode(line)
    except json.JSONDecodeError as exc:
        return _reason(exc), exc.pos
    except strictjson.JsonRejected as exc:
        return str(exc), None
    except ValueError:
        return "a number is out of range (too many digits)", None
    if end != len(line):
        return "unexpected data after the value", end
    return None


class _ArraySplitter(_Splitter):
    """A JSON array: parse windows ending at a top-level comma in one call each."""

    _START, _FIRST, _ITEM, _END = range(4)

    def __init__(self, chunk_size: int, max_items: int) -> None:
        super().__init__(chunk_size, max_items)
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._state = self._START
        self._buf = ""  # decoded text; self._pos is the first unhandled character
        self._pos = 0
        self._incoming: list[str] = []  # text not yet appended to _buf
        self._incoming_chars = 0
        self._want_chars = 0  # don't parse again before this much text is buffered
        self._buf_offset = 0  # byte offset of _buf[0] in the body
        self._fed = 0  # bytes given to the UTF-8 decoder

    def feed(self, piece: bytes) -> list[tuple[bytes, int]]:
        self._receive(piece, final=False)
        if len(self._buf) - self._pos + self._incoming_chars >= self._want_chars:
            self._parse(eof=False)
        return self._take(final=False)

    def finish(self) -> list[tuple[bytes, int]]:
        self._receive(b"", final=True)
        self._parse(eof=True)
        if self._state == self._START:
            raise BadRequest("the body is empty: a map function expects a JSON array of items")
        if self._state != self._END:
            raise BadRequest(
                f"the JSON array is not closed: the body ends after {self.items} items "
                f"(byte {self._byte_offset(len(self._buf))})"
            )
        return self._take(final=True)

    def _queue(self, lines: list[str]) -> None:
        self._check_count(len(lines))
        self.items += len(lines)
        self._pending.extend(lines)

    def _lines(self, values: list[Any], text: str) -> list[str] | None:
        """One line per value, the same however the body was split into reads: objects and
        arrays keep their source text (less raw newlines, which can only be whitespace),
        scalars are dumped compactly. None if `text` does not cut cleanly into the values.
        """
        kinds = set(map(type, values))
        if not kinds & {dict, list}:
            return _dump_scalars(values)
        if len(kinds) != 1:
            return None
        if "\n" in text:
            text = text.replace("\n", "")
        # Each gap between two objects (arrays) matches _BETWEEN: if the text holds just
        # n-1 matches, they are the gaps.
        opening = "{" if dict in kinds else "["
        closing = "}" if dict in kinds else "]"
        joined, gaps = _BETWEEN[opening].subn(closing + "\n" + opening, text)
        if gaps != len(values) - 1:
            return None
        return joined.rstrip(_JSON_WS).split("\n")

    def _receive(self, piece: bytes, final: bool) -> None:
        try:
            text = self._decoder.decode(piece, final)
        except UnicodeDecodeError as exc:
            held = len(self._decoder.getstate()[0])
            at = self._fed - held + exc.start
            raise BadRequest(f"the body is not valid UTF-8 ({exc.reason}) at byte {at}") from None
        self._fed += len(piece)
        if text:
            self._incoming.append(text)
            self._incoming_chars += len(text)

    def _compact(self) -> None:
        """Drop handled text and append what came in; both cost one copy of the rest."""
        buf, pos = self._buf, self._pos
        if pos:
            self._buf_offset += pos if buf.isascii() else len(buf[:pos].encode())
        self._buf = buf[pos:] + "".join(self._incoming)
        self._pos = 0
        self._incoming.clear()
        self._incoming_chars = 0

    def _byte_offset(self, index: int) -> int:
        buf = self._buf
        return self._buf_offset + (index if buf.isascii() else len(buf[:index].encode()))

    def _fail(self, message: str, index: int) -> BadRequest:
        return BadRequest(f"{message} (byte {self._byte_offset(index)})")

    def _parse(self, eof: bool) -> None:
        self._compact()
        self._want_chars = 0
        buf, pos, end = self._buf, 0, len(self._buf)
        if self._state == self._START and self._buf_offset == 0 and buf.startswith("\ufeff"):
            pos = 1
        windows_from = 0  # no window parse starts before this: one failed there already
        while True:
            pos = _skip_ws(buf, pos)
            if pos == end:
                break
            state = self._state
            if state == self._START:
                if buf[pos] != "[":
                    raise self._fail(
                        "a map function expects a JSON array of items (or NDJSON sent as "
                        f"application/x-ndjson), but the body starts with {buf[pos]!r}",
                        pos,
                    )
                pos += 1
                self._state = self._FIRST
            elif state == self._END:
                raise self._fail("unexpected data after the closing ']' of the array", pos)
            elif buf[pos] == "]":
                if state == self._ITEM:
                    raise self._fail(f"expected an item after item {self.items - 1}, not ']'", pos)
                pos += 1
                self._state = self._END
            else:
                if pos >= windows_from:
                    values, stop = self._window(buf, pos, end)
                    lines = None if values is None else self._lines(values, buf[pos : stop - 1])
                    if lines is not None:
                        self._queue(lines)
                        self._state = self._ITEM
                        pos = stop
                        continue
                    windows_from = stop
                after = self._one_item(buf, pos, end, eof)
                if after is None:
                    # Truncated item: parse again once the buffered text has doubled, so
                    # an item spanning many reads costs linear time, not quadratic.
                    self._want_chars = 2 * (end - pos)
                    break
                pos = after
        self._pos = pos

    def _window(self, buf: str, pos: int, end: int) -> tuple[list[Any] | None, int]:
        """Parse the items from `pos` up to a top-level comma in one call, if one is found.

        `[` + text + `]` parses only if the comma closing the text is at the array's top
        level (inside a string or a nested value it leaves something unclosed), so a
        successful parse proves the cut. Candidates are commas followed by a value that
        starts like the first one (`{` after `{`...), the likeliest separators.
        Returns the values and the position after the comma, or None and the position
        before which no other window need be tried.
        """
        kind = _kind(buf[pos])
        limit = min(end, pos + _WINDOW_CHARS)
        comma = buf.rfind(",", pos, limit)
        for _ in range(64):
            if comma <= pos:
                return None, limit
            nxt = _skip_ws(buf, comma + 1)
            if nxt < end and _kind(buf[nxt]) == kind:
                break
            comma = buf.rfind(",", pos, comma)
        else:
            return None, comma
        text = "[" + buf[pos:comma] + "]"
        try:
            values = _DECODER.decode(text)
            strictjson.check(text, values, extra_depth=1)
        except (ValueError, RecursionError):
            return None, comma  # a nested comma or a real error: _one_item tells which
        return values, comma + 1

    def _one_item(self, buf: str, pos: int, end: int, eof: bool) -> int | None:
        """Parse one item and its separator; the position after both, None if truncated."""
        index = self.items
        try:
            value, stop = _DECODER.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            truncated = exc.msg.startswith("Unterminated string") or (
                exc.pos >= end - _TRUNCATION_SLACK
            )
            if truncated and not eof:
                return None
            raise self._fail(f"item {index} is not valid JSON: {_reason(exc)}", exc.pos) from None
        except strictjson.JsonRejected as exc:
            raise self._fail(f"item {index} is not accepted: {exc}", pos) from None
        except ValueError:
            # A number with more digits than Python converts; it may still go on.
            if not eof:
                return None
            reason = "a number is out of range"
            raise self._fail(f"item {index} is not accepted: {reason}", pos) from None
        except RecursionError:
            limit = strictjson.MAX_DEPTH
            raise self._fail(f"item {index} nests more than {limit} levels deep", pos) from None
        sep = _skip_ws(buf, stop)
        if not eof and (sep == end or (buf[sep] not in ",]" and end - stop < _TRUNCATION_SLACK)):
            return None  # a number may go on, or the separator is yet to come
        if sep == end:
            raise self._fail(f"the JSON array is not closed: the body ends after item {index}", sep)
        if buf[sep] not in ",]":
            raise self._fail(f"expected ',' or ']' after item {index}, not {buf[sep]!r}", sep)
        try:
            strictjson.check(buf[pos:stop], value)
        except strictjson.JsonRejected as exc:
            raise self._fail(f"item {index} is not accepted: {exc}", pos) from None
        if isinstance(value, dict | list):
            self._queue([buf[pos:stop].replace("\n", "")])
        else:
            self._queue(_dump_scalars([value]))
        self._state = self._END if buf[sep] == "]" else self._ITEM
        return sep + 1


def _dump_scalars(values: list[Any]) -> list[str]:
    """Compact JSON texts of scalars (no dict or list among them)."""
    try:
        # One dump for the lot: if it holds exactly n-1 commas, they separate the values.
        whole = "".join(_ENCODE([values]))
        if whole.count(",") == len(values) - 1:
            return whole[1:-1].split(",")
        return list(_ENCODE(values))
    except ValueError as exc:
        raise BadRequest(f"an item holds a number JSON cannot carry: {exc}") from None


def _reason(exc: json.JSONDecodeError) -> str:
    # "Unterminated string starting at" reads oddly once the position moves elsewhere.
    return exc.msg.removesuffix(" at").removesuffix(" starting")


def _skip_ws(text: str, pos: int) -> int:
    match = _SKIP_WS.match(text, pos)
    return match.end() if match else pos


def _kind(char: str) -> str:
    return char if char in '{["' else "0"
