"""Batch formats: cutting streamed JSON-array and NDJSON bodies into chunks, joining results."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from batchgate.batches import BatchFormat, cut_chunks, join_results
from batchgate.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

JSON, NDJSON = BatchFormat.JSON, BatchFormat.NDJSON

ITEMS: list[Any] = [
    0,
    -17,
    1.5e-7,
    12345678901234567890,
    True,
    False,
    None,
    "plain",
    "ünïcødé ✓ 𝄞 中文",
    "line\nbreak\r\nand\ttab",
    'quotes " and \\ backslash',
    "] , [ { } : ,",
    "\u2028\u2029\x85",
    "",
    [],
    {},
    [1, [2, [3, [4]]]],
    {"nested": {"list": [1, {"x": "],["}], "s": "},{"}, "k,": ":"},
    [{"a": 1}, {"b": "x,y"}],
]


async def _pieces(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _split(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)] or [b""]


async def _cut(
    parts: Iterable[bytes], fmt: BatchFormat, chunk_size: int = 3, max_items: int = 10**6
) -> list[bytes]:
    cutter = cut_chunks(_pieces(parts), fmt, chunk_size, max_items)
    blobs = [blob async for blob in cutter]
    assert cutter.items == sum(blob.count(b"\n") for blob in blobs)
    assert cutter.chunks == len(blobs)
    assert cutter.bytes_read == sum(len(part) for part in parts)
    return blobs


def cut(
    body: bytes, fmt: BatchFormat, chunk_size: int = 3, piece: int = 7, max_items: int = 10**6
) -> list[bytes]:
    return asyncio.run(_cut(_split(body, piece), fmt, chunk_size, max_items))


def items_of(blobs: list[bytes], chunk_size: int) -> list[Any]:
    """Check the chunk format and return the items, in order."""
    items: list[Any] = []
    for index, blob in enumerate(blobs):
        assert blob.endswith(b"\n")
        lines = blob[:-1].split(b"\n")
        if index < len(blobs) - 1:
            assert len(lines) == chunk_size
        else:
            assert 1 <= len(lines) <= chunk_size
        for line in lines:
            assert line and b"\r" not in line and b"\t" not in line
            items.append(json.loads(line))
    return items


def join(blobs: list[bytes], fmt: BatchFormat) -> bytes:
    async def collect() -> bytes:
        return b"".join([piece async for piece in join_results(_pieces(blobs), fmt)])

    return asyncio.run(collect())


def ndjson(items: list[Any], newline: str = "\n", **dump: Any) -> bytes:
    return "".join(json.dumps(item, **dump) + newline for item in items).encode()


# -- media types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "fmt"),
    [
        (None, JSON),
        ("", JSON),
        ("application/json", JSON),
        ("application/json; charset=utf-8", JSON),
        ("application/vnd.acme.batch+json", JSON),
        ("application/x-ndjson", NDJSON),
        ("Application/X-NDJSON; charset=utf-8", NDJSON),
        ("application/jsonl", NDJSON),
    ],
)
def test_format_from_content_type(header: str | None, fmt: BatchFormat) -> None:
    assert BatchFormat.from_content_type(header) is fmt


@pytest.mark.parametrize("header", ["text/csv", "application/octet-stream", "text/plain"])
def test_unsupported_content_type_names_both_formats(header: str) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        BatchFormat.from_content_type(header)
    assert "application/json" in caught.value.message
    assert "application/x-ndjson" in caught.value.message
    assert header in caught.value.message


@pytest.mark.parametrize(
    ("header", "default", "fmt"),
    [
        (None, None, JSON),
        ("*/*", None, JSON),
        ("text/html", None, JSON),
        ("application/json", None, JSON),
        ("application/x-ndjson", None, NDJSON),
        ("application/x-ndjson, */*", None, NDJSON),
        ("application/json, application/x-ndjson", None, JSON),
        ("application/x-ndjson, application/json", None, NDJSON),
        ("application/json;q=0.5, application/x-ndjson", None, NDJSON),
        ("application/x-ndjson;q=0.5, application/json", None, JSON),
        ("application/x-ndjson;q=0", None, JSON),
        ("*/*", NDJSON, NDJSON),
        (None, NDJSON, NDJSON),
        ("application/json", NDJSON, JSON),
    ],
)
def test_format_from_accept(
    header: str | None, default: BatchFormat | None, fmt: BatchFormat
) -> None:
    assert BatchFormat.from_accept(header, default) is fmt


# -- round trips ------------------------------------------------------------------------------


BODIES = {
    "json-default": (JSON, json.dumps(ITEMS).encode()),
    "json-compact": (JSON, json.dumps(ITEMS, separators=(",", ":"), ensure_ascii=False).encode()),
    "json-indented": (JSON, json.dumps(ITEMS, indent=2).encode()),
    "json-tabs-crlf": (JSON, json.dumps(ITEMS, indent="\t").replace("\n", "\r\n").encode()),
    "ndjson": (NDJSON, ndjson(ITEMS)),
    "ndjson-utf8": (NDJSON, ndjson(ITEMS, ensure_ascii=False)),
    "ndjson-crlf": (NDJSON, ndjson(ITEMS, "\r\n")),
    "ndjson-no-final-newline": (NDJSON, ndjson(ITEMS).rstrip(b"\n")),
    "ndjson-blank-and-padded": (
        NDJSON,
        b"\n \n" + b"".join(b"  " + line + b" \t\r\n\n" for line in ndjson(ITEMS).splitlines()),
    ),
}


@pytest.mark.parametrize("name", sorted(BODIES))
@pytest.mark.parametrize("chunk_size", [1, 4, 100])
@pytest.mark.parametrize("piece", [1, 5, 64, 1 << 20])
def test_round_trip(name: str, chunk_size: int, piece: int) -> None:
    fmt, body = BODIES[name]
    blobs = cut(body, fmt, chunk_size, piece)
    assert items_of(blobs, chunk_size) == ITEMS
    assert json.loads(join(blobs, JSON)) == ITEMS
    assert [json.loads(line) for line in join(blobs, NDJSON).splitlines()] == ITEMS


@pytest.mark.parametrize("fmt", [JSON, NDJSON])
def test_every_split_point(fmt: BatchFormat) -> None:
    items = [*ITEMS[7:14], ITEMS[17]]
    body = json.dumps(items, ensure_ascii=False).encode() if fmt is JSON else ndjson(items)

    async def every_split() -> None:
        for at in range(len(body) + 1):
            blobs = await _cut([body[:at], body[at:]], fmt, chunk_size=2)
            assert items_of(blobs, 2) == items, at

    asyncio.run(every_split())


def test_multibyte_characters_split_across_reads() -> None:
    body = json.dumps(["é𝄞中"] * 5, ensure_ascii=False).encode()
    for fmt, data in ((JSON, body), (NDJSON, ndjson(["é𝄞中"] * 5, ensure_ascii=False))):
        assert items_of(cut(data, fmt, 2, piece=1), 2) == ["é𝄞中"] * 5


@pytest.mark.parametrize("fmt", [JSON, NDJSON])
def test_items_larger_than_a_read(fmt: BatchFormat) -> None:
    big = [
        "x" * 300_000,
        {"list": list(range(50_000)), "s": "a, b], {c"},
        1,
        [{"k": "v" * 1000}] * 200,
        "y" * 70_000,
    ]
    body = json.dumps(big).encode() if fmt is JSON else ndjson(big)
    for piece in (1000, 65536):
        assert items_of(cut(body, fmt, 2, piece), 2) == big


def test_array_of_objects_with_nested_commas_and_mixed_kinds() -> None:
    rng = random.Random(7)
    items: list[Any] = []
    for i in range(400):
        shape = i % 5
        if shape == 0:
            items.append({"xs": [{"a": i}, {"b": [i, i]}], "s": "},{"})
        elif shape == 1:
            items.append([{"a": 1}, {"b": 2}])
        elif shape == 2:
            items.append(f"s,{i}")
        elif shape == 3:
            items.append(rng.random())
        else:
            items.append({"id": i})
    for separators in ((",", ":"), (", ", ": ")):
        body = json.dumps(items, separators=separators).encode()
        for piece in (33, 4096):
            assert items_of(cut(body, JSON, 50, piece), 50) == items


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.randint(-(10**12), 10**12)
    if kind == 1:
        return rng.choice([True, False, None, 0.5, -2.25e10])
    if kind in (2, 3, 4):
        return "".join(rng.choice('ab ,]["{}:\\\n\té✓𝄞') for _ in range(rng.randrange(12)))
    if kind in (5, 6):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(_random_value(rng, 3)): _random_value(rng, depth + 1) for _ in range(3)}


@pytest.mark.parametrize("seed", range(6))
def test_random_batches(seed: int) -> None:
    rng = random.Random(seed)
    items = [_random_value(rng) for _ in range(rng.randrange(1, 300))]
    indent = rng.choice([None, 1, "\t"])
    ascii_only = rng.random() < 0.5
    array = json.dumps(items, indent=indent, ensure_ascii=ascii_only).encode()
    lines = ndjson(items, rng.choice(["\n", "\r\n"]), ensure_ascii=ascii_only)
    chunk_size = rng.randrange(1, 40)
    for fmt, body in ((JSON, array), (NDJSON, lines)):
        blobs = cut(body, fmt, chunk_size, rng.choice([1, 3, 17, 256, 10_000]))
        assert items_of(blobs, chunk_size) == items


def test_chunk_sizes_are_exact() -> None:
    body = json.dumps(list(range(1000))).encode()
    blobs = cut(body, JSON, chunk_size=7, piece=100)
    assert [blob.count(b"\n") for blob in blobs] == [7] * 142 + [6]


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        (JSON, b"[]"),
        (JSON, b" \r\n\t[ \n ]\n "),
        (JSON, "\ufeff[]".encode()),
        (NDJSON, b""),
        (NDJSON, b"\n\n \r\n\t\n"),
    ],
)
def test_empty_batch_yields_no_chunks(fmt: BatchFormat, body: bytes) -> None:
    assert cut(body, fmt, piece=1) == []


def test_join_of_no_chunks() -> None:
    assert join([], JSON) == b"[]"
    assert join([], NDJSON) == b""
    assert join([b"", b"\n"], JSON) == b"[]"


def test_whitespace_and_bom() -> None:
    body = '\ufeff\t[\n1 ,\r\n 2\n,"a b"]\n  '.encode()
    assert items_of(cut(body, JSON, 10, 1), 10) == [1, 2, "a b"]
    assert items_of(cut("\ufeff1\n2\n".encode(), NDJSON, 10), 10) == [1, 2]


def test_lone_surrogate_escapes_are_refused_and_pairs_kept() -> None:
    for fmt, body in ((JSON, b'["x", "\\ud800"]'), (NDJSON, b'"x"\n"\\ud800"\n')):
        assert "lone UTF-16 surrogate" in error(body, fmt, 5)
    for fmt, body in ((JSON, b'["\\ud83d\\ude00", "x"]'), (NDJSON, b'"\\ud83d\\ude00"\n"x"\n')):
        assert items_of(cut(body, fmt, 5), 5) == ["\U0001f600", "x"]


def test_join_results_formats() -> None:
    blobs = [b'1\n"a\\nb"\n', b'{"x":[1,2]}\n', b"", b"null", b"\n[3]\n\n"]
    assert json.loads(join(blobs, JSON)) == [1, "a\nb", {"x": [1, 2]}, None, [3]]
    assert join(blobs, NDJSON) == b'1\n"a\\nb"\n{"x":[1,2]}\nnull\n[3]\n'


def test_join_results_streams_per_chunk() -> None:
    async def pieces() -> list[bytes]:
        blobs = [b"1\n2\n", b"3\n"]
        return [piece async for piece in join_results(_pieces(blobs), JSON)]

    assert asyncio.run(pieces()) == [b"[1,2", b",3", b"]"]


# -- errors -----------------------------------------------------------------------------------


def error(body: bytes, fmt: BatchFormat, piece: int = 7, **kwargs: Any) -> str:
    with pytest.raises(BadRequest) as caught:
        cut(body, fmt, piece=piece, **kwargs)
    return caught.value.message


@pytest.mark.parametrize("body", [b'{"items": [1]}', b'"text"', b"5", b"x"])
@pytest.mark.parametrize("piece", [1, 100])
def test_json_body_must_be_an_array(body: bytes, piece: int) -> None:
    message = error(body, JSON, piece)
    assert "expects a JSON array of items" in message
    assert "byte 0" in message


def test_json_empty_body() -> None:
    assert "empty" in error(b"", JSON)
    assert "empty" in error(b"  \n", JSON)


@pytest.mark.parametrize("piece", [1, 4, 1000])
def test_malformed_item_gives_index_and_byte_offset(piece: int) -> None:
    body = b'[1, "\xc3\xa9", {"a": tru}, 4]'
    message = error(body, JSON, piece)
    assert "item 2" in message
    assert f"byte {body.index(b'tru')}" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[1 2]", "expected ',' or ']' after item 0"),
        (b"[1,]", "expected an item after item 0"),
        (b"[,1]", "item 0"),
        (b"[1,,2]", "item 1"),
        (b"[1] x", "after the closing ']'"),
        (b"[1][2]", "after the closing ']'"),
        (b"[1, 2", "not closed"),
        (b"[1, 2,", "not closed"),
        (b"[", "not closed"),
        (b'["abc', "item 0"),
        (b"[NaN]", "NaN"),
        (b"[1, -Infinity]", "Infinity"),
        (b"[1e400]", "number"),
        (b'["a\x01"]', "control character"),
        (b"[" * 50_000 + b"]" * 50_000, "levels deep"),
        (b"[" * 514 + b"]" * 514, "more than 512 levels deep"),
        (b"[1, " + b"9" * 5000 + b"]", "out of range"),
        (b"[1, " + b"9" * 400 + b"]", "out of range"),
        (b'[{"a": [1e400]}]', "out of range"),
        (b'[1, {"\\udc00": 1}]', "surrogate"),
    ],
)
@pytest.mark.parametrize("piece", [1, 3, 1 << 20])
def test_json_errors(body: bytes, expected: str, piece: int) -> None:
    if piece == 1 and len(body) > 1000:
        piece = 1000  # one-byte reads of 100 kB only make the test slow
    assert expected in error(body, JSON, piece)


def test_json_error_offsets_count_bytes_not_characters() -> None:
    body = '["ééé", "𝄞", x]'.encode()
    assert f"byte {body.index(b'x')}" in error(body, JSON, 2)


@pytest.mark.parametrize("fmt", [JSON, NDJSON])
@pytest.mark.parametrize("piece", [1, 5, 100])
def test_non_utf8(fmt: BatchFormat, piece: int) -> None:
    body = b'["ok", "\xff"]' if fmt is JSON else b'"ok"\n"\xff"\n'
    message = error(body, fmt, piece)
    assert "UTF-8" in message
    assert f"byte {body.index(0xFF)}" in message
    if fmt is NDJSON:
        assert "line 2" in message


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (b'1\n2\n{"a":\n4\n', 3),
        (b"1\r\n\r\n\n{x}\r\n", 4),
        (b"1\n{", 2),
        (b"1 2\n", 1),
        (b"1,2\n3\n", 1),
        (b"[1]]\n", 1),
        (b"NaN\n", 1),
        (b'"tab\there"\n', 1),
        # Two broken lines whose naive join is a valid two-item array: still caught.
        (b"[[1]\n[2]], [3]\n", 1),
        (b'"a,\nb",1\n', 1),
    ],
)
@pytest.mark.parametrize("piece", [1, 4, 1000])
def test_ndjson_broken_line(body: bytes, line: int, piece: int) -> None:
    message = error(body, NDJSON, piece)
    assert message.startswith(f"line {line}: not valid JSON")


def test_ndjson_line_numbers_count_across_reads() -> None:
    body = ndjson(list(range(5000))) + b"\n\n{oops}\n" + ndjson([1])
    assert error(body, NDJSON, 1000).startswith("line 5003:")


def test_ndjson_column() -> None:
    assert error(b'  {"a": x}\n', NDJSON) == "line 1: not valid JSON: Expecting value (column 9)"


# -- max_items --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [JSON, NDJSON])
def test_max_items_exactly_reached_is_fine(fmt: BatchFormat) -> None:
    items = list(range(10))
    body = json.dumps(items).encode() if fmt is JSON else ndjson(items)
    assert items_of(cut(body, fmt, 4, max_items=10), 4) == items


@pytest.mark.parametrize("fmt", [JSON, NDJSON])
@pytest.mark.parametrize("items_per_piece", [1, 50])
def test_max_items_stops_reading(fmt: BatchFormat, items_per_piece: int) -> None:
    pieces_read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pieces_read
        if fmt is JSON:
            yield b"["
        separator = "," if fmt is JSON else "\n"
        for start in range(0, 10_000, items_per_piece):
            pieces_read += 1
            yield "".join(f"{n}{separator}" for n in range(start, start + items_per_piece)).encode()

    async def run() -> None:
        async for _ in cut_chunks(body(), fmt, chunk_size=10, max_items=100):
            pass

    with pytest.raises(PayloadTooLarge) as caught:
        asyncio.run(run())
    assert "more than 100 items" in caught.value.message
    assert pieces_read <= 100 // items_per_piece + 2


def test_early_close_stops_reading() -> None:
    reads = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal reads
        for n in range(1000):
            reads += 1
            yield b"%d\n" % n

    async def run() -> None:
        cutter = cut_chunks(body(), NDJSON, 10, 10**6)
        async for _ in cutter:
            break
        await cutter.aclose()

    asyncio.run(run())
    assert reads == 10


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        cut_chunks(_pieces([]), JSON, 0, 10)


@pytest.mark.parametrize("seed", range(4))
def test_chunks_do_not_depend_on_read_sizes(seed: int) -> None:
    rng = random.Random(seed)
    items = [_random_value(rng) for _ in range(200)] + [{"id": n, "s": "a, b"} for n in range(200)]
    for fmt, body in (
        (JSON, json.dumps(items, indent=rng.choice([None, 2])).encode()),
        (NDJSON, ndjson(items)),
    ):
        expected = cut(body, fmt, 16, piece=len(body))
        for piece in (1, 9, 100, 4096):
            assert cut(body, fmt, 16, piece) == expected, piece
