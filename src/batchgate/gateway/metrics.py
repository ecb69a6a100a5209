"""Prometheus metrics of one gateway, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.submitted = Counter(
            "batchgate_jobs_submitted", "Jobs submitted", ["function"], registry=self.registry
        )
        self.finished = Counter(
            "batchgate_jobs_answered",
            "Terminal job outcomes answered to clients",
            ["function", "status"],
            registry=self.registry,
        )
        self.waiting = Gauge(
            "batchgate_requests_waiting",
            "Requests holding a connection open for a job (POST and GET waits, event streams)",
            registry=self.registry,
        )

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
