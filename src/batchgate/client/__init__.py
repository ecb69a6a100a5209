"""Python clients for a batchgate gateway over httpx: `Client` (blocking) and `AsyncClient`.

Both speak the v1 HTTP API: `run` a function and get its result, `map` a function over
items streamed as NDJSON, or `submit` a job and follow it through a `JobHandle`
(status, result, cancel, Server-Sent Events). Problem responses raise the matching
`batchgate.errors` exception (see `error_from_problem`).
"""

from batchgate.client.aio import AsyncClient, AsyncJobHandle
from batchgate.client.common import JobEvent, SSEParser, error_from_problem, parse_sse
from batchgate.client.sync import Client, JobHandle

__all__ = [
    "AsyncClient",
    "AsyncJobHandle",
    "Client",
    "JobEvent",
    "JobHandle",
    "SSEParser",
    "error_from_problem",
    "parse_sse",
]
