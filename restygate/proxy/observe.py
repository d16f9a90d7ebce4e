"""
What the gateway tells observers (access log, metrics) about each request.

The proxy builds one immutable L{Completed} record when a request ends and
hands it to every observer; observers never reach into the proxy's live
state, so adding one cannot change how requests are served.
"""

from __future__ import annotations

from typing import Any, Callable, Final, List, Optional, Tuple

from restygate.discovery.model import Instance, Snapshot
from restygate.proxy.downstream import Downstream
from restygate.proxy.failure import Failure
from restygate.proxy.routing import Route

__all__ = ["Completed", "FIELDS", "RequestObserver", "completed_record"]

# The record's fields, in order (the JSON access log writes them all).
FIELDS: Final = (
    "started", "duration", "client", "method", "uri", "proto", "host", "status", "bytes_sent", "dc", "service",
    "upstream", "upstream_latency", "retries", "error", "aborted", "referer", "user_agent", "failure",
    "bytes_received", "failed_over",
)


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

    # A plain class, not a frozen dataclass: one is made per request, and
    # compiled (setup.py) it is a native one, made without Python code (a
    # frozen dataclass sets each field through object.__setattr__, about
    # 5 us a record) and read by every observer without lookups by name.
    # Its fields are Final: observers share it, and none may change it.
    __slots__ = FIELDS

    def __init__(
        self,
        started: float,
        duration: float,
        client: str,
        method: str,
        uri: str,
        proto: str,
        host: str,
        status: int,
        bytes_sent: int,
        dc: Optional[str],
        service: Optional[str],
        upstream: Optional[str],
        upstream_latency: Optional[float],
        retries: int,
        error: Optional[str],
        aborted: bool,
        referer: str = "",
        user_agent: str = "",
        failure: Optional[Failure] = None,
        bytes_received: int = 0,
        failed_over: Optional[str] = None,
    ) -> None:
        self.started: Final = started
        self.duration: Final = duration
        self.client: Final = client
        self.method: Final = method
        self.uri: Final = uri
        self.proto: Final = proto
        self.host: Final = host
        self.status: Final = status
        self.bytes_sent: Final = bytes_sent
        self.dc: Final = dc
        self.service: Final = service
        self.upstream: Final = upstream
        self.upstream_latency: Final = upstream_latency
        self.retries: Final = retries
        self.error: Final = error
        self.aborted: Final = aborted
        self.referer: Final = referer
        self.user_agent: Final = user_agent
        self.failure: Final = failure
        self.bytes_received: Final = bytes_received
        self.failed_over: Final = failed_over

    def values(self) -> Tuple[Any, ...]:
        """The fields' values, in L{FIELDS}' order."""
        return (
            self.started, self.duration, self.client, self.method, self.uri, self.proto, self.host, self.status,
            self.bytes_sent, self.dc, self.service, self.upstream, self.upstream_latency, self.retries, self.error,
            self.aborted, self.referer, self.user_agent, self.failure, self.bytes_received, self.failed_over,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Completed) and self.values() == other.values()

    def __hash__(self) -> int:
        return hash(self.values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in zip(FIELDS, self.values()))
        return f"Completed({fields})"


RequestObserver = Callable[[Completed], None]


_LOGGED: Final = {b"host": 0, b"referer": 1, b"user-agent": 2}


def _logged(headers: List[Tuple[bytes, bytes]]) -> List[Optional[bytes]]:
    """The first C{Host}, C{Referer} and C{User-Agent} values, in one pass."""
    found: List[Optional[bytes]] = [None, None, None]
    for key, value in headers:
        where = _LOGGED.get(key.lower())
        if where is not None and found[where] is None:
            found[where] = value
    return found


def _text(value: Optional[bytes]) -> str:
    return value.decode("latin-1") if value is not None else ""


def completed_record(
    request: Downstream, now: float, started: float, route: Optional[Route], snapshot: Optional[Snapshot],
    instance: Optional[Instance], upstream_latency: Optional[float], retries: int, error: Optional[str],
    aborted: bool, failure: Optional[Failure], bytes_received: int, failed_over: Optional[str],
) -> Completed:
    """
    The record of C{request}, which ended at C{now}, from what its exchange
    knows of it (L{restygate.proxy.exchange.Exchange}): the values, not the
    exchange, so compiled they are read without lookups by name.
    """
    host, referer, user_agent = _logged(request.headers)
    # Consul's spelling once discovery answered, so case variants share a series.
    dc: Optional[str] = None
    service: Optional[str] = None
    if snapshot is not None:
        dc, service = snapshot.dc, snapshot.service
    elif route is not None:
        dc, service = route.dc, route.service
    return Completed(
        started, now - started, request.client_ip, request.method.decode("latin-1"),
        request.target.decode("latin-1"), request.version.decode("latin-1"), _text(host), request.status,
        request.bytes_sent, dc, service, instance.netloc if instance is not None else None, upstream_latency,
        retries, error, aborted, _text(referer), _text(user_agent), failure, bytes_received, failed_over,
    )
