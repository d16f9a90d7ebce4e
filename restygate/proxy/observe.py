"""
What the gateway tells observers (access log, metrics) about each request.

The proxy builds one immutable L{Completed} record when a request ends and
hands it to every observer; observers never reach into the proxy's live
state, so adding one cannot change how requests are served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Protocol, Tuple

from restygate.proxy.failure import Failure

__all__ = ["Completed", "RequestObserver", "completed_record"]


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
    @ivar failure: what went wrong, when something did (the gateway's own
        answer, a cut response, a client gone), else L{None}.
    @ivar bytes_received: for an Upgrade tunnel, bytes the client sent
        through it (C{bytes_sent} counts the other way).
    @ivar dc: the datacenter that served it (or was asked for, when none did).
    @ivar failed_over: the datacenter asked for, when another one served it
        (failover), else L{None}.
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
    failure: Optional[Failure] = None
    bytes_received: int = 0
    failed_over: Optional[str] = None


RequestObserver = Callable[[Completed], None]


class Outcome(Protocol):
    """What an exchange knows of a request at its end."""

    started: float
    route: Any
    upstream_latency: Optional[float]
    retries: int
    error: Optional[str]
    aborted: bool
    failure: Optional[Failure]
    tunnel_bytes_up: int
    failed_over: Optional[str]
    # What discovery answered (L{restygate.discovery.model.Snapshot}), if it did.
    snapshot: Any

    @property
    def upstream(self) -> Optional[str]: ...


def _first(headers: List[Tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def completed_record(outcome: Outcome, request: Any, now: float) -> Completed:
    """The record of a request (a L{restygate.proxy.downstream.Downstream}) that ended."""
    route = outcome.route
    # Consul's spelling once discovery answered, so case variants share a series.
    names = (outcome.snapshot.dc, outcome.snapshot.service) if outcome.snapshot is not None else None
    names = names or ((route.dc, route.service) if route else None)
    headers = request.headers
    return Completed(
        started=outcome.started,
        duration=now - outcome.started,
        client=request.client_ip,
        method=request.method.decode("latin-1"),
        uri=request.target.decode("latin-1"),
        proto=request.version.decode("latin-1"),
        host=_first(headers, b"host"),
        referer=_first(headers, b"referer"),
        user_agent=_first(headers, b"user-agent"),
        status=request.status,
        bytes_sent=request.bytes_sent,
        dc=names[0] if names else None,
        service=names[1] if names else None,
        upstream=outcome.upstream,
        upstream_latency=outcome.upstream_latency,
        retries=outcome.retries,
        error=outcome.error,
        aborted=outcome.aborted,
        failure=outcome.failure,
        bytes_received=outcome.tunnel_bytes_up,
        failed_over=outcome.failed_over,
    )
