"""Contract suite for the Store port, run against every backend in STORE_URLS."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from batchgate.errors import NotFound
from batchgate.store import Store, open_store
from batchgate.store.file import FileStore

pytestmark = pytest.mark.anyio

# One entry per backend: how to build its URL for a test (request gives access to fixtures).
STORE_URLS: dict[str, Callable[[pytest.FixtureRequest], str]] = {
    "memory": lambda request: "memory://",
    "file": lambda request: f"file://{request.getfixturevalue('tmp_path') / 'store'}",
    "s3": lambda request: request.getfixturevalue("s3_url"),
}


@pytest.fixture(params=list(STORE_URLS))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    backend = await open_store(STORE_URLS[request.param](request))
    try:
        yield backend
    finally:
        await backend.aclose()


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(store: Store, key: str, chunk_bytes: int = 1 << 16) -> bytes:
    return b"".join([piece async for piece in store.open_stream(key, chunk_bytes)])


async def test_put_get(store: Store) -> None:
    await store.put("results/job1", b'{"ok": true}')
    assert await store.get("results/job1") == b'{"ok": true}'


async def test_put_overwrites(store: Store) -> None:
    await store.put("k", b"first, longer value")
    await store.put("k", b"second")
    assert await store.get("k") == b"second"


async def test_empty_blob(store: Store) -> None:
    await store.put("empty", b"")
    assert await store.get("empty") == b""
    assert await read_all(store, "empty") == b""


async def test_binary_round_trip(store: Store) -> None:
    data = bytes(range(256)) * 4 + os.urandom(4096)
    await store.put("bin/all-bytes", data)
    assert await store.get("bin/all-bytes") == data
    assert await read_all(store, "bin/all-bytes", 1000) == data


async def test_large_blob_round_trip(store: Store) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    await store.put("big", data)
    assert await store.get("big") == data


async def test_get_missing_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.get("nope/missing")


async def test_put_stream_reassembles_exactly(store: Store) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    size = await store.put_stream("inputs/job/0", pieces(data, 7_919))
    assert size == len(data)
    assert await store.get("inputs/job/0") == data
    streamed = [piece async for piece in store.open_stream("inputs/job/0", 1 << 16)]
    assert b"".join(streamed) == data
    assert all(len(piece) <= 1 << 16 for piece in streamed)
    assert len(streamed) >= len(data) // (1 << 16)


async def test_put_stream_small_and_empty(store: Store) -> None:
    assert await store.put_stream("s", pieces(b"hello world", 3)) == 11
    assert await read_all(store, "s", 4) == b"hello world"
    assert await store.put_stream("e", pieces(b"", 3)) == 0
    assert await store.get("e") == b""


async def test_put_stream_failure_keeps_old_blob(store: Store) -> None:
    await store.put("k", b"old")

    async def broken() -> AsyncIterator[bytes]:
        yield b"new part"
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await store.put_stream("k", broken())
    assert await store.get("k") == b"old"
    assert await store.delete_prefix("") == 1  # no stray part left behind


async def test_open_stream_missing_raises_not_found(store: Store) -> None:
    stream = store.open_stream("nope")
    with pytest.raises(NotFound):
        await stream.__anext__()


async def test_delete(store: Store) -> None:
    await store.put("a/1", b"1")
    await store.put("a/2", b"2")
    await store.delete(["a/1", "a/missing"])
    await store.delete([])
    with pytest.raises(NotFound):
        await store.get("a/1")
    assert await store.get("a/2") == b"2"


async def test_delete_prefix(store: Store) -> None:
    for key in ("job1/in/0", "job1/in/1", "job1/out", "job10/in/0", "job2/in/0", "other"):
        await store.put(key, key.encode())
    assert await store.delete_prefix("job1/") == 3
    assert await store.delete_prefix("job1/") == 0
    assert await store.get("job10/in/0") == b"job10/in/0"
    assert await store.delete_prefix("job") == 2  # a plain string prefix, not a folder
    assert await store.get("other") == b"other"
    assert await store.delete_prefix("missing/") == 0
    await store.put("job1/in/0", b"again")  # the deleted folder can be written again
    assert await store.get("job1/in/0") == b"again"


async def test_presigned_url_is_str_or_none(store: Store) -> None:
    await store.put("k", b"v")
    url = await store.presigned_url("k", 60)
    assert url is None or isinstance(url, str)


# --- file store specifics: URLs, key validation, folders ------------------------------------

BAD_KEYS = ["", "/abs", "a//b", "a/", "..", "../x", "a/../b", ".", "a/./b", ".hidden", "a\\b"]


async def open_file_store(path: Path) -> FileStore:
    store = await open_store(f"file://{path}")
    assert isinstance(store, FileStore)
    return store


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_keys_that_could_escape_are_rejected(tmp_path: Path, key: str) -> None:
    store = await open_file_store(tmp_path / "root")
    with pytest.raises(ValueError):
        await store.put(key, b"x")
    with pytest.raises(ValueError):
        await store.get(key)
    with pytest.raises(ValueError):
        await store.delete([key])
    assert os.listdir(tmp_path) == ["root"]  # nothing written outside the root


@pytest.mark.parametrize("prefix", ["/abs", "../", "a/../", "a//"])
async def test_prefixes_that_could_escape_are_rejected(tmp_path: Path, prefix: str) -> None:
    store = await open_file_store(tmp_path / "root")
    with pytest.raises(ValueError):
        await store.delete_prefix(prefix)


async def test_keys_map_to_files_under_the_root(tmp_path: Path) -> None:
    store = await open_file_store(tmp_path / "root")
    await store.put("inputs/job/0", b"data")
    assert (tmp_path / "root" / "inputs" / "job" / "0").read_bytes() == b"data"
    assert sorted(p.name for p in (tmp_path / "root" / "inputs" / "job").iterdir()) == ["0"]


async def test_relative_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = await open_store("file:relative/blobs")
    await store.put("k", b"v")
    assert (tmp_path / "relative" / "blobs" / "k").read_bytes() == b"v"


async def test_delete_prefix_removes_emptied_folders(tmp_path: Path) -> None:
    store = await open_file_store(tmp_path / "root")
    await store.put("job/a/0", b"0")
    await store.put("job/b", b"1")
    assert await store.delete_prefix("job") == 2
    assert list((tmp_path / "root").iterdir()) == []


async def test_presigned_url_is_none(tmp_path: Path) -> None:
    store = await open_file_store(tmp_path / "root")
    await store.put("k", b"v")
    assert await store.presigned_url("k", 60) is None


async def test_a_fresh_store_is_healthy(store: Store) -> None:
    await store.check_health()  # raises BackendError when it could not take writes
