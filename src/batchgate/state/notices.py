"""In-process job notices: the embedded and memory state backends' pub/sub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class LocalWatch:
    """One subscriber's mailbox: a flag set by each notice, cleared by each wait."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait_notice(self, timeout_s: float) -> bool:
        if not self._event.is_set():
            try:
                async with asyncio.timeout(timeout_s):
                    await self._event.wait()
            except TimeoutError:
                return False
        self._event.clear()
        return True


class LocalNotices:
    """Fans notices for a job id out to the watches registered in this process."""

    def __init__(self) -> None:
        self._watches: dict[str, set[LocalWatch]] = {}

    @asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[LocalWatch]:
        watch = LocalWatch()
        self._watches.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._watches.get(job_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[job_id]

    def publish(self, job_id: str) -> None:
        for watch in self._watches.get(job_id, ()):
            watch.notify()
