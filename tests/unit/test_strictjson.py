"""The strict JSON rules: one verdict for plain bodies, JSON-array items, NDJSON lines and
task messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from batchgate import strictjson
from batchgate.batches import BatchFormat, cut_chunks
from batchgate.errors import BadRequest
from batchgate.models import Task, loads, peek_job_id

# JSON texts whose syntax Python's parser takes, but which the rules refuse.
REFUSED = {
    "NaN": b"NaN",
    "Infinity": b"Infinity",
    "-Infinity": b"-Infinity",
    "nested NaN": b'{"a": [1, NaN]}',
    "float overflow": b"1e400",
    "negative overflow": b"-1e400",
    "float just over": b"1.8e308",
    "long mantissa": b"1" + b"0" * 250 + b"e99",
    "huge integer": b"1" + b"0" * 400,
    "int over Python's digit limit": b"9" * 5000,
    "lone high surrogate": b'"\\ud800"',
    "lone low surrogate": b'"\\udc00"',
    "reversed pair": b'"\\udc00\\ud800"',
    "surrogate in a key": b'{"\\uDBFF": 1}',
    "too deep": b"[" * (strictjson.MAX_DEPTH + 1) + b"]" * (strictjson.MAX_DEPTH + 1),
    "far too deep": b"[" * 100_000 + b"]" * 100_000,
    "BOM after the start": b'[1, "a"]\xef\xbb\xbf',
}

ACCEPTED: dict[str, tuple[bytes, Any]] = {
    "largest float": (b"1.7976931348623157e308", 1.7976931348623157e308),
    "underflow is zero": (b"1e-400", 0.0),
    "309-digit integer": (b"9" * 308, int("9" * 308)),
    "surrogate pair": (b'"\\ud83d\\ude00"', "\U0001f600"),
    "escaped backslash then u": (b'"\\\\ud800"', "\\ud800"),
    "brackets in a string": (b'["' + b"[" * 2000 + b'"]', ["[" * 2000]),
    "deepest allowed": (
        b"[" * strictjson.MAX_DEPTH + b"]" * strictjson.MAX_DEPTH,
        json.loads("[" * strictjson.MAX_DEPTH + "]" * strictjson.MAX_DEPTH),
    ),
    "many shallow objects": (
        json.dumps([{"a": [i, {"b": "]}"}]} for i in range(1000)]).encode(),
        [{"a": [i, {"b": "]}"}]} for i in range(1000)],
    ),
}


async def _body(data: bytes, piece: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


def cut_items(body: bytes, fmt: BatchFormat, piece: int = 7) -> list[Any]:
    async def run() -> list[Any]:
        blobs = [b async for b in cut_chunks(_body(body, piece), fmt, 3, 10**6)]
        return [json.loads(line) for blob in blobs for line in blob.splitlines()]

    return asyncio.run(run())


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_everywhere(name: str) -> None:
    text = REFUSED[name]
    with pytest.raises(ValueError):
        strictjson.loads(text)
    with pytest.raises(BadRequest):
        loads(text)  # a plain function's body
    piece = 1000 if len(text) > 10_000 else 7
    for fmt, body in ((BatchFormat.JSON, b"[1, " + text + b", 2]"), (BatchFormat.NDJSON,
                      b"1\n" + text + b"\n2\n")):  # fmt: skip
        with pytest.raises(BadRequest):
            cut_items(body, fmt, piece)
    payload = Task("job1", "fn", payload=text).encode()
    with pytest.raises(ValueError):
        Task.decode(payload)


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted_everywhere(name: str) -> None:
    text, value = ACCEPTED[name]
    assert strictjson.loads(text) == value
    assert loads(text) == value
    assert cut_items(b"[" + text + b"]", BatchFormat.JSON) == [value]
    assert cut_items(text + b"\n", BatchFormat.NDJSON) == [value]
    assert Task.decode(Task("job1", "fn", payload=text).encode()).payload is not None


def test_a_leading_bom_is_skipped_the_same_way_everywhere() -> None:
    bom = strictjson.BOM
    assert loads(bom + b'{"a": 1}') == {"a": 1}
    assert strictjson.strip_bom(bom + b"[]") == b"[]"
    assert cut_items(bom + b"[1, 2]", BatchFormat.JSON) == [1, 2]
    assert cut_items(bom + b"1\n2\n", BatchFormat.NDJSON) == [1, 2]
    with pytest.raises(BadRequest):
        cut_items(b"1\n" + bom + b"2\n", BatchFormat.NDJSON)


def test_messages_say_which_rule() -> None:
    def why(text: bytes) -> str:
        with pytest.raises(ValueError) as caught:
            strictjson.loads(text)
        return str(caught.value)

    assert "NaN" in why(b"[NaN]")
    assert "out of range" in why(b"[1e400]")
    assert "out of range" in why(b"9" * 5000)
    assert "surrogate" in why(b'"\\ud800"')
    assert f"more than {strictjson.MAX_DEPTH} levels" in why(b"[" * 600 + b"]" * 600)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b"[]", 1),
        (b'[[], {"a": [[]]}]', 4),
        (b'["]]]]", [1]]', 2),
        (b'["\\"[[[", {"a": [[]]}]', 4),
        (b'["\\\\", [[]]]', 3),
        (b"[" * 40 + b"]" * 40, 40),
        (b"[[" * 30 + b"]]" * 30 + b"[" * 50 + b"]" * 50, 60),
    ],
)
def test_depth_of(text: bytes, depth: int) -> None:
    assert strictjson.depth_of(text) == depth


def test_peek_job_id_reads_a_damaged_message() -> None:
    good = Task("AbC-d_9", "fn", payload=b"NaN").encode()
    assert peek_job_id(good) == "AbC-d_9"
    assert peek_job_id(good[:20] + b"\xff garbage") == "AbC-d_9"
    assert peek_job_id(b"not json") is None
    assert peek_job_id(b'{"job":"a/../b"}') is None
