"""The ASGI gateway: routes, error handling, auth and health endpoints."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from batchgate.errors import BackendError, BatchgateError
from batchgate.gateway.auth import ApiKeys
from batchgate.gateway.metrics import Metrics
from batchgate.gateway.openapi import openapi_document
from batchgate.gateway.problems import (
    batchgate_error_handler,
    error_response,
    http_error_handler,
)
from batchgate.gateway.requestid import RequestIdMiddleware
from batchgate.gateway.routes import Routes
from batchgate.jobs import Jobs


def create_gateway(jobs: Jobs) -> Starlette:
    """The HTTP API over `jobs`. Backends are opened and closed by the caller."""
    keys = ApiKeys(jobs.settings.api_keys)
    metrics = Metrics()
    routes = Routes(jobs, metrics, keys.owner)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        """Ready when every backend answers and can take writes (asked through its port)."""
        try:
            depth = await jobs.queue.depth()
            await jobs.state.get_job("readyz-probe")
            for backend in (jobs.queue, jobs.state, jobs.store):
                await backend.check_health()
        except BackendError as exc:
            return error_response(exc, request.url.path)
        return JSONResponse(
            {
                "status": "ready",
                "queue": {
                    "ready": depth.ready,
                    "in_flight": depth.in_flight,
                    "delayed": depth.delayed,
                    "dead": depth.dead,
                },
            }
        )

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(jobs.registry, api_keys=keys.enabled))

    return Starlette(
        routes=[
            Route("/v1/functions/{name}", routes.submit, methods=["POST"]),
            Route("/v1/functions", routes.functions, methods=["GET"]),
            # One route for both methods, so a 405 there lists both in Allow.
            Route("/v1/jobs/{job_id}", routes.job, methods=["GET", "DELETE"]),
            Route("/v1/jobs/{job_id}/result", routes.result, methods=["GET"]),
            Route("/v1/jobs/{job_id}/events", routes.events, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers={
            BatchgateError: batchgate_error_handler,
            HTTPException: http_error_handler,
        },
    )
