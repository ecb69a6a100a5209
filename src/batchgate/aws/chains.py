"""Feeder chains: their leased tokens in Redis, and the kill switch in the store.

A chain is one feeder invocation after another, each started by the one before. It lives
while its token does: the key `<prefix>chain:<token>`, which each hop renews every
BEAT_INTERVAL_S with an expiry of TTL_S (`SET … XX EX`, so a retired token is never
revived). The set `<prefix>chains` lists the tokens the controller started; a member whose
key has expired belongs to a chain that died (a hop crashed or was never invoked), and the
controller replaces it. Every key shares the state URL's prefix, so on a cluster-mode cache
(ElastiCache Serverless) its hash tag keeps them in one slot.

The kill switch is the store object `control/keep-feeding` (an S3 object on AWS, which an
operator can remove from anywhere): while it is absent, hops do not re-invoke themselves
and the controller starts no chain.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from typing import Any

from batchgate.errors import NotFound
from batchgate.redis_db import client, split_url, translate
from batchgate.store import Store

KEEP_FEEDING_KEY = "control/keep-feeding"
# A hop renews its token this often; a token not renewed for TTL_S belongs to a dead chain.
BEAT_INTERVAL_S = 10.0
TTL_S = 60
# The state URL's own query parameters (see state/redis.py), which chains ignore.
_STATE_PARAMS = frozenset({"ttl"})


@dataclasses.dataclass(frozen=True, slots=True)
class Chain:
    token: str
    started_at: float
    hop: int
    beat_at: float

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()


class Chains:
    """The live feeder chains of one deployment, in the Redis that holds its job state."""

    def __init__(self, redis: Any, prefix: str, ttl_s: int = TTL_S) -> None:
        self._redis = redis
        self._set = prefix + "chains"
        self._prefix = prefix + "chain:"
        self.ttl_s = ttl_s

    @classmethod
    def open(cls, state_url: str, ttl_s: int = TTL_S) -> Chains:
        plain, prefix, _ = split_url(state_url, _STATE_PARAMS)
        return cls(client(plain), prefix, ttl_s)

    @translate("feeder chains")
    async def start(self, count: int) -> list[Chain]:
        """Lease `count` new tokens (their chains' first hops are the caller's to invoke)."""
        now = time.time()
        chains = [Chain(secrets.token_urlsafe(16), now, 0, now) for _ in range(count)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for chain in chains:
                pipe.set(self._prefix + chain.token, chain.to_json(), ex=self.ttl_s)
                pipe.sadd(self._set, chain.token)
            await pipe.execute()
        return chains

    @translate("feeder chains")
    async def beat(self, token: str, hop: int) -> bool:
        """Renew a token; False when it was retired or has expired (the chain must end)."""
        raw = await self._redis.get(self._prefix + token)
        if raw is None:
            return False
        chain = dataclasses.replace(Chain(**json.loads(raw)), hop=hop, beat_at=time.time())
        renewed = await self._redis.set(
            self._prefix + token, chain.to_json(), ex=self.ttl_s, xx=True
        )
        return bool(renewed)

    @translate("feeder chains")
    async def alive(self) -> tuple[list[Chain], list[str]]:
        """(live chains, oldest first; tokens of dead chains, now forgotten)."""
        tokens = sorted(t.decode() for t in await self._redis.smembers(self._set))
        if not tokens:
            return [], []
        values = await self._redis.mget([self._prefix + t for t in tokens])
        live = [Chain(**json.loads(v)) for v in values if v is not None]
        dead = [t for t, v in zip(tokens, values, strict=True) if v is None]
        if dead:
            await self._redis.srem(self._set, *dead)
        return sorted(live, key=lambda c: c.started_at), dead

    @translate("feeder chains")
    async def retire(self, tokens: list[str]) -> None:
        """End these chains: their next beat fails and they do not re-invoke."""
        if tokens:
            await self._redis.delete(*(self._prefix + t for t in tokens))
            await self._redis.srem(self._set, *tokens)

    async def aclose(self) -> None:
        await self._redis.aclose()


async def keep_feeding(store: Store) -> bool:
    """Is the kill switch on (the `control/keep-feeding` object present)?"""
    try:
        await store.get(KEEP_FEEDING_KEY)
    except NotFound:
        return False
    return True


async def set_keep_feeding(store: Store, on: bool) -> None:
    """Turn feeding on (write the object) or off (remove it)."""
    if on:
        await store.put(KEEP_FEEDING_KEY, b"chains may run while this object exists\n")
    else:
        await store.delete([KEEP_FEEDING_KEY])
