"""
The client's side of an exchange, as the engine sees it: what a front (the
lean HTTP/1.1 server, or twisted.web through L{GatewayResource}) provides so
the same engine can serve it.

The engine reads the request from it, answers through it, and hands it the
upstream connection to pause while the client cannot keep up.  The front
tells the engine when the client went away (L{ExchangeEvents.client_gone}).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Protocol, Tuple

from restygate.proxy.failure import Failure

__all__ = ["Downstream", "ExchangeEvents", "Pausable", "HeaderList"]

HeaderList = List[Tuple[bytes, bytes]]


class Pausable(Protocol):
    """Something sending the response body, which can be held back."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class ExchangeEvents(Protocol):
    """What the front tells the engine about one request."""

    def client_gone(self) -> None:
        """The client connection closed before the response was complete."""

    def client_failed(self, failure: Failure) -> None:
        """The client broke a rule mid-request (its body went over the limit)."""


class Downstream(Protocol):
    """
    One client request and the means to answer it.

    @ivar method: the request method.
    @ivar target: the request target, as sent.
    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    @ivar headers: the request headers as sent, in order.
    @ivar noted: the C{headers} the gateway acts on, with lowercase names
        (L{restygate.proxy.headers.noted_headers}).
    @ivar client_ip: the peer's address.
    @ivar secure: whether the client connection is TLS.
    @ivar body: the request body (a L{restygate.upstream.client.BodySource}),
        or L{None} when there is none.
    @ivar status: the status answered, 0 until then.
    @ivar bytes_sent: response body bytes written so far.
    @ivar started: whether the response has begun (no other status possible).
    """

    method: bytes
    target: bytes
    version: bytes
    headers: HeaderList
    noted: HeaderList
    client_ip: str
    secure: bool
    body: Any
    status: int
    bytes_sent: int
    started: bool

    def attach(self, events: ExchangeEvents) -> None:
        """The engine's exchange for this request."""

    def interim(self, status: int, headers: HeaderList) -> None:
        """Send a 1xx answer (C{103 Early Hints}) if the client can take it."""

    def respond(self, status: int, reason: bytes, headers: HeaderList, length: Optional[int]) -> None:
        """Start the response; C{length} is the body's when known."""

    def write(self, data: bytes) -> None: ...

    def flush(self) -> None:
        """Send what was written so far (a front may hold writes to join them)."""

    def finish(self, trailers: HeaderList) -> None:
        """The response is complete; trailers go out if the client asked for them."""

    def abort(self) -> None:
        """Cut the client connection: the response cannot be completed."""

    def set_source(self, source: Optional[Pausable]) -> None:
        """Where the response body comes from, to pause while the client is slow."""

    def take_over(self, sink: Callable[[bytes], None]) -> Optional[Tuple[Any, bytes]]:
        """
        For a tunnel: from now on the client's bytes go to C{sink} (C{b""}
        when it closes).  Returns the client connection's transport and the
        bytes it sent after the request's head, or L{None} when this front
        cannot give its connection away.
        """
