"""State backends, chosen by URL scheme."""

from __future__ import annotations

from batchgate.state.base import State, Watch
from batchgate.urls import load_backend

BACKENDS = {
    "memory": "batchgate.state.memory",
    "sqlite": "batchgate.state.sqlite",
    "redis": "batchgate.state.redis",
    "rediss": "batchgate.state.redis",
}

__all__ = ["BACKENDS", "State", "Watch", "open_state"]


async def open_state(url: str) -> State:
    """Open the state backend named by `url` (sqlite:///…, redis://…, memory://)."""
    state: State = await load_backend("state", url, BACKENDS)
    return state
