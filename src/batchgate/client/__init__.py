"""Python clients for a batchgate gateway over httpx: `Client` (blocking) and `AsyncClient`.

Both speak the v1 HTTP API: `run` a function and get its result, `map` a function over
items streamed as NDJSON, `submit` a job and follow it through a handle (status, result,
cancel, Server-Sent Events), or `run_file` (a file in, a file out). Problem responses
raise the matching `batchgate.errors` exception (see `error_from_problem`); failed
requests are retried by a `RetryPolicy`.

Both are thin shells over one I/O-free core (`core.ClientCore`, whose flows yield the
steps of `steps.py`), so their behaviour is the same by construction.
"""

from batchgate.client.aio import AsyncClient, AsyncJobHandle
from batchgate.client.answers import JobRef
from batchgate.client.config import DEFAULT_URL, ClientConfig
from batchgate.client.core import ClientCore
from batchgate.client.files import FileRun, InvalidInput
from batchgate.client.problems import error_from_problem
from batchgate.client.retry import RetryPolicy
from batchgate.client.sse import JobEvent, SSEParser, parse_sse
from batchgate.client.sync import Client, JobHandle

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "AsyncJobHandle",
    "Client",
    "ClientConfig",
    "ClientCore",
    "FileRun",
    "InvalidInput",
    "JobEvent",
    "JobHandle",
    "JobRef",
    "RetryPolicy",
    "SSEParser",
    "error_from_problem",
    "parse_sse",
]
