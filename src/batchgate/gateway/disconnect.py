"""Knowing when a waiting request's client has gone, so its wait can end at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.requests import Request


class DisconnectWatch:
    """Sets `gone` when the client of one request disconnects.

    It listens on the request's ASGI `receive` channel, so it may only start once the body
    has been read (`listen`); until then `gone` stays clear.
    """

    def __init__(self, request: Request) -> None:
        self._receive = request.receive
        self.gone = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    def listen(self) -> None:
        """Start listening; call it once the body has been read whole (or there is none)."""
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                return

    async def aclose(self) -> None:
        """Stop listening: the response needs the channel (a stream listens on its own)."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)


@contextlib.asynccontextmanager
async def disconnect_watch(request: Request) -> AsyncIterator[DisconnectWatch]:
    """A DisconnectWatch for the duration of a handler's wait."""
    watch = DisconnectWatch(request)
    try:
        yield watch
    finally:
        await watch.aclose()
