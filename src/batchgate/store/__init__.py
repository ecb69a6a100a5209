"""Store backends, chosen by URL scheme."""

from __future__ import annotations

from batchgate.store.base import Store
from batchgate.urls import load_backend

BACKENDS = {
    "memory": "batchgate.store.memory",
    "file": "batchgate.store.file",
    "s3": "batchgate.store.s3",
}

__all__ = ["BACKENDS", "Store", "open_store"]


async def open_store(url: str) -> Store:
    """Open the store backend named by `url` (file:///…, s3://bucket/prefix, memory://)."""
    store: Store = await load_backend("store", url, BACKENDS)
    return store
