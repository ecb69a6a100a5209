"""The steps between the I/O-free client core and its two shells (blocking and asyncio).

Every client operation is a *flow*: a generator that yields steps ("send this request",
"give me the next piece of that body", "sleep", …) and is sent each step's outcome, the
way httpx's `Auth.auth_flow` yields requests and receives responses. A shell performs
the steps with its own I/O and feeds the outcomes back through a `Driver`; the decisions
(what to send, what an answer means, whether to retry) are made once, in the flow.

A transport failure while performing a step is thrown into the flow at that step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import httpx

if TYPE_CHECKING:
    from batchgate.client.bodies import Body, Output

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request as the core describes it: everything but the body's bytes."""

    method: str
    url: str  # absolute
    headers: dict[str, str]
    params: dict[str, str]
    timeout: httpx.Timeout
    body: Body | None = None

    def content(self, stream: Callable[[Body], Any]) -> Any:
        """The body for httpx: none, bytes in memory, or `stream(body)` (see Body.content)."""
        return None if self.body is None else self.body.content(stream)

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments for `httpx.Client.build_request`, the content aside.

        No `params` unless there are some: merging even none re-encodes a URL's query,
        which breaks a presigned URL's signature.
        """
        options: dict[str, Any] = {
            "method": self.method,
            "url": self.url,
            "headers": self.headers,
            "timeout": self.timeout,
        }
        if self.params:
            options["params"] = self.params
        return options


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """An answer's head; its body is read with `Next` steps (or copied by `Save`)."""

    status: int
    headers: Mapping[str, str]  # case-insensitive, as httpx.Headers
    url: str
    stream: Any = None  # the shell's iterator over the body; the core never touches it

    @classmethod
    def of(cls, response: httpx.Response, stream: Any) -> Reply:
        """The head of an httpx response, with the shell's iterator over its body."""
        return cls(response.status_code, response.headers, str(response.url), stream)


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """Send `call`; the outcome is its Reply, the body still to be read."""

    call: Call


@dataclasses.dataclass(frozen=True, slots=True)
class Next:
    """The next piece of `reply`'s body; b"" once it is all read."""

    reply: Reply


@dataclasses.dataclass(frozen=True, slots=True)
class Sleep:
    """Wait `seconds`; the outcome is None."""

    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class Save:
    """Copy the rest of `reply`'s body into `output`; the outcome is None."""

    reply: Reply
    output: Output


@dataclasses.dataclass(frozen=True, slots=True)
class Slurp:
    """Read a local body whole (a file to check before it is sent); the outcome is bytes."""

    body: Body


@dataclasses.dataclass(frozen=True, slots=True)
class Emit:
    """Hand `value` to whoever iterates the flow (an event, a piece of a result)."""

    value: Any


Step: TypeAlias = Send | Next | Sleep | Save | Slurp | Emit
Flow: TypeAlias = Generator[Step, Any, T]

_UNSET: Any = object()


class Driver(Generic[T]):
    """Walks a flow: `step` is what to do next (None once done), `resume`/`fail` report it."""

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self._value: T = _UNSET
        self.step: Step | None = None
        self._advance(flow.send, None)

    def resume(self, outcome: Any) -> None:
        """Report the current step's outcome."""
        self._advance(self._flow.send, outcome)

    def fail(self, exc: BaseException) -> None:
        """Report that the current step failed with `exc` (raised in the flow)."""
        self._advance(self._flow.throw, exc)

    def result(self) -> T:
        """The flow's return value, once `step` is None."""
        if self._value is _UNSET:
            raise RuntimeError("the flow has not finished")
        return self._value

    def __enter__(self) -> Driver[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._flow.close()  # an abandoned flow runs its cleanup now, not at collection

    def _advance(self, move: Callable[[Any], Step], arg: Any) -> None:
        try:
            self.step = move(arg)
        except StopIteration as stop:
            self.step = None
            self._value = stop.value


def observe(flow: Flow[T], take: Callable[[Any], object]) -> Flow[T]:
    """The flow with its `Emit` steps handed to `take` instead of passed on."""
    with Driver(flow) as driver:
        while (step := driver.step) is not None:
            if isinstance(step, Emit):
                take(step.value)
                driver.resume(None)
                continue
            try:
                outcome = yield step
            except Exception as exc:
                driver.fail(exc)
            else:
                driver.resume(outcome)
        return driver.result()
