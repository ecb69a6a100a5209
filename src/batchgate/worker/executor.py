"""A pool of executor processes that run user code, one request per process at a time.

A call that passes its time limit, or is cancelled, kills its process; a process that dies
is replaced. The pool never shares a process between two calls, so killing one call
never harms another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
import sys
from typing import Any

from batchgate.errors import ConfigError
from batchgate.models import JobError

_LEN = struct.Struct(">I")
READY_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one call: JSON result bytes, or an error (with the failing item's index).

    `final`: the error comes from input that can never be run (it does not decode), so
    retrying cannot help.
    """

    result: bytes | None = None
    error: JobError | None = None
    index: int | None = None
    final: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class _Executor:
    """One child process and its framed pipe."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.writer = proc.stdin
        self.reader = proc.stdout

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def read_frame(self) -> bytes:
        header = await self.reader.readexactly(_LEN.size)
        return await self.reader.readexactly(_LEN.unpack(header)[0])

    async def call(self, request: bytes) -> bytes:
        self.writer.write(_LEN.pack(len(request)) + request)
        await self.writer.drain()
        return await self.read_frame()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


class ExecutorPool:
    """`size` executor processes running the app at `app_ref`."""

    def __init__(self, app_ref: str, size: int) -> None:
        if size < 1:
            raise ConfigError(f"the executor pool needs at least 1 process, got {size}")
        self.app_ref = app_ref
        self.size = size
        self._idle: asyncio.Queue[_Executor] = asyncio.Queue()
        self._all: set[_Executor] = set()
        self._spawning: set[asyncio.Task[None]] = set()
        self._closed = False
        self._broken: BaseException | None = None

    async def start(self) -> None:
        """Start every process and wait until each has imported the app."""
        executors = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for executor in executors:
            self._idle.put_nowait(executor)

    def pids(self) -> list[int]:
        return sorted(e.pid for e in self._all)

    @property
    def idle(self) -> int:
        return self._idle.qsize()

    async def run(self, mode: bytes, function: str, payload: bytes, timeout_s: float) -> Outcome:
        """Run `function` on `payload` (mode b"c" call, b"m" map chunk) within `timeout_s`.

        Cancelling this coroutine kills the process running the call.
        """
        if self._broken is not None:
            raise self._broken
        executor = await self._idle.get()
        request = mode + function.encode() + b"\n" + payload
        try:
            async with asyncio.timeout(timeout_s):
                reply = await executor.call(request)
        except TimeoutError:
            self._replace(executor)
            return Outcome(
                error=JobError("TimeoutError", f"{function} exceeded its {timeout_s:g} s limit")
            )
        except (asyncio.IncompleteReadError, ConnectionError):
            await executor.kill()
            self._replace(executor)
            code = executor.proc.returncode
            return Outcome(
                error=JobError("ExecutorLost", f"the executor process died (exit status {code})")
            )
        except BaseException:
            self._replace(executor)
            raise
        self._idle.put_nowait(executor)
        if reply[:1] == b"\x00":
            return Outcome(result=reply[1:])
        doc: dict[str, Any] = json.loads(reply[1:])
        error = JobError(doc["type"], doc["message"])
        return Outcome(error=error, index=doc.get("index"), final=bool(doc.get("final")))

    async def aclose(self) -> None:
        """Kill every process; calls in progress end with ExecutorLost."""
        self._closed = True
        for task in list(self._spawning):
            task.cancel()
        await asyncio.gather(*self._spawning, return_exceptions=True)
        await asyncio.gather(*(e.kill() for e in list(self._all)))

    async def _spawn(self) -> _Executor:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "batchgate.worker.child",
            self.app_ref,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        executor = _Executor(proc)
        self._all.add(executor)
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                hello = await executor.read_frame()
        except (asyncio.IncompleteReadError, TimeoutError):
            await executor.kill()
            self._all.discard(executor)
            raise ConfigError(
                f"executor process for {self.app_ref!r} failed to start "
                f"(exit status {proc.returncode}); its error is on stderr above"
            ) from None
        if hello != b"ready":
            raise ConfigError(f"executor process sent {hello[:40]!r} instead of ready")
        return executor

    def _replace(self, dead: _Executor) -> None:
        """Kill `dead` (if alive) and start a fresh process in its place, in the background."""
        task = asyncio.get_running_loop().create_task(self._respawn(dead), name="respawn")
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)

    async def _respawn(self, dead: _Executor) -> None:
        await dead.kill()
        self._all.discard(dead)
        if self._closed:
            return
        try:
            self._idle.put_nowait(await self._spawn())
        except Exception as exc:
            # The app no longer imports: every later call must fail loudly, not hang.
            self._broken = exc
            raise
