"""
The lean HTTP/1.1 front's connection: a plain Twisted L{Protocol} per client,
parsing with llhttp (L{restygate.front.parser}) and handing each request to
the engine as a L{ClientRequest}.

It is where hostile input is turned away before it can reach an upstream:
malformed framing and smuggling vectors (400), oversized or too many
headers (431), a request line over the limit (414), HTTP versions other
than 1.0/1.1 (505), headers sent too slowly (408), bodies over the limit
(413) and connections over the limit (503).  Each gets a short JSON answer,
a log line, and a closed connection.

Pipelined requests are read ahead a little and answered in order; the
connection is the producer of its transport, so a slow client pauses the
upstream connection its current response comes from.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Final, List, Optional, Set, Tuple
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure as TwistedFailure
from zope.interface import classImplements

from restygate.front.answers import refusal
from restygate.front.body import RequestBody
from restygate.front.parser import ParseError, RequestParser
from restygate.front.request import ClientRequest
from restygate.proxy.engine import Engine
from restygate.proxy.failure import Failure

__all__ = ["HTTPConnection", "Front"]

log = Logger()

# Requests read ahead of the one being answered before reading pauses.
PIPELINE_DEPTH: Final = 8

# Seconds a cut response gets to deliver what was written before it.
CUT_GRACE: Final = 5.0


class Front(TypingProtocol):
    """What a connection needs of the factory that made it (L{GatewayFront})."""

    engine: Engine
    clock: IReactorTime
    timeOut: float
    channels: Set[Any]
    draining: bool

    @property
    def config(self) -> Any: ...

    def forget(self, connection: HTTPConnection) -> None: ...


class HTTPConnection(Protocol):
    """
    One client connection.
    """

    factory: Front

    def __init__(self) -> None:
        self.client_ip = "unknown"
        self.secure = False
        self.closing = False
        self.write_paused = False
        self._parser = RequestParser(self)
        self._queue: Deque[ClientRequest] = deque()
        self._parsing: Optional[ClientRequest] = None
        self._refused = False
        self._timer: Optional[IDelayedCall] = None
        self._timing_headers = False
        self._head_started = 0.0
        self._idle_since = 0.0
        self._closing_since = 0.0
        self._read_paused: Set[Any] = set()
        self._tunnel: Optional[Callable[[bytes], None]] = None
        self._upgrade_rest: Optional[List[bytes]] = None

    @property
    def busy(self) -> bool:
        """Whether a request is being answered (or a tunnel is open)."""
        return bool(self._queue) or self._tunnel is not None

    # -- connection -----------------------------------------------------------
    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.client_ip = str(getattr(transport.getPeer(), "host", "") or "unknown")
        self.secure = ISSLTransport.providedBy(transport)
        self.factory.channels.add(self)
        transport.registerProducer(self, True)
        self._idle_since = self.factory.clock.seconds()
        self._timer = self.factory.clock.callLater(self._period(), self._timed_out)

    def connectionLost(self, reason: TwistedFailure = connectionDone) -> None:
        self.closing = True
        self.factory.forget(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel(b"")
        parsing, self._parsing = self._parsing, None
        if parsing is not None and parsing.body is not None:
            parsing.body.client_lost()
        if self._queue:
            active = self._queue[0]
            self._queue.clear()
            if active.body is not None:
                active.body.client_lost()
            if not active.finished and active.events is not None:
                active.events.client_gone()

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel(data)
            return
        if self._refused:
            return
        if self._upgrade_rest is not None:
            self._upgrade_rest.append(data)
            self.pause_reading("upgrade", True)
            return
        if not self._timing_headers and self._parsing is None:
            # The first byte of a request starts the clock for its headers,
            # so a client trickling them in (slowloris) cannot hold us.
            self._timing_headers = True
            self._head_started = self.factory.clock.seconds()
        try:
            rest = self._parser.feed(data)
        except ParseError as e:
            self.refuse(e.status, e.message)
            return
        if rest is not None:
            # An Upgrade request: what follows belongs to the new protocol
            # if the upstream agrees, so it is held, and reading stops.
            self._upgrade_rest = [rest]
            self.pause_reading("upgrade", True)

    # -- the parser's events --------------------------------------------------
    def request_head(self, method: bytes, target: bytes, version: bytes, headers: List[Any],
                     noted: List[Any], keep_alive: bool, upgrade: bool) -> None:
        self._timing_headers = False
        length: Optional[int] = None
        chunked = False
        expect = te = False
        for lowered, value in noted:
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding":
                chunked = True
            elif lowered == b"expect":
                expect = value.lower() == b"100-continue"
            elif lowered == b"te":
                te = b"trailers" in value.lower()
        body: Optional[RequestBody] = None
        # Only a request with a body has a limit to look up (its service may have its own).
        limit = None if length is None and not chunked else self.factory.engine.policies.max_body(target, headers)
        if limit is not None and length is not None and length > limit:
            raise ParseError(413, "request body too large")
        if chunked or (length is not None and length > 0 and not upgrade):
            body = RequestBody(None if chunked else length, self._body_paused(), limit)
        # After an Upgrade request the parser stops: whatever answer it gets,
        # the connection ends with it unless it becomes a tunnel.
        request = ClientRequest(self, method, target, version, headers, noted, keep_alive and not upgrade, body, te)
        if body is not None:
            body.on_too_large = lambda: self._too_large(request)
            if expect and version == b"HTTP/1.1":
                body.continue_wanted = lambda: self._continue(request)
        self._parsing = request
        self._queue.append(request)
        if len(self._queue) == 1:
            self.factory.engine.handle(request)
        elif len(self._queue) > PIPELINE_DEPTH:
            self.pause_reading("pipeline", True)

    def request_body(self, data: bytes) -> None:
        parsing = self._parsing
        if parsing is not None and parsing.body is not None:
            parsing.body.write(data)

    def request_end(self, trailers: List[Any]) -> None:
        parsing, self._parsing = self._parsing, None
        if parsing is not None and parsing.body is not None:
            parsing.body.finish(trailers)

    def _body_paused(self) -> Callable[[bool], None]:
        key = object()
        return lambda paused: self.pause_reading(key, paused)

    def _continue(self, request: ClientRequest) -> None:
        if not request.started and self._queue and self._queue[0] is request:
            transport: Any = self.transport
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _too_large(self, request: ClientRequest) -> None:
        log.info("request body from {peer} over the limit; refused", peer=self.client_ip)
        if self._queue and self._queue[0] is request and request.events is not None:
            request.events.client_failed(Failure.BODY_TOO_LARGE)
        else:
            self.refuse(413, "request body too large")

    # -- answers --------------------------------------------------------------
    def request_done(self, request: ClientRequest) -> None:
        """C{request}'s response is complete."""
        if not self._queue or self._queue[0] is not request:
            return
        self._queue.popleft()
        if request.body is not None and request is not self._parsing:
            request.body.close()
        if not request.keep_alive or self.factory.draining or self.closing:
            self.closing = True
            transport: Any = self.transport
            transport.loseConnection()
            return
        if self._queue:
            self.pause_reading("pipeline", len(self._queue) > PIPELINE_DEPTH)
            self.factory.engine.handle(self._queue[0])
        else:
            self._idle_since = self.factory.clock.seconds()

    def cut(self, delimited: bool) -> None:
        """
        End a response that cannot be completed.  When its framing tells the
        client the body is short (a length, or chunks without the last one),
        what was written is still delivered before the close; otherwise, or
        when the client is not reading, the connection is reset.
        """
        self.closing = True
        transport: Any = self.transport
        if delimited and not self.write_paused:
            transport.loseConnection()
            # A client that stops reading now must not hold the connection.
            self._timing_headers = False
            self._closing_since = self.factory.clock.seconds()
            if self._timer is not None and self._timer.getTime() > self._closing_since + CUT_GRACE:
                self._timer.reset(CUT_GRACE)
        else:
            transport.abortConnection()

    def refuse(self, status: int, error: str) -> None:
        """
        Answer with C{status} and close, discarding whatever else the client
        sends: after malformed framing nothing more it says can be trusted.
        """
        log.info("refused a request from {peer}: {status} {error}", peer=self.client_ip, status=status, error=error)
        self._refused = True
        self.closing = True
        transport: Any = self.transport
        if self._queue and self._queue[0].started:
            # Another response is under way: it cannot be followed cleanly.
            transport.abortConnection()
            return
        transport.write(refusal(status, error))
        transport.loseConnection()

    # -- timers ---------------------------------------------------------------
    # One timer a connection, never moved on the request path: it wakes at
    # least every header-timeout and looks at when the current state began
    # (a head, an idle wait, a cut), so a deadline is met within one period
    # late at most, and serving a request costs two clock reads.
    def _period(self) -> float:
        return float(min(self.factory.config.header_timeout, self.factory.timeOut, CUT_GRACE * 6))

    def _timed_out(self) -> None:
        self._timer = None
        now = self.factory.clock.seconds()
        transport: Any = self.transport
        if self.closing:
            if self._closing_since and now >= self._closing_since + CUT_GRACE:
                transport.abortConnection()
                return
        elif self._timing_headers:
            if now >= self._head_started + self.factory.config.header_timeout:
                self.refuse(408, "request headers not received in time")
                return
        elif not self._queue and self._tunnel is None and now >= self._idle_since + self.factory.timeOut:
            transport.loseConnection()
            return
        self._timer = self.factory.clock.callLater(self._period(), self._timed_out)

    # -- flow control ---------------------------------------------------------
    def pause_reading(self, key: Any, paused: bool) -> None:
        """Stop (or start again) reading from the client, for C{key}'s sake."""
        transport: Any = self.transport
        if paused:
            if not self._read_paused:
                transport.pauseProducing()
            self._read_paused.add(key)
        elif key in self._read_paused:
            self._read_paused.discard(key)
            if not self._read_paused and not self.closing:
                transport.resumeProducing()

    def pauseProducing(self) -> None:
        self.write_paused = True
        if self._queue and self._queue[0].source is not None:
            self._queue[0].source.pause_reading()

    def resumeProducing(self) -> None:
        self.write_paused = False
        if self._queue and self._queue[0].source is not None:
            self._queue[0].source.resume_reading()

    def stopProducing(self) -> None:
        pass

    def take_over(self, request: ClientRequest, sink: Callable[[bytes], None]) -> Optional[Tuple[Any, bytes]]:
        """
        Give C{request}'s connection to a tunnel: from now on what the client
        sends goes to C{sink}.  Returns the transport and the bytes already
        read after the request's head.
        """
        if not self._queue or self._queue[0] is not request or self._upgrade_rest is None:
            return None
        self._queue.clear()
        transport: Any = self.transport
        transport.unregisterProducer()
        self._tunnel = sink
        held, self._upgrade_rest = self._upgrade_rest, None
        self._read_paused.clear()
        return transport, b"".join(held)


# Declared here, not with @implementer: a class decorator would keep mypyc
# (setup.py) from compiling the class as a native one.
classImplements(HTTPConnection, IPushProducer)
