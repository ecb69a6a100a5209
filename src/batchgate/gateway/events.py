"""Server-Sent Events for one job: `progress` events, then exactly one terminal event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from batchgate.errors import BadRequest
from batchgate.gateway.problems import job_problem_details
from batchgate.jobs import Jobs
from batchgate.models import Job, JobStatus, dumps

# At most this many progress events a second; notices in between are folded into the next.
PROGRESS_INTERVAL_S = 0.1
# A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_S = 15.0

# Progress ids count items: never more digits than this.
_MAX_EVENT_ID_DIGITS = 18

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + dumps(data) + b"\n\n"


def terminal_event(job: Job) -> bytes:
    """`succeeded` with the result's location, or `failed`/`cancelled` with the problem."""
    if job.status is JobStatus.SUCCEEDED:
        data = {
            "id": job.id,
            "status": job.status.value,
            "progress": job.progress.to_json(),
            "result": f"/v1/jobs/{job.id}/result",
        }
        return sse("succeeded", data, "end")
    return sse(job.status.value, job_problem_details(job), "end")


def _resume_point(last_event_id: str | None) -> int:
    """Progress events carry the count of finished items as their id; the terminal event's
    id is `end`. Without an id (or with `end`) the stream starts over."""
    if last_event_id is None or last_event_id.strip() in ("", "end"):
        return -1
    text = last_event_id.strip()
    # ASCII digits only: str.isdigit() also takes "²" and Arabic-Indic digits.
    if not (text.isascii() and text.isdigit() and len(text) <= _MAX_EVENT_ID_DIGITS):
        raise BadRequest(
            f"Last-Event-ID {text[:40]!r} is not an event id of this stream "
            "(a count of finished items, or 'end')"
        )
    return int(text)


async def job_events(
    jobs: Jobs, job_id: str, owner: str, last_event_id: str | None = None
) -> AsyncIterator[bytes]:
    """The event stream of one job; raises NotFound (before any event) for an unknown id."""
    await jobs.get(job_id, owner)
    return _stream(jobs, job_id, _resume_point(last_event_id))


async def _stream(jobs: Jobs, job_id: str, last_sent: int) -> AsyncIterator[bytes]:
    async with jobs.state.watch(job_id) as watch:
        job = await jobs.state.get_job(job_id)
        quiet_since = time.monotonic()
        while job is not None:
            if job.status.terminal:
                yield terminal_event(job)
                return
            finished = job.progress.done + job.progress.failed
            if finished > last_sent:
                yield sse("progress", job.progress.to_json(), str(finished))
                last_sent = finished
                quiet_since = time.monotonic()
                await asyncio.sleep(PROGRESS_INTERVAL_S)  # a rate limit, not synchronisation
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                yield b": keepalive\n\n"
                quiet_since = time.monotonic()
            await watch.wait_notice(jobs.settings.reread_s)
            job = await jobs.state.get_job(job_id)
