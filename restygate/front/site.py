"""
The HTTP/1.1 server side of the gateway: twisted.web's L{Site}, with a
channel and request that stream request bodies instead of buffering them.

Stock twisted.web reads a whole request body (into memory or a temporary
file) before any resource sees the request.  A gateway must instead start
the upstream request as soon as the headers are in and pass the body along
as it arrives, so L{GatewayChannel} dispatches requests that have a body at
end of headers, and L{GatewayRequest} uses a L{RequestBody} as its content.
Requests also skip twisted.web's form-argument parsing and default headers:
the gateway forwards bodies and headers, it does not interpret them.

The channel is also where hostile input is turned away before it can reach
an upstream: oversized or too many headers (431), obsolete line folding and
stray CR/LF/NUL in header lines (400, the usual request-smuggling vectors;
conflicting or repeated Content-Length/Transfer-Encoding are refused by
twisted.web itself), HTTP versions other than 1.0/1.1 (505), headers sent too
slowly (408), bodies over the limit (413) and connections over the limit
(503).  Each gets a short JSON answer, a log line, and a closed connection.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any, Dict, List, Optional, Set

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from restygate.front.answers import send_error
from restygate.front.body import RequestBody

__all__ = ["GatewayChannel", "GatewayRequest", "GatewaySite"]

log = Logger()

# Idle keep-alive connections from clients are closed after this long, like
# nginx's keepalive_timeout default.
CLIENT_IDLE_TIMEOUT = 75


class GatewayRequest(Request):
    """
    A request whose body, if any, streams through L{RequestBody}.
    """

    defaultContentType = None
    body: Optional[RequestBody] = None

    def gotLength(self, length: Optional[int]) -> None:
        if length == 0:
            self.content = BytesIO()
        else:
            self.body = RequestBody(
                length,
                IPushProducer(self.channel.transport),
                limit=self.channel.site.config.max_body,  # type: ignore[attr-defined]
                on_too_large=self._too_large,
            )
            self.content = self.body

    def connectionLost(self, reason: Failure) -> None:
        if self.body is not None:
            self.body.client_lost()
        super().connectionLost(reason)

    def handleContentChunk(self, data: bytes) -> None:
        # Goes to the body object itself: once an early answer has finished
        # the request, twisted.web drops its content, yet the rest of the
        # upload still arrives here and must be discarded quietly.
        if self.body is not None:
            self.body.write(data)
        else:
            super().handleContentChunk(data)

    def _too_large(self) -> None:
        log.info("request body from {peer} over the limit; refused", peer=_peer(self.channel))
        send_error(self, 413, "request body too large")

    def headersReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        All headers of a request with a body are in: dispatch it now, the
        body follows through L{RequestBody}.
        """
        self._requestLine(command, path, version)
        self.process()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.body is not None:
            self.body.finish()
            return
        self._requestLine(command, path, version)
        self.process()

    def _requestLine(self, command: bytes, path: bytes, version: bytes) -> None:
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.split(b"?", 1)[0]
        self.args = {}

    def process(self) -> None:
        self.site = self.channel.site  # type: ignore[attr-defined]
        self.prepath = []
        self.postpath = []
        try:
            self.render(self.site.resource)
        except BaseException:
            self.processingFailed(Failure())

    def processingFailed(self, reason: Failure) -> None:
        log.failure("internal error serving {uri!r}", reason, uri=self.uri)
        send_error(self, 500, "internal error")

    def write(self, data: bytes) -> None:
        if not self.startedWriting and self.body is not None and not self.body.complete:
            # Answering before the upload is complete: the rest of the body
            # will not be read as a request, so this connection cannot be
            # reused.
            self.channel.persistent = False
            self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        super().write(data)


def _peer(channel: Any) -> str:
    transport = getattr(channel, "transport", None)
    peer = transport.getPeer() if transport is not None else None
    return str(getattr(peer, "host", "-"))


def refusal(status: int, error: str) -> bytes:
    """
    A complete, self-contained HTTP/1.1 error response that closes the
    connection, for answers given before there is a request object to use.
    """
    body = json.dumps({"error": error, "status": status}).encode("utf-8")
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (status, RESPONSES.get(status, b"Error"), len(body), body)
    )


class GatewayChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that hands requests with a body to the site at end of
    headers, and refuses hostile or malformed input early.
    """

    site: GatewaySite
    maxHeaders = 100
    _in_headers = False
    _awaiting = True
    # The header clock: one timer a connection, moved on for each request
    # rather than made and cancelled per request; it only counts while
    # _timing_headers.
    _deadline: Optional[IDelayedCall] = None
    _timing_headers = False
    _refused = False
    _host: Optional[IAddress] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)

    def getHost(self) -> IAddress:
        # Twisted's Request asks on every request, and a TCP transport asks
        # the kernel each time; a connection's own address never changes.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.site.forget(self)
        self._cancel_deadline()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._awaiting:
            # The first byte of a request starts the clock for its headers,
            # so a client trickling them in (slowloris) cannot hold us.
            self._awaiting = False
            self._timing_headers = True
            timeout = self.site.config.header_timeout
            if self._deadline is not None and self._deadline.active():
                self._deadline.reset(timeout)
            else:
                self._deadline = self.callLater(timeout, self._headers_too_slow)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if not self._in_headers:
            if line:
                self._in_headers = True
                version = line.rsplit(b" ", 1)[-1]
                if version.startswith(b"HTTP/") and version not in (b"HTTP/1.0", b"HTTP/1.1"):
                    self.refuse(505, "HTTP version not supported")
                    return
        elif line == b"":
            self._in_headers = False
        else:
            if line[:1] in (b" ", b"\t"):
                self.refuse(400, "obsolete header line folding is not accepted")
                return
            if b"\r" in line or b"\n" in line or b"\x00" in line:
                self.refuse(400, "CR, LF or NUL inside a header line")
                return
            if self._receivedHeaderCount >= self.maxHeaders:
                self.refuse(431, "too many request headers")
                return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(431, "request headers too large")
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        status = 431 if self._in_headers else 414
        self.refuse(status, "request header line too long" if status == 431 else "request URI too long")

    def refuse(self, status: int, error: str) -> None:
        """
        Answer with C{status} and close, discarding whatever else the client
        sends: after malformed framing nothing more it says can be trusted.
        """
        log.info("refused a request from {peer}: {status} {error}", peer=_peer(self), status=status, error=error)
        self._refused = True
        self._cancel_deadline()
        transport: Any = self.transport
        transport.write(refusal(status, error))
        self.loseConnection()

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self._timing_headers:
            self.refuse(408, "request headers not received in time")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def allHeadersReceived(self) -> None:
        self._timing_headers = False
        limit = self.site.config.max_body
        if limit is not None and self.length is not None and self.length > limit:
            self.refuse(413, "request body too large")
            return
        super().allHeadersReceived()
        request = self.requests[-1] if self.requests else None
        if isinstance(request, GatewayRequest) and request.body is not None:
            request.headersReceived(self._command, self._path, self._version)

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        self._awaiting = True
        if self.site.draining and not self.requests:
            self.loseConnection()

    def allContentReceived(self) -> None:
        # An early answer may have finished and removed the request before
        # its body was all read; the rest of that body is simply dropped.
        if self.requests and not self._refused:
            super().allContentReceived()


class _Busy(Protocol):
    """
    Answers a connection over the limit with a 503 and closes it: a clear
    refusal instead of a silent reset.
    """

    def connectionMade(self) -> None:
        log.warn("too many client connections; refusing {peer}", peer=_peer(self))
        transport: Any = self.transport
        transport.write(refusal(503, "too many connections"))
        transport.loseConnection()


class GatewaySite(Site):
    """
    A L{Site} serving one gateway resource over L{GatewayChannel}s.

    @ivar channels: the open client connections.
    """

    requestFactory = GatewayRequest
    protocol = GatewayChannel  # type: ignore[assignment]
    displayTracebacks = False
    noisy = False

    def __init__(self, resource: IResource, reactor: Any = None, timeout: float = CLIENT_IDLE_TIMEOUT) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)
        self.channels: Set[GatewayChannel] = set()
        self.draining = False
        self._closed_waiters: Dict[GatewayChannel, List[Deferred[None]]] = {}

    def forget(self, channel: GatewayChannel) -> None:
        self.channels.discard(channel)
        for waiter in self._closed_waiters.pop(channel, []):
            waiter.callback(None)

    @property
    def config(self) -> Any:
        return getattr(self.resource, "config")

    def reconfigure(self, config: Any) -> None:
        # Connections accepted from now on get the new idle timeout; the
        # other limits are read from the config on each use.
        self.timeOut = config.body_idle_timeout

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.channels) >= self.config.max_connections:
            busy = _Busy()
            busy.factory = self
            return busy
        return super().buildProtocol(addr)

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Close idle connections now, the others as soon as their response is
        done; after C{timeout} seconds, cut what is left.
        """
        self.draining = True
        waits: List[Deferred[Any]] = []
        for channel in list(self.channels):
            channel.persistent = False
            if not channel.requests:
                channel.loseConnection()
            closed: Deferred[None] = Deferred()
            self._closed_waiters.setdefault(channel, []).append(closed)
            waits.append(closed)
        if not waits:
            return succeed(None)
        clock: IReactorTime = self.reactor
        timer = clock.callLater(timeout, self._cut, "drain timeout")
        done: Deferred[Any] = DeferredList(waits)

        def finished(_: Any) -> None:
            if timer.active():
                timer.cancel()

        done.addCallback(finished)
        return done

    def _cut(self, why: str) -> None:
        for channel in list(self.channels):
            log.warn("closing a client connection still busy at shutdown ({why})", why=why)
            transport: Any = channel.transport
            transport.abortConnection()

    def log(self, request: Any) -> None:
        # restygate writes its own access log (restygate.ops.accesslog).
        pass
