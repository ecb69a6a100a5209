"""Outermost ASGI layer: a request id for every request, and a problem for every crash.

The request id comes from the client's `X-Request-Id` (or is made up), is returned in the
response's `X-Request-Id`, is set in `batchgate.context.request_id` for log lines and the
task envelope, and appears in every problem document. Any exception that escapes the app
becomes a `500 internal-error` problem naming the request id, logged once with its traceback.
"""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchgate.context import accept_request_id, request_id
from batchgate.errors import BatchgateError
from batchgate.gateway.problems import error_response

log = logging.getLogger("batchgate.gateway")

REQUEST_ID_HEADER = "X-Request-Id"


class RequestIdMiddleware:
    """Tags each HTTP request with a request id and answers crashes with a problem."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                presented = value.decode("latin-1")
                break
        rid = accept_request_id(presented)
        token = request_id.set(rid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.exception(
                "unexpected error on %s %s", scope.get("method"), scope.get("path"),
                extra={"request_id": rid},
            )  # fmt: skip
            if started:
                raise  # the response is half sent: all that is left is to drop the connection
            crash = BatchgateError("an unexpected error occurred; quote the request id")
            crash.__cause__ = exc
            response = error_response(crash, scope.get("path"))
            await response(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
