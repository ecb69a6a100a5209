"""`gateway_handler`: the HTTP gateway on Lambda, behind a Function URL or API Gateway.

Mangum turns the invocation's event (a Function URL or API Gateway HTTP API request,
payload 2.0; an API Gateway REST API request, payload 1.0; an ALB request) into one ASGI
request to the same Starlette gateway `batchgate gateway` serves, and its response back.

One invocation carries one request, on the environment's warm backends (see runtime).
How long a request may be held open is the least of:
- BATCHGATE_MAX_WAIT (the template sets it 20 s under the gateway's timeout);
- API_GATEWAY_WAIT_S for an API Gateway request when BATCHGATE_MAX_WAIT is not set, as API
  Gateway ends an integration at 29 s unless its quota was raised (then set the variable);
- the invocation's remaining time less REPLY_MARGIN_S.
Past it the client gets 202 + Location (the job goes on), never the integration's 504.

Lambda buffers the reply, so an event stream (`Accept: text/event-stream`) cannot stay
open until its job ends: every request is cut off CUTOFF_MARGIN_S before the invocation
ends, and a stream's client gets the events so far in one reply (an EventSource
reconnects with Last-Event-ID and resumes) rather than Lambda's timeout error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import Any

from batchgate.aws import runtime
from batchgate.errors import BackendError
from batchgate.gateway import create_gateway
from batchgate.gateway.problems import error_response
from batchgate.jobs import Jobs
from batchgate.queue import Queue
from batchgate.settings import Settings
from batchgate.state import State
from batchgate.store import Store

log = logging.getLogger("batchgate.aws.gateway")

API_GATEWAY_WAIT_S = 25.0
REPLY_MARGIN_S = 3.0
# A request still running this long before the invocation's end is cut off.
CUTOFF_MARGIN_S = 1.0
MAX_WAIT_ENV = "BATCHGATE_MAX_WAIT"
# Replies Mangum sends as text rather than base64 (the rest are binary to it).
TEXT_TYPES = [
    "text/",
    "application/json",
    "application/problem+json",
    "application/x-ndjson",
    "application/openapi+json",
]


def via_api_gateway(event: dict[str, Any]) -> bool:
    """A request that came through API Gateway (a Function URL's domain is *.lambda-url.*)."""
    context = event.get("requestContext") or {}
    return "apiId" in context and ".lambda-url." not in str(context.get("domainName", ""))


def stage_prefix(event: dict[str, Any]) -> str:
    """The path prefix to strip: "/STAGE" for an HTTP API (payload 2.0) request on a named
    stage, whose rawPath carries the stage; "/" otherwise ($default stage, REST, URLs)."""
    context = event.get("requestContext") or {}
    stage = str(context.get("stage") or "")
    raw_path = str(event.get("rawPath") or "")
    named = stage not in ("", "$default")
    in_path = raw_path == f"/{stage}" or raw_path.startswith(f"/{stage}/")
    if event.get("version") == "2.0" and via_api_gateway(event) and named and in_path:
        return f"/{stage}"
    return "/"


def wait_limit_s(
    settings: Settings, event: dict[str, Any], left_s: float, env: dict[str, str]
) -> float:
    """The longest this request may wait for its job (see the module docstring)."""
    limit = settings.max_wait_s
    if MAX_WAIT_ENV not in env and via_api_gateway(event):
        limit = min(limit, API_GATEWAY_WAIT_S)
    return max(0.0, min(limit, left_s - REPLY_MARGIN_S))


def time_limited(app: Any, cutoff_at: float) -> Any:
    """The ASGI app `app`, each request cut off at `cutoff_at` (the loop's clock).

    A reply under way (an event stream) is ended there with an empty last body; a request
    that has not started its reply by then (only a hung backend can cause it) gets 503.
    """

    async def limited(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = finished = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        timeout = asyncio.timeout_at(cutoff_at)
        try:
            async with timeout:
                await app(scope, receive, tracked)
        except TimeoutError:
            if not timeout.expired():
                raise
            log.info("%s %s cut off at the invocation's end", scope["method"], scope["path"])
            if not started:
                error = BackendError(
                    "the request did not finish within the function's time",
                    public="the request did not finish within the gateway function's time",
                )
                await error_response(error, scope["path"])(scope, receive, send)
                return
        if started and not finished:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return limited


_jobs: Jobs | None = None


def warm_jobs(backends: tuple[Queue, State, Store], settings: Settings) -> Jobs:
    """The environment's Jobs over its warm backends, with this invocation's settings: what
    it caches between requests (the queue depth it last read) outlives one invocation."""
    global _jobs
    if _jobs is None or (_jobs.queue, _jobs.state, _jobs.store) != backends:
        _jobs = Jobs(runtime.registry(), *backends, settings)
    _jobs.settings = settings  # this invocation's wait limit
    return _jobs


def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Serve the request in `event`; `context` is Lambda's (see runtime.LambdaContext)."""
    from mangum import Mangum  # the aws extra; imported only by the gateway Lambda

    loop = runtime.loop()
    deadline = runtime.Deadline(context, loop)
    base = runtime.load_settings()
    limit = wait_limit_s(base, event, deadline.left_s(), dict(os.environ))
    settings = dataclasses.replace(base, max_wait_s=limit)
    jobs = warm_jobs(loop.run_until_complete(runtime.warm_backends(settings)), settings)
    app = time_limited(create_gateway(jobs), deadline.at - CUTOFF_MARGIN_S)
    adapter = Mangum(
        app, lifespan="off", api_gateway_base_path=stage_prefix(event), text_mime_types=TEXT_TYPES
    )
    try:
        response: dict[str, Any] = adapter(event, context)  # runs on the current loop
    finally:
        # A rescue timer cannot outlive the invocation here: only a retry that comes a
        # lease after the job was stored re-enqueues it (see Jobs._rescue_if_unstarted).
        loop.run_until_complete(jobs.aclose())
    if response["statusCode"] == 503 and BackendError.problem in str(response.get("body")):
        loop.run_until_complete(runtime.drop_backends())  # the next request opens them anew
    return response
