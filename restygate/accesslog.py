"""
One access-log event per request, through twisted.logger, so it goes where
the daemon's log goes (stdout under C{twistd -n}, journald under systemd).
"""

from __future__ import annotations

from typing import Optional

from twisted.logger import Logger
from twisted.web.server import Request

__all__ = ["log_access"]

access = Logger(namespace="restygate.access")


def _client(request: Request) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", None) or "-")


def log_access(
    request: Request,
    duration: float,
    upstream: Optional[str],
    dc: Optional[str],
    service: Optional[str],
) -> None:
    access.info(
        '{client} "{method} {uri} {proto}" {status} {size} {duration_ms:.1f}ms '
        "upstream={upstream} dc={dc} service={service}",
        client=_client(request),
        method=request.method.decode("latin-1"),
        uri=request.uri.decode("latin-1"),
        proto=(request.clientproto or b"-").decode("latin-1"),
        status=request.code,
        size=request.sentLength,
        duration_ms=duration * 1000,
        upstream=upstream or "-",
        dc=dc or "-",
        service=service or "-",
    )
