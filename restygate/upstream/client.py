"""
The HTTP/1.1 client protocol restygate speaks to instances: one request at a
time on a keep-alive connection, the response parsed by llhttp (C{httptools};
under PyPy L{restygate.h1parse}'s parser in Python, with the same interface)
and handed, as it arrives, to a L{ResponseHandler}.

It owns the bytes both ways, so the proxy sees what the upstream really
said: header names in their case and order, repeats, C{Connection} and the
headers it names, 1xx answers, trailers, and a C{101} after which the
connection stops being HTTP.  Every way it can fail is reported as one
member of L{restygate.proxy.failure.Failure}, decided from what happened on
the wire, never from an exception's text.

A connection is only ever handed back for reuse when the exchange ended
cleanly: the whole request written, the whole response read, both sides
willing to keep the connection.  One that a response left in doubt (the
upstream answered before the request body was all sent, a response ended by
closing, a HEAD answer followed by stray bytes) is closed; so is one that
receives anything while idle.
"""

from __future__ import annotations

from typing import Any, Callable, Final, Optional, Tuple

import httptools
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure as TwistedFailure
from zope.interface import classImplements

from restygate._compat import read_directly, send_now
from restygate.h1parse import PURE_PYTHON, HttpResponseParser
from restygate.upstream.handler import BodySource, HeaderList, ResponseHandler
from restygate.proxy.headers import RESPONSE_NOTED, NotedAt
from restygate.proxy.failure import Failed, Failure
from restygate.tls import openssl_reason

__all__ = ["UpstreamConnection", "UpstreamTLSError"]

# An upstream's response head is held to the same bounds as a client's.
MAX_RESPONSE_HEAD: Final = 64 * 1024


_TLS_FAILED = "TLS handshake with the upstream failed"


class UpstreamTLSError(Exception):
    """
    The TLS handshake with an upstream failed: the request never reached it.
    """

    def __init__(self, string: str = "") -> None:
        super().__init__(f"{_TLS_FAILED}: {string}." if string else f"{_TLS_FAILED}.")


class UpstreamConnection(Protocol):
    """
    One keep-alive connection to an instance.

    @ivar reusable: whether the last exchange ended cleanly enough to reuse it.
    """

    def __init__(self, key: Any, on_idle: Callable[[UpstreamConnection], None],
                 on_lost: Callable[[UpstreamConnection], None]) -> None:
        self.key = key
        self.reused = False
        self.reusable = False
        self.tls_name: Optional[str] = None
        self._on_idle = on_idle
        self._on_lost = on_lost
        self._handler: Optional[ResponseHandler] = None
        self._body: Optional[BodySource] = None
        self._body_sent = True
        self._chunked = False
        self._head = False
        self._parser: Any = None
        self._status = 0
        self._reason = b""
        self._headers: HeaderList = []
        self._noted: NotedAt = []
        self._head_size = 0
        self._trailers: Optional[HeaderList] = None
        self._received = False
        self._keep_alive = False
        self._framed = False
        self._tunnel: Optional[Callable[[bytes], None]] = None
        self.connected = False

    # -- sending --------------------------------------------------------------
    def send(self, method: bytes, target: bytes, headers: HeaderList,
             body: Optional[BodySource], handler: ResponseHandler) -> None:
        """
        Send one request; C{headers} carry no framing when there is a C{body}.
        """
        self._handler = handler
        if self._parser is None:
            # One parser for the connection's responses in turn; a HEAD
            # answer stops it mid-way, so the next request gets a new one.
            self._parser = HttpResponseParser(self) if PURE_PYTHON else httptools.HttpResponseParser(self)
        self._head = method == b"HEAD"
        self._received = False
        self.reusable = False
        self._body = body
        self._body_sent = body is None
        # Lines joined once at the end: a %-format per header costs more.
        lines = [b" ".join((method, target, b"HTTP/1.1"))]
        lines += [b": ".join(pair) for pair in headers]
        if body is not None:
            length = body.length
            self._chunked = length is None
            lines.append(b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length)
        lines += (b"", b"")
        transport: Any = self.transport
        send_now(transport, b"\r\n".join(lines))
        if body is not None:
            transport.registerProducer(self, True)
            body.start(self)

    # The body's consumer side.
    def write(self, data: bytes) -> None:
        if data and self._body is not None:
            transport: Any = self.transport
            send_now(transport, b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    def finish(self, trailers: HeaderList) -> None:
        if self._body is None:
            return
        transport: Any = self.transport
        if self._chunked:
            send_now(transport, b"0\r\n" + b"".join(b"%s: %s\r\n" % t for t in trailers) + b"\r\n")
        self._body_done()
        self._body_sent = True

    def fail(self) -> None:
        """The client's upload broke off: this request cannot be completed."""
        self._body_done()
        self.abort()

    def _body_done(self) -> None:
        if self._body is not None:
            self._body = None
            transport: Any = self.transport
            if transport is not None:
                transport.unregisterProducer()

    # IPushProducer, for the request body: the socket to the instance is full.
    def pauseProducing(self) -> None:
        if self._body is not None:
            self._body.pause()

    def resumeProducing(self) -> None:
        if self._body is not None:
            self._body.resume()

    def stopProducing(self) -> None:
        pass

    # -- flow control of the response, driven by the client side -------------
    def pause_reading(self) -> None:
        transport: Any = self.transport
        transport.pauseProducing()

    def resume_reading(self) -> None:
        transport: Any = self.transport
        transport.resumeProducing()

    def abort(self) -> None:
        """Drop the connection now, whatever state it is in."""
        self._handler = None
        self.reusable = False
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def tunnel(self, sink: Callable[[bytes], None]) -> None:
        """After a 101: everything the upstream sends goes to C{sink}."""
        self._tunnel = sink

    # -- receiving ------------------------------------------------------------
    def connectionMade(self) -> None:
        self.connected = True
        read_directly(self)

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel(data)
            return
        if self._handler is None:
            # Bytes while idle: nothing we asked for, so nothing to trust.
            self.abort()
            return
        self._received = True
        handler = self._handler
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._switch(data[int(upgrade.args[0]):])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _HeadComplete):
                self._parser = None
                # A HEAD answer has no body whatever its headers say; llhttp
                # cannot be told, so it is stopped after the head.  Anything
                # after that head in this read is the upstream's mistake.
                self._complete(data.count(b"\r\n\r\n") == 1 and data.endswith(b"\r\n\r\n"))
            elif isinstance(cause, Failed):
                self._fail(cause)
            else:
                raise
        except httptools.HttpParserError as e:
            self._fail(Failed(Failure.UPSTREAM_PROTOCOL, f"invalid response: {e}"))
        if handler is not None:
            handler.response_flush()

    def on_message_begin(self) -> None:
        if self._handler is None:
            # A response nobody asked for (bytes after the last one ended).
            raise Failed(Failure.UPSTREAM_PROTOCOL, "bytes from the upstream while idle")
        self._headers = []
        self._noted = []
        self._trailers = None

    def on_status(self, reason: bytes) -> None:
        self._reason = reason
        self._head_size = len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._trailers is not None:
            self._trailers.append((name, value))
            return
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_RESPONSE_HEAD:
            raise Failed(Failure.UPSTREAM_PROTOCOL, "response headers over 64 KiB")
        # Each name is lowered here once, for the framing and the forwarding.
        lowered = name.lower()
        if lowered in RESPONSE_NOTED:
            self._noted.append((lowered, len(self._headers)))
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        handler = self._handler
        if handler is None:
            return
        if 100 <= status < 200 and status != 101:
            handler.response_interim(status, self._headers)
            return
        self._status = status
        self._keep_alive = self._parser.should_keep_alive()
        length, self._framed = _framing(self._headers, self._noted, status, self._head)
        self._trailers = []
        if status == 101:
            return
        handler.response_started(status, self._reason, self._headers, self._noted, length)
        if self._head:
            raise _HeadComplete()

    def on_body(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.response_body(data)

    def on_message_complete(self) -> None:
        if self._status and self._status != 101 and self._trailers is not None:
            self._complete()

    def _complete(self, clean: bool = True) -> None:
        handler, self._handler = self._handler, None
        self._status = 0
        trailers, self._trailers = self._trailers or [], None
        self.reusable = clean and self._keep_alive and self._framed
        if handler is not None:
            handler.response_done(trailers)
        if not self._body_sent:
            # Answered before the request body was all sent: the upstream
            # may or may not read the rest; the connection is in doubt.
            self.reusable = False
            self.abort()
        elif self.reusable:
            self._idle()
        else:
            transport: Any = self.transport
            transport.loseConnection()

    def _idle(self) -> None:
        self.reused = True
        self._on_idle(self)

    def _switch(self, rest: bytes) -> None:
        handler, self._handler = self._handler, None
        self.reusable = False
        if handler is not None and self._status == 101:
            self._body_done()
            handler.upgraded(self, self._reason, self._headers, rest)
        else:
            self._fail(Failed(Failure.UPSTREAM_PROTOCOL, "unexpected protocol switch"))

    def _fail(self, failed: Failed) -> None:
        handler = self._handler
        self.abort()
        if handler is not None:
            handler.response_failed(failed)

    def connectionLost(self, reason: TwistedFailure = connectionDone) -> None:
        self.connected = False
        self.reusable = False
        self._on_lost(self)
        body, self._body = self._body, None
        if body is not None:
            body.detach()
        handler, self._handler = self._handler, None
        if self._tunnel is not None:
            self._tunnel(b"")
            self._tunnel = None
            return
        if handler is None:
            return
        if self._status and not self._framed:
            # A response delimited by closing the connection ends here.
            handler.response_done([])
            return
        handler.response_failed(self._lost(reason))

    def _lost(self, reason: TwistedFailure) -> Failed:
        if reason.check(VerificationError):
            return Failed(Failure.TLS_FAILED, str(UpstreamTLSError(
                f"certificate is not valid for {self.tls_name!r}")))
        if reason.check(SSL.Error):
            error: Any = reason.value
            return Failed(Failure.TLS_FAILED, str(UpstreamTLSError(
                f"{openssl_reason(error)} (expecting {self.tls_name!r})")))
        if self._status:
            return Failed(Failure.UPSTREAM_CUT, f"connection lost mid-response: {reason.getErrorMessage()}")
        if self._received:
            return Failed(Failure.UPSTREAM_PROTOCOL, "connection lost inside the response head")
        return Failed(Failure.RESET_BEFORE_RESPONSE,
                      f"closed the connection before answering: {reason.getErrorMessage()}")


# Declared here, not with @implementer: a class decorator would keep mypyc
# (setup.py) from compiling the class as a native one.
classImplements(UpstreamConnection, IPushProducer)


class _HeadComplete(Exception):
    """Stops llhttp after the head of an answer to HEAD."""


def _framing(headers: HeaderList, noted: NotedAt, status: int, head: bool) -> Tuple[Optional[int], bool]:
    """
    The body length a response announces (L{None}: chunked or until close)
    and whether its end is known without closing the connection.
    """
    if head or status in (204, 304):
        return _content_length(headers, noted), True
    chunked = False
    for lowered, at in noted:
        if lowered == b"transfer-encoding":
            chunked = headers[at][1].strip().lower().endswith(b"chunked")
        elif lowered == b"content-length" and not chunked:
            return int(headers[at][1]), True
    return None, chunked


def _content_length(headers: HeaderList, noted: NotedAt) -> Optional[int]:
    for lowered, at in noted:
        if lowered == b"content-length":
            return int(headers[at][1])
    return None
