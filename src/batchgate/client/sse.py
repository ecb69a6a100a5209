"""Server-Sent Events without I/O: bytes in, `JobEvent`s out (the WHATWG parsing rules)."""

from __future__ import annotations

import codecs
import dataclasses
import json
from collections.abc import Iterable, Iterator
from typing import Any

from batchgate.models import Progress

TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled"})


@dataclasses.dataclass(frozen=True, slots=True)
class JobEvent:
    """One Server-Sent Event of a job: `event` name, `data` (decoded JSON, else text), `id`."""

    event: str
    data: Any
    id: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether this is the job's last event (succeeded, failed or cancelled)."""
        return self.event in TERMINAL_EVENTS

    @property
    def progress(self) -> Progress | None:
        """Item counts: the data of a `progress` event, or a status document's `progress`."""
        doc = self.data
        if self.event != "progress" and isinstance(doc, dict):
            doc = doc.get("progress")
        if not isinstance(doc, dict):
            return None
        return Progress(
            done=int(doc.get("done", 0)),
            failed=int(doc.get("failed", 0)),
            total=int(doc.get("total", 0)),
        )


class LineSplitter:
    """Cuts a UTF-8 byte stream into lines ending in CRLF, LF or CR, across piece borders."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._text = ""

    def feed(self, piece: bytes) -> list[str]:
        """The lines this piece completes (without their ends)."""
        self._text += self._decoder.decode(piece)
        lines: list[str] = []
        start = 0
        text = self._text
        while True:
            cr, lf = text.find("\r", start), text.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if lf == -1 or (cr != -1 and cr < lf):
                if cr == len(text) - 1:
                    break  # a CR at the end may be the first half of a CRLF: wait for more
                lines.append(text[start:cr])
                start = cr + 2 if text[cr + 1] == "\n" else cr + 1
            else:
                lines.append(text[start:lf])
                start = lf + 1
        self._text = text[start:]
        return lines


class SSEParser:
    """Turns `text/event-stream` lines into JobEvents, by the WHATWG parsing rules."""

    def __init__(self) -> None:
        self.last_id: str | None = None  # the last `id:` seen; send as Last-Event-ID
        self._event = ""
        self._data: list[str] = []

    def end_of_stream(self) -> None:
        """The stream ended: an event not finished by a blank line is dropped (the last id
        stays, to resume from)."""
        self._event, self._data = "", []

    def feed(self, line: str) -> JobEvent | None:
        """Take one line (without its end); the event a blank line completes, else None."""
        line = line.rstrip("\r\n")
        if not line:
            event, data = self._event or "message", self._data
            self._event, self._data = "", []
            if not data:
                return None
            text = "\n".join(data)
            try:
                value: Any = json.loads(text)
            except ValueError:
                value = text
            return JobEvent(event, value, self.last_id)
        if line.startswith(":"):
            return None  # a comment, e.g. a keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


def parse_sse(lines: Iterable[str]) -> Iterator[JobEvent]:
    """The events in a sequence of lines; an event left unfinished at the end is dropped."""
    parser = SSEParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
