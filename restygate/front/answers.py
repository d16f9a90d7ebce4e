"""
The gateway's own answers: one place for their status codes and JSON bodies.

Every error the gateway (not an upstream) produces is
C{{"error": ..., "status": ...}} plus context fields, never a traceback.  When
the response has already started there is no honest way to change its
status, so the client connection is aborted instead of ending a truncated
body as if it were complete.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.http import datetimeToString
from twisted.web.server import Request

__all__ = ["send_error", "abort"]

# Seconds a client should wait before retrying a 503: long enough for a
# health check interval to pass, short enough for a deploy to be invisible.
RETRY_AFTER = b"1"


def abort(request: Request) -> None:
    """
    Drop the client connection at once: the only honest end for a response
    that started and cannot be completed.
    """
    transport: Any = request.channel.transport if request.channel is not None else None
    if transport is not None:
        transport.abortConnection()


def send_error(request: Request, status: int, error: str, **details: Any) -> None:
    """
    Answer C{request} with a gateway error, if it can still be answered.
    """
    if request.finished or request.channel is None:
        return
    if request.startedWriting:
        abort(request)
        return
    body = json.dumps({"error": error, "status": status, **details}).encode("utf-8")
    request.setResponseCode(status)
    headers = request.responseHeaders
    headers.setRawHeaders(b"Content-Type", [b"application/json"])
    headers.setRawHeaders(b"Content-Length", [str(len(body)).encode("ascii")])
    headers.setRawHeaders(b"Cache-Control", [b"no-store"])
    headers.setRawHeaders(b"Date", [datetimeToString()])
    if status == 503:
        headers.setRawHeaders(b"Retry-After", [RETRY_AFTER])
    request.write(body)
    request.finish()
