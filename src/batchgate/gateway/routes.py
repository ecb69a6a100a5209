"""HTTP endpoints of the v1 API: submit and wait, job status, result, cancel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from batchgate.app import FunctionInfo
from batchgate.batches import BatchFormat, cut_chunks, join_results
from batchgate.errors import (
    BadRequest,
    BatchgateError,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from batchgate.gateway.disconnect import disconnect_watch
from batchgate.gateway.events import SSE_HEADERS, job_events
from batchgate.gateway.metrics import Metrics
from batchgate.gateway.prefer import (
    check_idempotency_key,
    parse_prefer,
    query_flag,
    query_wait,
)
from batchgate.gateway.problems import error_response, job_problem
from batchgate.jobs import Jobs, retry_after_s
from batchgate.models import FunctionKind, Job, JobStatus, dumps, loads
from batchgate.strictjson import strip_bom
from batchgate.typeschema import first_violation

# How long a presigned result URL stays valid.
REDIRECT_EXPIRES_S = 3600


class Routes:
    """Request handlers bound to one Jobs facade."""

    def __init__(self, jobs: Jobs, metrics: Metrics, owner_of: Any) -> None:
        self.jobs = jobs
        self.metrics = metrics
        self.owner_of = owner_of
        self.settings = jobs.settings

    async def submit(self, request: Request) -> Response:
        owner = self.owner_of(request)
        info = self.jobs.registry.get(request.path_params["name"])
        prefs = parse_prefer(request.headers.getlist("prefer"))
        idempotency_key = check_idempotency_key(request.headers.get("idempotency-key"))
        applied: list[str] = []
        if prefs.respond_async:
            wait_s = 0.0
            applied.append("respond-async")
        elif prefs.wait_s is not None:
            wait_s = min(prefs.wait_s, self.settings.max_wait_s)
            applied.append(f"wait={wait_s:g}")
        else:
            wait_s = self.settings.max_wait_s
        wants_events = "text/event-stream" in request.headers.get("accept", "")
        if wants_events:
            wait_s = 0.0
        self.metrics.submitted.labels(info.name).inc()
        with self.metrics.waiting.track_inprogress():
            async with disconnect_watch(request) as client:
                if info.kind is FunctionKind.MAP:
                    fmt = BatchFormat.from_content_type(request.headers.get("content-type"))
                    body_stream = self._limited_stream(request, then=client.listen)
                    chunks = cut_chunks(body_stream, fmt, info.chunk_size, self.settings.max_items)
                    job = await self.jobs.submit_map(
                        info, chunks, owner=owner, idempotency_key=idempotency_key,
                        wait_s=wait_s, gone=client.gone,
                    )  # fmt: skip
                else:
                    fmt = BatchFormat.JSON
                    body = await self._read_json_body(request, info)
                    client.listen()
                    job = await self.jobs.submit(
                        info, body, owner=owner, idempotency_key=idempotency_key,
                        wait_s=wait_s, gone=client.gone,
                    )  # fmt: skip
        headers = {"Job-Id": job.id, "Location": f"/v1/jobs/{job.id}"}
        if applied:
            headers["Preference-Applied"] = ", ".join(applied)
        if wants_events:
            events = self._counted(await job_events(self.jobs, job.id, owner))
            return StreamingResponse(
                events, media_type="text/event-stream", headers={**headers, **SSE_HEADERS}
            )
        return await self._outcome(job, headers, fmt)

    async def _counted(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """An event stream, counted as a waiting request while it is open."""
        with self.metrics.waiting.track_inprogress():
            async for event in events:
                yield event

    async def _limited_stream(
        self, request: Request, then: Callable[[], None] | None = None
    ) -> AsyncIterator[bytes]:
        """The request body, refused with 413 once it passes --max-body and with 408 once
        waiting for it has taken BATCHGATE_BODY_TIMEOUT; `then` runs once it is all read."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        # ASCII digits only (isdigit() takes "²"), and no int() of 4301+ digits.
        if (
            declared.isascii()
            and declared.isdigit()
            and (len(declared) > 18 or int(declared) > limit)
        ):
            raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
        seen = 0
        # Only the time spent waiting for the client counts, not storing what it sent.
        budget_s = self.settings.body_timeout_s
        pieces = request.stream().__aiter__()
        while True:
            started = time.monotonic()
            try:
                async with asyncio.timeout(budget_s):
                    piece = await anext(pieces)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise RequestTimeout(
                    f"the body did not arrive within {self.settings.body_timeout_s:g} s "
                    f"({seen} bytes came); send it faster, or all at once"
                ) from None
            budget_s -= time.monotonic() - started
            seen += len(piece)
            if seen > limit:
                raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
            yield piece
        if then is not None:
            then()

    async def _read_json_body(self, request: Request, info: FunctionInfo) -> bytes:
        media_type = request.headers.get("content-type", "application/json")
        media_type = media_type.split(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise UnsupportedMediaType(f"{info.name} takes application/json, not {media_type!r}")
        body = bytearray()
        async for piece in self._limited_stream(request):
            body += piece
        data = strip_bom(bytes(body))
        if not data:
            raise BadRequest("the body is empty; send a JSON value")
        value = loads(data)  # the strict rules, once: a body that breaks them is a 400 here
        if info.input_schema:
            violation = first_violation(value, info.input_schema)
            if violation is not None:
                raise BadRequest(f"the body does not match the type {info.name} takes: {violation}")
        return data

    async def _outcome(
        self, job: Job, headers: dict[str, str], fmt: BatchFormat = BatchFormat.JSON
    ) -> Response:
        """200 with the result, the job's problem, or 202 with its status."""
        if job.status is JobStatus.SUCCEEDED:
            self.metrics.finished.labels(job.function, job.status.value).inc()
            if job.kind is FunctionKind.MAP:
                chunks = self.jobs.map_result_chunks(job)
                return StreamingResponse(
                    join_results(chunks, fmt), media_type=fmt.value, headers=headers
                )
            result = await self.jobs.result_bytes(job)
            return Response(result, media_type="application/json", headers=headers)
        if job.status.terminal:
            self.metrics.finished.labels(job.function, job.status.value).inc()
            return job_problem(job, headers)
        headers["Retry-After"] = str(retry_after_s(job))
        return Response(
            dumps(job.status_json()), 202, media_type="application/json", headers=headers
        )

    async def _job(self, request: Request) -> Job:
        """The request's job, after blocking up to `?wait=N` seconds for it to finish (less
        if the client leaves first)."""
        owner = self.owner_of(request)
        job_id = request.path_params["job_id"]
        wait_s = query_wait(request.query_params.get("wait"))
        if not wait_s:
            return await self.jobs.get(job_id, owner)
        with self.metrics.waiting.track_inprogress():
            async with disconnect_watch(request) as client:
                client.listen()  # a GET has no body to read first
                return await self.jobs.wait(job_id, wait_s, owner, gone=client.gone)

    async def job(self, request: Request) -> Response:
        """`/v1/jobs/{id}`: GET the status, DELETE to cancel."""
        if request.method == "DELETE":
            return await self.cancel(request)
        return await self.status(request)

    async def status(self, request: Request) -> Response:
        job = await self._job(request)
        return Response(dumps(job.status_json()), media_type="application/json")

    async def result(self, request: Request) -> Response:
        wants_redirect = query_flag("redirect", request.query_params.get("redirect"))
        job = await self._job(request)
        fmt = BatchFormat.from_accept(request.headers.get("accept"))
        headers = {"Job-Id": job.id, "Location": f"/v1/jobs/{job.id}"}
        if (
            job.result_ref is not None
            and job.kind is FunctionKind.FUNCTION
            and (wants_redirect or self.settings.redirect_results)
        ):
            # A result too large to keep in the job record lives in the store: let the
            # client fetch it from there directly when the store can sign a URL.
            url = await self.jobs.store.presigned_url(job.result_ref, REDIRECT_EXPIRES_S)
            if url is not None:
                return RedirectResponse(url, 303, headers={"Job-Id": job.id})
        return await self._outcome(job, headers, fmt)

    async def events(self, request: Request) -> Response:
        owner = self.owner_of(request)
        last_event_id = request.headers.get("last-event-id")
        events = await job_events(self.jobs, request.path_params["job_id"], owner, last_event_id)
        # StreamingResponse ends the stream (and its subscription) when the client leaves.
        return StreamingResponse(
            self._counted(events), media_type="text/event-stream", headers=SSE_HEADERS
        )

    async def cancel(self, request: Request) -> Response:
        owner = self.owner_of(request)
        job = await self.jobs.cancel(request.path_params["job_id"], owner)
        if job.status is not JobStatus.CANCELLED:
            exc = _AlreadyFinished(f"job {job.id} already {job.status.value}", job_id=job.id)
            return error_response(exc, request.url.path)
        return Response(dumps(job.status_json()), media_type="application/json")

    async def functions(self, request: Request) -> Response:
        self.owner_of(request)
        return JSONResponse({"functions": self.jobs.registry.manifest()})


class _AlreadyFinished(BatchgateError):
    status = 409
    problem = "job-finished"
    title = "Job already finished"
