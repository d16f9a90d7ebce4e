"""
What the gateway tells observers (access log, metrics) about each request.

The proxy builds one immutable L{Completed} record when a request ends and
hands it to every observer; observers never reach into the proxy's live
state, so adding one cannot change how requests are served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["Completed", "RequestObserver"]


@dataclass(frozen=True)
class Completed:
    """
    One finished request.

    @ivar upstream: C{host:port} of the instance that served it (the last one
        tried), or L{None} when no instance was tried.
    @ivar upstream_latency: seconds from sending upstream to its response
        headers, or L{None} when no response came.
    @ivar error: the gateway's own error for a gateway-generated answer
        (C{"no passing instance"}, C{"upstream timed out"}...), else L{None}.
    @ivar aborted: the client went away, or the connection was cut, before
        the response was complete.
    @ivar referer: the client's C{Referer} header, or C{""}.
    @ivar user_agent: the client's C{User-Agent} header, or C{""}; these two
        are what the combined access log format needs beyond the request.
    """

    started: float
    duration: float
    client: str
    method: str
    uri: str
    proto: str
    host: str
    status: int
    bytes_sent: int
    dc: Optional[str]
    service: Optional[str]
    upstream: Optional[str]
    upstream_latency: Optional[float]
    retries: int
    error: Optional[str]
    aborted: bool
    referer: str = ""
    user_agent: str = ""


RequestObserver = Callable[[Completed], None]
