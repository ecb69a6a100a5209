"""A job as the client knows it, and its answers: result bodies by media type, and the
wait budget of a result fetch."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from batchgate.batches import NDJSON_MEDIA_TYPES, BatchFormat
from batchgate.client.config import ClientConfig
from batchgate.client.steps import Reply


@dataclasses.dataclass(frozen=True, slots=True)
class JobRef:
    """A job as the client knows it: its id, its URL, and the format of its result."""

    id: str
    location: str
    format: BatchFormat = BatchFormat.JSON


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """A finished job's 200 result: the reply, its body when read, and its media type."""

    reply: Reply
    body: bytes
    media_type: str

    def decode(self) -> Any:
        """JSON decoded, NDJSON as a list, anything else as bytes."""
        if self.media_type in NDJSON_MEDIA_TYPES:
            return [json.loads(line) for line in self.body.split(b"\n") if line.strip()]
        if self.media_type in ("", "application/json") or self.media_type.endswith("+json"):
            return json.loads(self.body)
        return self.body


class Poll:
    """The wait budget of one result fetch: long polls of poll_s until an optional deadline."""

    def __init__(self, config: ClientConfig, location: str, wait: float | None) -> None:
        self.clock = config.clock
        self.location = location
        self.poll_s = config.poll_s
        self.wait = wait
        self.deadline = None if wait is None else self.clock() + wait
        self.started = 0.0

    def next_wait(self) -> float:
        self.started = self.clock()
        if self.deadline is None:
            return self.poll_s
        return max(0.0, min(self.poll_s, self.deadline - self.started))

    def pause(self, wait_s: float) -> float:
        """Seconds to sleep after a 202: none after a full wait, the rest of min(1 s,
        wait) after an early answer (a draining server); TimeoutError past the deadline."""
        now = self.clock()
        if self.deadline is not None and now >= self.deadline:
            raise TimeoutError(f"job {self.location} still running after {self.wait:g} s")
        return max(0.0, min(1.0, wait_s) - (now - self.started))


def media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def accept(fmt: BatchFormat) -> dict[str, str]:
    return {"Accept": fmt.value} if fmt == BatchFormat.NDJSON else {}
