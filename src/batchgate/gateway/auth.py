"""API keys: constant-time comparison, and the owner a key's jobs are filed under."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from batchgate.errors import Unauthorized


class ApiKeys:
    """The accepted keys; with none configured, every caller is the anonymous owner ''."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def owner(self, request: Request) -> str:
        """The owner id for the request's key; raises Unauthorized for a missing/bad key."""
        if not self._digests:
            return ""
        presented = request.headers.get("x-api-key")
        if presented is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else None
        if not presented:
            raise Unauthorized("send an API key as 'Authorization: Bearer KEY' or 'X-API-Key'")
        digest = hashlib.sha256(presented.encode()).digest()
        # Check every key, so the time taken says nothing about which (if any) matched.
        matched = False
        for candidate in self._digests:
            matched |= hmac.compare_digest(digest, candidate)
        if not matched:
            raise Unauthorized("the API key is not valid")
        return digest.hex()[:32]
