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
    # The L{restygate.discovery.model.Instance} tried last, if any.
    instance: Any


_LOGGED = {b"host": 0, b"referer": 1, b"user-agent": 2}


def _logged(headers: List[Tuple[bytes, bytes]]) -> List[Optional[bytes]]:
    """The first C{Host}, C{Referer} and C{User-Agent} values, in one pass."""
    found: List[Optional[bytes]] = [None, None, None]
    for key, value in headers:
        where = _LOGGED.get(key.lower())
        if where is not None and found[where] is None:
            found[where] = value
    return found


_new_record = object.__new__


def completed_record(outcome: Outcome, request: Any, now: float) -> Completed:
    """The record of a request (a L{restygate.proxy.downstream.Downstream}) that ended."""
    # Filled through its __dict__, one item at a time: a frozen dataclass's
    # __init__ sets each field through object.__setattr__ (about 5 us a
    # record on CPython), and keyword arguments would build a dict first.
    # This is as cheap as __init__ on PyPy.  The record is as immutable to
    # its readers either way.
    record: Completed = _new_record(Completed)
    fields = record.__dict__
    fields["started"] = started = outcome.started
    fields["duration"] = now - started
    fields["client"] = request.client_ip
    fields["method"] = request.method.decode("latin-1")
    fields["uri"] = request.target.decode("latin-1")
    fields["proto"] = request.version.decode("latin-1")
    host, referer, user_agent = _logged(request.headers)
    fields["host"] = host.decode("latin-1") if host is not None else ""
    fields["referer"] = referer.decode("latin-1") if referer is not None else ""
    fields["user_agent"] = user_agent.decode("latin-1") if user_agent is not None else ""
    fields["status"] = request.status
    fields["bytes_sent"] = request.bytes_sent
    # Consul's spelling once discovery answered, so case variants share a series.
    snapshot, route = outcome.snapshot, outcome.route
    if snapshot is not None:
        fields["dc"], fields["service"] = snapshot.dc, snapshot.service
    elif route is not None:
        fields["dc"], fields["service"] = route.dc, route.service
    else:
        fields["dc"] = fields["service"] = None
    instance = outcome.instance
    fields["upstream"] = instance.netloc if instance is not None else None
    fields["upstream_latency"] = outcome.upstream_latency
    fields["retries"] = outcome.retries
    fields["error"] = outcome.error
    fields["aborted"] = outcome.aborted
    fields["failure"] = outcome.failure
    fields["bytes_received"] = outcome.tunnel_bytes_up
    fields["failed_over"] = outcome.failed_over
    return record
