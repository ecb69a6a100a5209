"""The client written once, without I/O: every operation of the v1 HTTP API as a flow.

`ClientCore` builds each request (URL, headers, Prefer, Idempotency-Key, timeouts), reads
each answer (a result, a 202 to follow through its Location, a 303 to a presigned URL, a
problem document to raise as its batchgate exception), retries by the RetryPolicy, and
parses event streams. It performs nothing: its flows yield the steps of `steps.py`, which
`Client` (blocking) and `AsyncClient` (asyncio) perform over httpx.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import urllib.parse
from typing import Any, cast

import httpx

from batchgate.batches import BatchFormat
from batchgate.client.answers import Answer, JobRef, Poll, accept, media_type
from batchgate.client.bodies import Body, FileSource, Items, as_format
from batchgate.client.config import ClientConfig
from batchgate.client.problems import error_from_answer
from batchgate.client.retry import RETRYABLE_ERRORS, Retries, parse_retry_after
from batchgate.client.sse import LineSplitter, SSEParser
from batchgate.client.steps import Call, Emit, Flow, Next, Reply, Send, Sleep
from batchgate.errors import BatchgateError

log = logging.getLogger("batchgate.client")

# Reconnects in a row that bring no event before an event stream gives up.
EVENT_RECONNECTS = 3
# A stream cut off or quiet past its read timeout: reconnect (with Last-Event-ID).
STREAM_DROPPED = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)
MISSING: Any = object()


class ClientCore:
    """Every client operation once, as a flow of steps (see the module docstring)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._origin = _origin(config.base_url)

    # -- requests and answers -------------------------------------------------------------

    def call(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        body: Body | None = None,
        wait_s: float = 0.0,
    ) -> Call:
        """A request to a gateway path (or an absolute URL, e.g. a Location).

        The API key goes only to the gateway's own origin, never to a presigned URL.
        """
        url = target if "://" in target else self.config.base_url + target
        headers = dict(headers or {})
        if self.config.api_key and _origin(url) == self._origin:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        timeout = httpx.Timeout(self.config.timeout_s, read=wait_s + self.config.timeout_s)
        return Call(method, url, headers, params or {}, timeout, body)

    def fetch(self, call: Call) -> Flow[tuple[Reply, bytes]]:
        """Send `call` and read its whole answer, retrying both as the policy allows."""
        return self._exchange(call, read=True)

    def open(self, call: Call) -> Flow[Reply]:
        """Send `call` (retrying as the policy allows) and return the head of its answer."""
        reply, _ = yield from self._exchange(call, read=False)
        return reply

    def read(self, reply: Reply) -> Flow[bytes]:
        """The rest of a reply's body."""
        pieces = []
        while piece := (yield Next(reply)):
            pieces.append(piece)
        return b"".join(pieces)

    def drain(self, reply: Reply) -> Flow[None]:
        """Read and drop the rest of a small body, so that its connection can serve the next
        request; a connection lost meanwhile does not matter."""
        with contextlib.suppress(*RETRYABLE_ERRORS):
            yield from self.read(reply)

    def error(self, reply: Reply, body: bytes) -> BatchgateError:
        """The exception an error answer stands for."""
        return error_from_answer(reply.status, reply.headers, body)

    def _exchange(self, call: Call, read: bool) -> Flow[tuple[Reply, bytes]]:
        retries = Retries(self.config.retry, self.config.clock, self.config.draw)
        while True:
            if call.body is not None:
                call.body.restart()
            try:
                reply = yield Send(call)
                body = (yield from self.read(reply)) if read else b""
            except RETRYABLE_ERRORS as exc:
                delay_s = retries.next_delay_s()
                if delay_s is None or not _resendable(call):
                    raise
                reason = f"{type(exc).__name__}: {exc}"
            else:
                retry_after = reply.headers.get("retry-after")
                if reply.status not in self.config.retry.statuses or not _resendable(call):
                    return reply, body
                delay_s = retries.next_delay_s(parse_retry_after(retry_after))
                if delay_s is None:
                    return reply, body
                if not read:
                    yield from self.drain(reply)
                reason = f"HTTP {reply.status}"
            where = call.url.split("?")[0]  # a presigned query is a credential: not logged
            log.info("%s %s failed (%s); retry %d in %.2f s", call.method, where, reason,
                     retries.failures, delay_s)  # fmt: skip
            yield Sleep(delay_s)

    def _json(self, call: Call) -> Flow[Any]:
        reply, body = yield from self.fetch(call)
        if reply.status != 200:
            raise self.error(reply, body)
        return json.loads(body)

    # -- submitting -------------------------------------------------------------------------

    def post(
        self,
        name: str,
        body: Body,
        *,
        wait: float | None = None,
        respond_async: bool = False,
        idempotency_key: str | None = None,
        read: bool = False,
    ) -> Flow[tuple[Reply, bytes]]:
        """POST a job; its answer (200, 202 or a problem), the body read only if `read`.

        A body that cannot be sent twice asks for `respond-async`, so that only its upload,
        not the wait for the result, is beyond the reach of a retry. With retries on, the
        request carries an Idempotency-Key (the caller's, else a random one) so that a
        retry of a request the gateway accepted attaches to the job it made.
        """
        respond_async = respond_async or not body.replayable
        wait_s = 0.0 if respond_async else self.config.poll_s if wait is None else wait
        headers = {"Content-Type": body.media_type, **accept(body.format)}
        headers["Prefer"] = "respond-async" if respond_async else f"wait={wait_s:g}"
        if idempotency_key is None and self.config.retry.enabled:
            idempotency_key = "auto-" + secrets.token_urlsafe(18)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        path = "/v1/functions/" + urllib.parse.quote(name, safe="")
        call = self.call("POST", path, headers=headers, body=body, wait_s=wait_s)
        return self._exchange(call, read)

    def accepted(self, reply: Reply, fmt: BatchFormat) -> JobRef:
        """The job a 200 or 202 answer names."""
        job_id = reply.headers.get("job-id")
        if not job_id:
            raise BatchgateError(f"HTTP {reply.status} without a Job-Id header")
        return JobRef(job_id, reply.headers.get("location") or f"/v1/jobs/{job_id}", fmt)

    def run(
        self,
        name: str,
        payload: Any,
        *,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> Flow[Any]:
        """A plain function's result for one JSON payload, however long it takes."""
        return self._outcome(name, Body.of_json(payload), wait, idempotency_key)

    def map(
        self,
        name: str,
        items: Items | FileSource,
        *,
        wait: float | None = None,
        format: BatchFormat | str | None = None,
        idempotency_key: str | None = None,
    ) -> Flow[list[Any]]:
        """A map function's results, in input order, for items or a file's batch."""
        body = Body.of_source(items, format)
        result = yield from self._outcome(name, body, wait, idempotency_key)
        if not isinstance(result, list):
            raise BatchgateError(f"a map job answered with {type(result).__name__}, not a list")
        return result

    def _outcome(
        self, name: str, body: Body, wait: float | None, idempotency_key: str | None
    ) -> Flow[Any]:
        reply, data = yield from self.post(
            name, body, wait=wait, idempotency_key=idempotency_key, read=True
        )
        if reply.status == 200:
            return Answer(reply, data, media_type(reply.headers)).decode()
        if reply.status != 202:
            raise self.error(reply, data)
        answer = yield from self.finished(self.accepted(reply, body.format), read=True)
        return answer.decode()

    def submit(
        self,
        name: str,
        payload: Any = MISSING,
        *,
        items: Items | None = None,
        file: FileSource | None = None,
        format: BatchFormat | str | None = None,
        idempotency_key: str | None = None,
    ) -> Flow[JobRef]:
        """Start a job without waiting (`Prefer: respond-async`); the job it made."""
        if (payload is not MISSING) + (items is not None) + (file is not None) != 1:
            raise TypeError("submit() takes exactly one of payload, items or file")
        if payload is not MISSING:
            body = Body.of_json(payload)
        elif items is not None:
            body = Body.of_source(items, format)
        else:
            body = Body.of_source(cast("FileSource", file), format)
        reply, _ = yield from self.post(
            name, body, respond_async=True, idempotency_key=idempotency_key
        )
        if reply.status not in (200, 202):
            raise self.error(reply, (yield from self.read(reply)))
        if reply.status == 202:  # (a 200's body is the result: it is left unread)
            yield from self.drain(reply)
        return self.accepted(reply, body.format)

    def functions(self) -> Flow[list[dict[str, Any]]]:
        """The gateway's functions: name, kind (function/map), timeout_s, retries…"""
        doc = yield from self._json(self.call("GET", "/v1/functions"))
        functions: list[dict[str, Any]] = doc["functions"]
        return functions

    # -- following a job ------------------------------------------------------------------

    def job(self, job_id: str, format: BatchFormat | str = BatchFormat.JSON) -> JobRef:
        return JobRef(job_id, f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}", as_format(format))

    def status(self, ref: JobRef, wait: float | None = None) -> Flow[dict[str, Any]]:
        """The status document; `wait` blocks up to N seconds for the job to finish first."""
        params = {"wait": f"{wait:g}"} if wait else {}
        call = self.call("GET", ref.location, params=params, wait_s=wait or 0.0)
        doc: dict[str, Any] = yield from self._json(call)
        return doc

    def finished(
        self,
        ref: JobRef,
        wait: float | None = None,
        *,
        read: bool,
        format: BatchFormat | None = None,
    ) -> Flow[Answer]:
        """The job's 200 result once it is done, its body read (`read`) or still to read.

        Long polls `GET …/result?wait=`; follows a 303 to a presigned URL (without the API
        key); raises the job's failure; TimeoutError once `wait` seconds have passed.
        """
        fmt = ref.format if format is None else format
        poll = Poll(self.config, ref.location, wait)
        while True:
            wait_s = poll.next_wait()
            params = {"wait": f"{wait_s:g}"}
            call = self.call("GET", f"{ref.location}/result", params=params, headers=accept(fmt),
                             wait_s=wait_s)  # fmt: skip
            reply, body = yield from self._exchange(call, read)
            media = media_type(reply.headers)
            if reply.status == 303 and reply.headers.get("location"):
                # Only a plain function's result is redirected: JSON, whatever the store says.
                call = self.call("GET", reply.headers["location"])
                reply, body = yield from self._exchange(call, read)
                media = BatchFormat.JSON.value
            if reply.status == 200:
                return Answer(reply, body, media)
            if not read:
                body = yield from self.read(reply)
            if reply.status != 202:
                raise self.error(reply, body)
            if (pause_s := poll.pause(wait_s)) > 0:
                yield Sleep(pause_s)

    def result(self, ref: JobRef, wait: float | None = None) -> Flow[Any]:
        """The result once the job is done (a list for map jobs); TimeoutError after `wait` s."""
        answer = yield from self.finished(ref, wait, read=True)
        return answer.decode()

    def stream_result(
        self, ref: JobRef, format: BatchFormat | str | None = None, wait: float | None = None
    ) -> Flow[None]:
        """Emits the raw result body in pieces once the job is done, in `format` if given."""
        fmt = None if format is None else as_format(format)
        answer = yield from self.finished(ref, wait, read=False, format=fmt)
        while piece := (yield Next(answer.reply)):
            yield Emit(piece)

    def cancel(self, ref: JobRef) -> Flow[dict[str, Any]]:
        """Cancel the job; its status (a job already finished stays finished)."""
        reply, body = yield from self.fetch(self.call("DELETE", ref.location))
        if reply.status == 200:
            doc: dict[str, Any] = json.loads(body)
            return doc
        exc = self.error(reply, body)
        if reply.status == 409 and str(exc.extra.get("type", "")).endswith("job-finished"):
            return (yield from self.status(ref))
        raise exc

    def events(self, ref: JobRef) -> Flow[None]:
        """Emits the job's JobEvents up to its terminal one; reconnects with Last-Event-ID."""
        parser = SSEParser()
        idle = 0
        while idle <= EVENT_RECONNECTS:
            idle += 1
            headers = {"Accept": "text/event-stream"}
            if parser.last_id is not None:
                headers["Last-Event-ID"] = parser.last_id
            call = self.call("GET", f"{ref.location}/events", headers=headers,
                             wait_s=self.config.poll_s)  # fmt: skip
            try:
                reply = yield from self.open(call)
                if reply.status != 200:
                    raise self.error(reply, (yield from self.read(reply)))
                lines = LineSplitter()
                parser.end_of_stream()
                while piece := (yield Next(reply)):
                    for line in lines.feed(piece):
                        event = parser.feed(line)
                        if event is not None:
                            idle = 0
                            yield Emit(event)
                            if event.terminal:
                                return
            except STREAM_DROPPED:
                pass  # a quiet or dropped stream: reconnect
        raise BatchgateError(f"the event stream of job {ref.id} ended without an outcome")


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _resendable(call: Call) -> bool:
    return call.body is None or call.body.resendable
