"""
The gateway's own answers: one place for their status codes and JSON bodies.

Every error the gateway (not an upstream) produces is
C{{"error": ..., "status": ...}} plus context fields, never a traceback and
never an instance's address.  When the response has already started there
is no honest way to change its status, so the client connection is cut
instead of ending a truncated body as if it were complete.
"""

from __future__ import annotations

import json
from typing import Any, List, Tuple

from twisted.web.http import RESPONSES

__all__ = ["error_response", "refusal", "RETRY_AFTER"]

# Seconds a client should wait before retrying a 503: long enough for a
# health check interval to pass, short enough for a deploy to be invisible.
RETRY_AFTER = b"1"


def error_response(status: int, error: str, **details: Any) -> Tuple[List[Tuple[bytes, bytes]], bytes]:
    """The headers and JSON body of a gateway-made answer."""
    body = json.dumps({"error": error, "status": status, **details}).encode("utf-8")
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Cache-Control", b"no-store"),
    ]
    if status == 503:
        headers.append((b"Retry-After", RETRY_AFTER))
    return headers, body


def refusal(status: int, error: str) -> bytes:
    """
    A complete, self-contained HTTP/1.1 error response that closes the
    connection, for answers given before there is a request to answer.
    """
    headers, body = error_response(status, error)
    head = b"".join(b"%s: %s\r\n" % pair for pair in headers)
    reason = RESPONSES.get(status, b"Error")
    return b"HTTP/1.1 %d %s\r\n%sConnection: close\r\n\r\n%s" % (status, reason, head, body)
