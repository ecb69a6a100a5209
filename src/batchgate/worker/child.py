"""The executor process: loads the app once, then runs one request at a time.

Protocol over the inherited stdin/stdout (moved to private fds so user `print` goes to
stderr): frames of a 4-byte big-endian length and a body. A request body is a mode byte
(`c` call, `m` map chunk), the function name, a newline and the payload: JSON for a call,
NDJSON items for a chunk. A reply is `\\x00` + JSON result (for a chunk: the number of failed
items, a newline, then one NDJSON result line per item), or `\\x01` + JSON
`{type, message[, index]}`.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import struct
import sys
from typing import IO, Any

from batchgate import strictjson
from batchgate.app import App, FunctionSpec, load_app
from batchgate.models import dumps

_LEN = struct.Struct(">I")
OK, ERR = b"\x00", b"\x01"
_ITEM_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class ItemFailed(Exception):
    """A map item raised under errors='fail'; carries the item's index."""

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


class Undecodable:
    """A chunk line that is not JSON under the rules: it fails alone, never its neighbours."""

    def __init__(self, exc: ValueError) -> None:
        self.exc = exc


class UndecodableItem(Exception):
    """Raised for an Undecodable item: running it again cannot help."""


def error_doc(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ItemFailed):
        doc = error_doc(exc.cause)
        doc["index"] = exc.index
        return doc
    if isinstance(exc, UndecodableItem):
        return undecodable_doc("UndecodableItem", exc)
    return {"type": type(exc).__name__, "message": str(exc) or repr(exc)}


def undecodable_doc(kind: str, exc: BaseException) -> dict[str, Any]:
    """The error of input that cannot be decoded; `final`: retrying it cannot help."""
    return {"type": kind, "message": f"not valid JSON: {exc}", "final": True}


def parse_chunk(payload: bytes) -> list[Any]:
    """A chunk's items (NDJSON); a line that does not decode becomes an Undecodable."""
    lines = payload.rstrip(b"\n")
    if not lines:
        return []
    try:
        items: list[Any] = strictjson.loads(b"[" + lines.replace(b"\n", b",") + b"]", extra_depth=1)
        if len(items) == lines.count(b"\n") + 1:
            return items
    except ValueError:
        pass  # a bad line (or more): decode line by line, so only those fail
    items = []
    for line in lines.split(b"\n"):
        try:
            items.append(strictjson.loads(line))
        except ValueError as exc:
            items.append(Undecodable(exc))
    return items


class Runner:
    """Calls registered functions, sync or async, on one private event loop."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()

    def call(self, spec: FunctionSpec, arg: Any) -> Any:
        result = spec.fn(arg)
        if spec.is_async:
            result = self.loop.run_until_complete(result)
        return result

    def handle(self, request: bytes) -> bytes:
        mode = request[:1]
        name, _, payload = request[1:].partition(b"\n")
        try:
            spec = self.app.spec(name.decode())
            if mode != b"m":
                try:
                    arg = strictjson.loads(payload)
                except ValueError as exc:
                    return ERR + dumps(undecodable_doc("UndecodablePayload", exc))
                return OK + dumps(self.call(spec, arg))
            results = self.run_chunk(spec, parse_chunk(payload))
            failed = sum(1 for r in results if isinstance(r, _ItemError))
            # One encoder for the whole chunk: json.dumps with options builds one per call.
            lines = "\n".join(map(_ITEM_ENCODER.encode, results)).encode() + b"\n"
            return OK + str(failed).encode() + b"\n" + (lines if results else b"")
        except Exception as exc:
            return ERR + dumps(error_doc(exc))

    def run_chunk(self, spec: FunctionSpec, items: list[Any]) -> list[Any]:
        """A map chunk: one result per item, failures collected or raised per the spec."""
        collect = spec.info.errors == "collect"
        bad = [i for i, item in enumerate(items) if isinstance(item, Undecodable)]
        if bad and not collect:
            raise ItemFailed(bad[0], UndecodableItem(items[bad[0]].exc))
        if spec.info.batched:
            good = [item for item in items if not isinstance(item, Undecodable)]
            returned = self.call(spec, good)
            if not isinstance(returned, list) or len(returned) != len(good):
                got = len(returned) if isinstance(returned, list) else type(returned).__name__
                raise TypeError(
                    f"batched function {spec.info.name!r} must return a list of "
                    f"{len(good)} results, got {got}"
                )
            if not bad:
                return returned
            ran = iter(returned)
            return [
                _undecodable_item(item) if isinstance(item, Undecodable) else next(ran)
                for item in items
            ]
        results: list[Any] = []
        for index, item in enumerate(items):
            if isinstance(item, Undecodable):
                results.append(_undecodable_item(item))
                continue
            try:
                results.append(self.call(spec, item))
            except Exception as exc:
                if spec.info.errors != "collect":
                    raise ItemFailed(index, exc) from exc
                results.append(_ItemError(error=error_doc(exc)))
        return results


class _ItemError(dict[str, Any]):
    """A collected item failure: serialised as {"error": {type, message}}, counted as failed."""


def _undecodable_item(item: Undecodable) -> _ItemError:
    doc = undecodable_doc("UndecodableItem", item.exc)
    return _ItemError(error={"type": doc["type"], "message": doc["message"]})


def _read_exact(stream: IO[bytes], size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        piece = stream.read(size - len(buf))
        if not piece:
            return None
        buf += piece
    return bytes(buf)


def _write_frame(stream: IO[bytes], body: bytes) -> None:
    stream.write(_LEN.pack(len(body)) + body)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (kill -9 of the worker)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(app_ref: str) -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the worker decides when executors stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    runner = Runner(load_app(app_ref))
    _write_frame(proto_out, b"ready")
    while True:
        header = _read_exact(proto_in, _LEN.size)
        if header is None:
            return
        request = _read_exact(proto_in, _LEN.unpack(header)[0])
        if request is None:
            return
        _write_frame(proto_out, runner.handle(request))


if __name__ == "__main__":
    main(sys.argv[1])
