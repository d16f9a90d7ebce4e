"""
Real backend HTTP servers on loopback for restygate's end-to-end tests.

An end-to-end test starts one or more of these on 127.0.0.1 (or ::1), puts
restygate in front of them and then asserts on what the backend actually saw:
how many TCP connections it accepted (keep-alive reuse), the request line and
headers exactly as they arrived on the wire (forwarding, hop-by-hop
stripping, query bytes), and a hash of the body.  `Backend` is a twisted.web
`Site` with a handful of behaviour routes (status codes, multi-valued headers,
large streamed or chunked bodies, slow, hanging and dripping answers);
`ResettingBackend` and `HalfResponseBackend` are tiny raw protocols for the
failure modes twisted.web will not produce on purpose.  Every server's
`stop()` also tears down open client connections, so trial ends each test
with a clean reactor.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import socket
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

__all__ = [
    "Backend",
    "COOKIES",
    "HalfResponseBackend",
    "RequestRecord",
    "ResettingBackend",
    "closed_port",
    "ipv6_available",
    "pattern_bytes",
    "pattern_sha256",
    "raw_exchange",
]

# Set-Cookie values sent by /cookies.  The Expires attribute contains a
# comma on purpose: a proxy that folds Set-Cookie into one comma-joined line
# produces something no client can split back apart.
COOKIES: tuple[bytes, ...] = (
    b"session=abc123; Path=/; HttpOnly",
    b"theme=dark; Max-Age=3600",
    b"id=42; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/",
)

# The body pattern is byte i == i % 251.  A prime period means a dropped or
# duplicated slice of any power-of-two size (the sizes buffers come in)
# changes the bytes that follow, not just the length.
_PERIOD = 251
_UNIT = bytes(range(_PERIOD))
# One pre-built block covers any piece up to 64 KiB without allocating.
_BLOCK = _UNIT * (65536 // _PERIOD + 2)
_HASH_BLOCK = 65536


def pattern_bytes(offset: int, length: int) -> bytes:
    """
    Return C{length} bytes of the deterministic body pattern starting at
    C{offset}; /big, /drip and L{HalfResponseBackend} all send this pattern.
    """
    if offset < 0 or length < 0:
        raise ValueError("offset and length must be >= 0")
    start = offset % _PERIOD
    if start + length <= len(_BLOCK):
        return _BLOCK[start : start + length]
    return (_UNIT * ((start + length) // _PERIOD + 1))[start : start + length]


@functools.lru_cache(maxsize=64)
def pattern_sha256(size: int) -> str:
    """
    Hex SHA-256 of the first C{size} pattern bytes, computed 64 KiB at a time
    so a test can check a multi-gigabyte body without holding it.
    """
    digest = hashlib.sha256()
    for offset in range(0, size, _HASH_BLOCK):
        digest.update(pattern_bytes(offset, min(_HASH_BLOCK, size - offset)))
    return digest.hexdigest()


def closed_port(interface: str = "127.0.0.1") -> int:
    """
    Return a port number on C{interface} that nothing listens on, so a
    connection to it is refused.

    The kernel picks a free port for a bound socket, which is then closed
    without ever listening.  Nothing reserves the number afterwards, so
    another bind could take it; use it straight away.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((interface, 0))
        port: int = probe.getsockname()[1]
    return port


def ipv6_available() -> bool:
    """
    Whether this host can bind a TCP socket to ::1 (containers often have no
    IPv6 loopback at all).
    """
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class RequestRecord:
    """
    One request as a L{Backend} received it.

    @ivar method: The request method, as sent.
    @ivar uri: The request-target bytes exactly as on the request line.
    @ivar version: The protocol version, e.g. C{b"HTTP/1.1"}.
    @ivar headers: Every header line in arrival order, name case and repeats
        preserved, values with surrounding whitespace removed.
    @ivar body_length: Number of body bytes after transfer decoding.
    @ivar body_sha256: Hex SHA-256 of those body bytes.
    @ivar connection: Which accepted connection (1, 2, ...) carried it.
    """

    method: bytes
    uri: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body_length: int
    body_sha256: str
    connection: int

    @property
    def path(self) -> bytes:
        """The request-target up to the first C{?}."""
        return self.uri.partition(b"?")[0]

    @property
    def query(self) -> bytes:
        """The raw bytes after the first C{?}, C{b""} if there is none."""
        return self.uri.partition(b"?")[2]

    def header_values(self, name: bytes) -> list[bytes]:
        """All values of header C{name} (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


class _LoopbackServer:
    """
    What every test server shares: listening on one address, counting
    accepted connections, and a C{stop()} that also drops the connections
    still open.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections_made = 0
        self._port: IListeningPort | None = None
        self._host = ""
        self._port_number = 0
        # Open connection -> Deferreds that fire once it is gone; stop()
        # waits on these so trial never sees a half-closed socket.
        self._open: dict[Protocol, list[Deferred[None]]] = {}

    def _build_factory(self, reactor: IReactorTCP) -> ServerFactory[Any]:
        raise NotImplementedError()

    def listen(
        self, reactor: IReactorTCP, interface: str = "127.0.0.1", port: int = 0
    ) -> IListeningPort:
        """
        Start listening; synchronous, so C{port}, C{host} and C{address} are
        usable as soon as this returns.  L{Backend} also needs C{reactor} to
        provide L{IReactorTime}: its delays run on it.

        @param interface: An IP literal; C{"::1"} listens on IPv6.
        @param port: 0 lets the kernel choose a free port.
        @raise twisted.internet.error.CannotListenError: If binding fails.
        """
        if self._port is not None:
            raise RuntimeError(f"{self.name} is already listening")
        listening = reactor.listenTCP(
            port, self._build_factory(reactor), interface=interface
        )
        bound = listening.getHost()
        if not isinstance(bound, (IPv4Address, IPv6Address)):
            raise TypeError(f"unexpected listening address {bound!r}")
        self._port = listening
        self._host = bound.host
        self._port_number = bound.port
        return listening

    @property
    def port(self) -> int:
        """The TCP port being (or last) listened on."""
        return self._port_number

    @property
    def host(self) -> str:
        """The bound IP literal, e.g. C{"127.0.0.1"} or C{"::1"}."""
        return self._host

    @property
    def address(self) -> str:
        """C{"host:port"}, with IPv6 hosts bracketed: C{"[::1]:8080"}."""
        if ":" in self._host:
            return f"[{self._host}]:{self._port_number}"
        return f"{self._host}:{self._port_number}"

    def url(self, path: str = "/") -> str:
        """An C{http://} URL for C{path} on this server."""
        return f"http://{self.address}{path}"

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed."""
        return len(self._open)

    def stop(self) -> Deferred[None]:
        """
        Stop listening and abort every open connection; the result fires
        once the port is closed and every connection is gone.

        Connections are aborted (RST) rather than closed gracefully because
        a graceful close waits for buffered response data to drain, which
        never happens if the peer stopped reading.  Safe to call twice.
        """
        waits: list[Deferred[Any]] = []
        if self._port is not None:
            waits.append(maybeDeferred(self._port.stopListening))
            self._port = None
        for protocol, waiters in list(self._open.items()):
            gone: Deferred[None] = Deferred()
            waiters.append(gone)
            waits.append(gone)
            if protocol.transport is not None:
                ITCPTransport(protocol.transport).abortConnection()
        return gatherResults(waits).addCallback(lambda _: None)

    def _connection_opened(self, protocol: Protocol) -> int:
        self.connections_made += 1
        self._open[protocol] = []
        return self.connections_made

    def _connection_closed(self, protocol: Protocol) -> None:
        for waiter in self._open.pop(protocol, []):
            waiter.callback(None)


# Not ServerFactory[Protocol]: Twisted 25.5 (the newest PyPy 3.9 gets)
# does not make factories generic at run time.
class _Factory(ServerFactory):  # type: ignore[type-arg]
    """
    A server factory that asks a callable for each protocol, so protocols
    can be built with a reference to the server that owns them.
    """

    def __init__(self, make: Callable[[], Protocol]) -> None:
        self._make = make

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        protocol = self._make()
        protocol.factory = self
        return protocol


class _BadRequest(Exception):
    """A route parameter is missing or malformed; answered with a 400."""


class _BackendChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that numbers its connection and records request
    header lines before Twisted canonicalises their names.
    """

    backend: Backend
    connection_number = 0

    def connectionMade(self) -> None:
        site = self.factory
        if not isinstance(site, _BackendSite):
            raise TypeError(f"_BackendChannel built by {site!r}")
        self.backend = site.backend
        self.connection_number = self.backend._connection_opened(self)
        super().connectionMade()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Twisted first: it fails the requests' notifyFinish Deferreds, which
        # is what cancels the timers of /slow and /drip.
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        self.backend._connection_closed(self)

    def headerReceived(self, line: bytes) -> bool:
        ok: bool = super().headerReceived(line)  # type: ignore[no-untyped-call]
        if ok:
            request = self.requests[-1]
            if isinstance(request, _BackendRequest):
                name, _, value = line.partition(b":")
                request.raw_headers.append((name, value.strip(b" \t")))
        return ok


class _BackendSite(Site):
    """A Site whose channels know which L{Backend} they serve."""

    # Twisted's default protocol is a wrapper that can switch to HTTP/2
    # after TLS ALPN; plain loopback HTTP/1.1 needs only the channel itself,
    # and subclassing the channel is how connections get counted.
    protocol = _BackendChannel  # type: ignore[assignment]

    def __init__(self, backend: Backend, reactor: IReactorTime) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            _Routes(backend), requestFactory=_BackendRequest, reactor=reactor
        )
        self.backend = backend


class _BackendRequest(Request):
    """
    A request that hashes its body as it arrives instead of storing it, and
    remembers its raw header lines and connection number.

    The hash replaces Twisted's buffering to a temporary file: a multi-gigabyte
    upload then costs neither memory nor disk, and every request (not just
    /upload) gets a body hash for its L{RequestRecord}.
    """

    def __init__(self, channel: HTTPChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)  # type: ignore[no-untyped-call]
        if not isinstance(channel, _BackendChannel):
            raise TypeError(f"_BackendRequest on {channel!r}")
        self.backend = channel.backend
        self.connection_number = channel.connection_number
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.client_gone = False
        self.record: RequestRecord | None = None
        self._body_digest = hashlib.sha256()
        self._body_length = 0

    # -- Twisted's channel-to-request hooks --------------------------------

    def gotLength(self, length: int | None) -> None:
        # Nothing is ever written to content (see handleContentChunk); an
        # empty buffer keeps Twisted's own bookkeeping in requestReceived
        # working without opening a temporary file per large request.
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        self._body_digest.update(data)
        self._body_length += len(data)

    def process(self) -> None:
        # Record before routing so /hang and /slow requests are visible to
        # the test while they are still pending.
        self.record = RequestRecord(
            method=self.method,
            uri=self.uri,
            version=self.clientproto,
            headers=list(self.raw_headers),
            body_length=self._body_length,
            body_sha256=self._body_digest.hexdigest(),
            connection=self.connection_number,
        )
        self.backend.requests_seen.append(self.record)
        super().process()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:
        self.client_gone = True
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    # -- typed, disconnect-safe wrappers used by the routes -----------------
    # twisted.web.http.Request is unannotated, and finish() raises once the
    # client is gone; the routes go through these instead.

    def send(self, data: bytes) -> None:
        """Write body bytes (the first call also sends the headers)."""
        if not self.client_gone:
            self.write(data)  # type: ignore[no-untyped-call]

    def finish_response(self) -> None:
        """Finish the response unless the client already left."""
        if not self.client_gone and not self.finished:
            self.finish()  # type: ignore[no-untyped-call]

    def stream_from(self, producer: IPushProducer) -> None:
        self.registerProducer(producer, True)  # type: ignore[no-untyped-call]

    def stop_streaming(self) -> None:
        self.unregisterProducer()  # type: ignore[no-untyped-call]

    def when_client_gone(self, cleanup: Callable[[], None]) -> None:
        """Call C{cleanup} if the connection drops before the response ends."""

        def gone(reason: Failure) -> None:
            cleanup()

        self.notifyFinish().addErrback(gone)


def _query(request: _BackendRequest) -> dict[bytes, list[bytes]]:
    return parse_qs(request.uri.partition(b"?")[2], keep_blank_values=True)


def _int_arg(
    query: dict[bytes, list[bytes]], name: bytes, default: int, minimum: int
) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise _BadRequest(f"{name.decode()} must be an integer") from None
    if value < minimum:
        raise _BadRequest(f"{name.decode()} must be >= {minimum}")
    return value


def _float_arg(query: dict[bytes, list[bytes]], name: bytes, default: float) -> float:
    values = query.get(name)
    if not values:
        return default
    try:
        value = float(values[-1])
    except ValueError:
        raise _BadRequest(f"{name.decode()} must be a number") from None
    if not value >= 0:  # also rejects NaN
        raise _BadRequest(f"{name.decode()} must be >= 0")
    return value


def _flag_arg(query: dict[bytes, list[bytes]], name: bytes) -> bool:
    values = query.get(name)
    if not values:
        return False
    return values[-1] not in (b"", b"0", b"false", b"no")


def _json_bytes(document: object) -> bytes:
    return json.dumps(document).encode("utf-8")


def _text(data: bytes) -> str:
    # latin-1 maps every byte to one code point, so the JSON shows exactly
    # the bytes that arrived, whatever they were.
    return data.decode("latin-1")


@implementer(IPushProducer)
class _PatternStream:
    """
    Push producer for /big: writes pattern pieces until the transport's
    buffer is full (Twisted then calls pauseProducing), continues on
    resumeProducing, so at most about one buffer of the body is in memory.
    """

    def __init__(self, request: _BackendRequest, size: int, chunk: int) -> None:
        self._request = request
        self._size = size
        self._chunk = chunk
        self._sent = 0
        self._paused = False
        self._stopped = False
        self._pumping = False

    def start(self) -> None:
        self._request.stream_from(self)
        self._request.when_client_gone(self.stopProducing)
        self._pump()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._stopped = True

    def _pump(self) -> None:
        # A write can call back into pause/resume; the flag keeps the loop
        # from re-entering itself and lets the outer loop carry on.
        if self._pumping:
            return
        self._pumping = True
        try:
            while not (self._paused or self._stopped) and self._sent < self._size:
                piece = pattern_bytes(
                    self._sent, min(self._chunk, self._size - self._sent)
                )
                self._sent += len(piece)
                self._request.send(piece)
        finally:
            self._pumping = False
        if self._sent >= self._size and not self._stopped:
            self._stopped = True
            self._request.stop_streaming()
            self._request.finish_response()


class _Drip:
    """Sends /drip's body one piece per C{delay} seconds."""

    def __init__(
        self,
        request: _BackendRequest,
        clock: IReactorTime,
        size: int,
        chunk: int,
        delay: float,
    ) -> None:
        self._request = request
        self._clock = clock
        self._size = size
        self._chunk = chunk
        self._delay = delay
        self._sent = 0
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self._request.when_client_gone(self._cancel)
        # An empty write sends the status line and headers now, before the
        # first delay, which is the point of this route.
        self._request.send(b"")
        self._next()

    def _next(self) -> None:
        if self._sent >= self._size:
            self._request.finish_response()
        else:
            self._call = self._clock.callLater(self._delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        piece = pattern_bytes(self._sent, min(self._chunk, self._size - self._sent))
        self._sent += len(piece)
        self._request.send(piece)
        self._next()

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class _Routes(Resource):
    """The routing table of a L{Backend}; every route accepts any method."""

    isLeaf = True

    def __init__(self, backend: Backend) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._backend = backend
        self._routes: dict[bytes, Callable[[_BackendRequest], bytes | int]] = {
            b"/big": self._big,
            b"/cookies": self._cookies,
            b"/drip": self._drip,
            b"/hang": self._hang,
            b"/headers": self._headers,
            b"/slow": self._slow,
            b"/upload": self._upload,
        }

    def render(self, request: Request) -> bytes | int:
        if not isinstance(request, _BackendRequest):
            raise TypeError(f"unexpected request {request!r}")
        path = request.uri.partition(b"?")[0]
        try:
            if path.startswith(b"/status/"):
                return self._status(request, path[len(b"/status/") :])
            route = self._routes.get(path, self._echo)
            if path not in self._routes and self._backend.delay > 0:
                return self._answer_after(request, self._backend.delay)
            return route(request)
        except _BadRequest as error:
            return self._json(request, 400, {"error": str(error)})

    def _json(self, request: _BackendRequest, code: int, document: object) -> bytes:
        # Returning bytes lets twisted.web set Content-Length (and drop the
        # body for HEAD while keeping that length).
        request.setResponseCode(code)
        request.responseHeaders.setRawHeaders(b"Content-Type", [b"application/json"])
        return _json_bytes(document)

    def _echo_document(self, request: _BackendRequest) -> dict[str, object]:
        record = request.record
        if record is None:
            raise RuntimeError("request rendered before it was recorded")
        return {
            "backend": self._backend.name,
            "method": _text(record.method),
            "uri": _text(record.uri),
            "path": _text(record.path),
            "query": _text(record.query),
            "version": _text(record.version),
            "headers": [[_text(k), _text(v)] for k, v in record.headers],
            "body_length": record.body_length,
            "body_sha256": record.body_sha256,
            "connection": record.connection,
        }

    def _echo(self, request: _BackendRequest) -> bytes:
        return self._json(request, 200, self._echo_document(request))

    def _status(self, request: _BackendRequest, code_text: bytes) -> bytes | int:
        if not (code_text.isdigit() and 200 <= int(code_text) <= 599):
            raise _BadRequest("/status/<code> needs a code from 200 to 599")
        code = int(code_text)
        if code in NO_BODY_CODES:
            # 204 and 304 must carry neither a body nor a Content-Length;
            # an empty write sends just the headers.
            request.setResponseCode(code)
            request.send(b"")
            request.finish_response()
            return NOT_DONE_YET
        return self._json(request, code, {"backend": self._backend.name, "status": code})

    def _cookies(self, request: _BackendRequest) -> bytes:
        for cookie in COOKIES:
            request.responseHeaders.addRawHeader(b"Set-Cookie", cookie)
        return self._json(
            request, 200, {"backend": self._backend.name, "cookies": [_text(c) for c in COOKIES]}
        )

    def _headers(self, request: _BackendRequest) -> bytes:
        pairs: list[tuple[bytes, bytes]] = []
        for spec in _query(request).get(b"set", []):
            name, colon, value = spec.partition(b":")
            if not colon or not name.strip():
                raise _BadRequest("set= needs Name:Value")
            pairs.append((name.strip(), value.strip()))
        for name, value in pairs:
            # addRawHeader, so set=X:1&set=X:2 yields two X lines.
            request.responseHeaders.addRawHeader(name, value)
        return self._json(
            request,
            200,
            {"backend": self._backend.name, "set": [[_text(k), _text(v)] for k, v in pairs]},
        )

    def _big(self, request: _BackendRequest) -> bytes | int:
        query = _query(request)
        size = _int_arg(query, b"size", 0, 0)
        chunk = _int_arg(query, b"chunk", 65536, 1)
        chunked = _flag_arg(query, b"chunked")
        request.setResponseCode(200)
        request.responseHeaders.setRawHeaders(
            b"Content-Type", [b"application/octet-stream"]
        )
        if not chunked:
            request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % size])
        if request.method == b"HEAD":
            # twisted.web keeps a Content-Length already set when a HEAD
            # render returns an empty body.
            return b""
        # Without Content-Length, twisted.web frames an HTTP/1.1 response
        # with Transfer-Encoding: chunked.
        _PatternStream(request, size, chunk).start()
        return NOT_DONE_YET

    def _upload(self, request: _BackendRequest) -> bytes:
        # The body was hashed as it arrived (see _BackendRequest), so there
        # is nothing left to read here.
        record = request.record
        if record is None:
            raise RuntimeError("request rendered before it was recorded")
        return self._json(
            request,
            200,
            {
                "backend": self._backend.name,
                "body_length": record.body_length,
                "body_sha256": record.body_sha256,
            },
        )

    def _slow(self, request: _BackendRequest) -> int:
        return self._answer_after(request, _float_arg(_query(request), b"delay", 1.0))

    def _answer_after(self, request: _BackendRequest, delay: float) -> int:
        body = self._json(request, 200, self._echo_document(request))
        request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])

        def answer() -> None:
            request.send(body)
            request.finish_response()

        call = self._backend.clock.callLater(delay, answer)

        def cancel() -> None:
            if call.active():
                call.cancel()

        request.when_client_gone(cancel)
        return NOT_DONE_YET

    def _hang(self, request: _BackendRequest) -> int:
        # Nothing is scheduled, so there is nothing to cancel: when the
        # client (or stop()) drops the connection, Twisted discards the
        # request and the record in requests_seen is all that remains.
        return NOT_DONE_YET

    def _drip(self, request: _BackendRequest) -> bytes | int:
        query = _query(request)
        size = _int_arg(query, b"size", 10, 0)
        chunk = _int_arg(query, b"chunk", 1, 1)
        delay = _float_arg(query, b"delay", 0.1)
        request.setResponseCode(200)
        request.responseHeaders.setRawHeaders(
            b"Content-Type", [b"application/octet-stream"]
        )
        if not _flag_arg(query, b"chunked"):
            request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % size])
        if request.method == b"HEAD":
            return b""
        _Drip(request, self._backend.clock, size, chunk, delay).start()
        return NOT_DONE_YET


class Backend(_LoopbackServer):
    """
    A keep-alive HTTP/1.1 test backend (twisted.web L{Site}).

    Every request is appended to L{requests_seen} as a L{RequestRecord}.
    Routes, for any method:

      - C{/status/<code>}: that status (200-599) with a small JSON body;
        204 and 304 come with no body at all.
      - C{/cookies}: three C{Set-Cookie} headers, the values in L{COOKIES}.
      - C{/headers?set=Name:Value&set=...}: adds those response headers
        (repeat a name for several lines); JSON lists them.  Framing headers
        set here are overridden by twisted.web.
      - C{/big?size=N&chunk=K[&chunked=1]}: N pattern bytes (see
        L{pattern_bytes}), written K (default 65536) at a time by a push
        producer; Content-Length unless C{chunked=1}.  HEAD gets the same
        headers and no body.
      - C{/upload}: JSON C{backend}, C{body_length}, C{body_sha256}.
      - C{/slow?delay=S}: the echo document after S seconds (default 1).
      - C{/hang}: never answers.
      - C{/drip?size=N&delay=S[&chunk=K][&chunked=1]}: headers at once, then
        K (default 1) pattern bytes every S seconds (defaults N=10, S=0.1).
      - anything else: 200 with the JSON echo document (after L{delay}
        seconds when that is set: a slow instance): C{backend},
        C{method}, C{uri}, C{path}, C{query}, C{version}, C{headers} (list of
        C{[name, value]}), C{body_length}, C{body_sha256}, C{connection};
        bytes are decoded as latin-1.

    Bad parameters get a 400 JSON C{{"error": ...}}.
    """

    def __init__(self, name: str = "backend") -> None:
        super().__init__(name)
        self.requests_seen: list[RequestRecord] = []
        self._clock: IReactorTime | None = None
        self.delay = 0.0

    @property
    def clock(self) -> IReactorTime:
        """The reactor given to L{listen}, used for every delay."""
        if self._clock is None:
            raise RuntimeError(f"{self.name} is not listening")
        return self._clock

    def _build_factory(self, reactor: IReactorTCP) -> ServerFactory[Any]:
        self._clock = IReactorTime(reactor)
        return _BackendSite(self, self._clock)


class _ResettingProtocol(Protocol):
    def __init__(self, server: ResettingBackend) -> None:
        self._server = server

    def connectionMade(self) -> None:
        self._server._connection_opened(self)
        if self.transport is not None:
            ITCPTransport(self.transport).abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._server._connection_closed(self)


class ResettingBackend(_LoopbackServer):
    """
    Accepts each TCP connection and resets it at once (RST, via
    C{abortConnection}), before reading the request or sending a byte.
    C{connections_made} counts the attempts.
    """

    def __init__(self, name: str = "resetting") -> None:
        super().__init__(name)

    def _build_factory(self, reactor: IReactorTCP) -> ServerFactory[Any]:
        return _Factory(lambda: _ResettingProtocol(self))


class _HalfResponseProtocol(Protocol):
    def __init__(self, server: HalfResponseBackend) -> None:
        self._server = server
        self._received = b""
        self._answered = False

    def connectionMade(self) -> None:
        self._server._connection_opened(self)

    def dataReceived(self, data: bytes) -> None:
        if self._answered or self.transport is None:
            return
        self._received += data
        head, found, _ = self._received.partition(b"\r\n\r\n")
        if not found:
            return
        self._answered = True
        self._server.request_heads.append(head)
        server = self._server
        self.transport.write(
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n"
            b"\r\n" % server.content_length
            + pattern_bytes(0, server.body_bytes)
        )
        if server.abort:
            ITCPTransport(self.transport).abortConnection()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._server._connection_closed(self)


class HalfResponseBackend(_LoopbackServer):
    """
    Answers the first request on each connection with a status line and
    headers promising C{content_length} bytes, sends only C{body_bytes}
    pattern bytes, then closes: a backend failing mid-body.

    The close is a FIN by default, a RST with C{abort=True}.  The response
    goes out once the request head has arrived; any request body is not
    read (send bodyless requests, or the kernel may turn the FIN into a RST).
    The heads received are kept in C{request_heads}.
    """

    def __init__(
        self,
        name: str = "half-response",
        content_length: int = 1000,
        body_bytes: int = 10,
        abort: bool = False,
    ) -> None:
        super().__init__(name)
        self.content_length = content_length
        self.body_bytes = body_bytes
        self.abort = abort
        self.request_heads: list[bytes] = []

    def _build_factory(self, reactor: IReactorTCP) -> ServerFactory[Any]:
        return _Factory(lambda: _HalfResponseProtocol(self))


class _Exchange(Protocol):
    def __init__(self, request: bytes) -> None:
        self._request = request
        self._chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(b"".join(self._chunks))


def raw_exchange(
    reactor: IReactorTCP, host: str, port: int, request: bytes
) -> Deferred[bytes]:
    """
    Send C{request} bytes over a new TCP connection and fire with every byte
    received until the server closes it (FIN or RST alike).

    For looking at a response on the wire, which C{Agent} hides (it consumes
    Content-Length, Transfer-Encoding and Connection, and reports a HEAD
    response's length as 0).  Ask for C{Connection: close}, or this waits
    for the server's idle timeout.
    """
    endpoint: IStreamClientEndpoint
    if ":" in host:
        endpoint = TCP6ClientEndpoint(reactor, host, port)  # type: ignore[no-untyped-call]
    else:
        endpoint = TCP4ClientEndpoint(reactor, host, port)
    exchange = _Exchange(request)
    # connectProtocol is unannotated in Twisted.
    connected: Deferred[Protocol] = connectProtocol(  # type: ignore[no-untyped-call]
        endpoint, exchange
    )
    return connected.addCallback(lambda _: exchange.done)
