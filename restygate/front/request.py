"""
One request on a lean front connection, as the engine sees it (a
L{restygate.proxy.downstream.Downstream}): its head, its body, and the
writing of its response in HTTP/1.1 framing.

The framing is the front's business: the upstream's C{Content-Length} is
kept (on HEAD and 304 answers too); a body of unknown length goes out
chunked to an HTTP/1.1 client (with the upstream's trailers when the client
said C{TE: trailers}) and delimited by closing to an HTTP/1.0 one; an
HTTP/1.0 client that asked for keep-alive gets it.  A response given before
the upload was all read ends the connection, since the rest of the upload
cannot be told from a next request.
"""

from __future__ import annotations

from typing import Any, Callable, Final, List, Optional, Protocol, Tuple

from restygate._compat import send_now
from restygate.front.body import RequestBody
from restygate.proxy.downstream import ExchangeEvents, Pausable

__all__ = ["ClientRequest", "FrontConnection"]

HeaderList = List[Tuple[bytes, bytes]]


class FrontConnection(Protocol):
    """What a request needs of its connection (L{restygate.front.server.HTTPConnection})."""

    client_ip: str
    secure: bool
    closing: bool
    write_paused: bool
    transport: Any

    def request_done(self, request: ClientRequest) -> None: ...

    def cut(self, delimited: bool) -> None: ...

    def take_over(self, request: ClientRequest, sink: Callable[[bytes], None]) -> Optional[Tuple[Any, bytes]]: ...

_NO_BODY_STATUS: Final = frozenset({204, 304})


class ClientRequest:
    """
    A request read by a front connection, answered through it.
    """

    def __init__(
        self,
        connection: FrontConnection,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: HeaderList,
        noted: HeaderList,
        keep_alive: bool,
        body: Optional[RequestBody],
        wants_trailers: bool,
    ) -> None:
        self.connection = connection
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.noted = noted
        self.keep_alive = keep_alive
        self.body = body
        self.client_ip = connection.client_ip
        self.secure = connection.secure
        self.wants_trailers = wants_trailers
        self.status = 0
        self.bytes_sent = 0
        self.started = False
        self.finished = False
        self.source: Optional[Pausable] = None
        self.events: Optional[ExchangeEvents] = None
        self._chunked = False
        self._no_body = False
        self._length: Optional[int] = None
        # The response's bytes not sent yet: the head waits for the body
        # read with it, so a small answer leaves in one write.
        self._out: List[bytes] = []

    def attach(self, events: ExchangeEvents) -> None:
        self.events = events

    def interim(self, status: int, headers: HeaderList) -> None:
        if self.version == b"HTTP/1.1" and not self.started and not self.finished:
            transport: Any = self.connection.transport
            transport.write(
                b"HTTP/1.1 %d Early Hints\r\n%s\r\n" % (status, b"".join(b"%s: %s\r\n" % h for h in headers))
                if status == 103 else
                b"HTTP/1.1 %d Informational\r\n%s\r\n" % (status, b"".join(b"%s: %s\r\n" % h for h in headers))
            )

    def respond(self, status: int, reason: bytes, headers: HeaderList, length: Optional[int]) -> None:
        self.started = True
        self.status = status
        body = self.body
        keep = self.keep_alive and not self.connection.closing
        if body is not None and not body.complete:
            # The rest of the upload could not be told from a next request.
            keep = False
        # Lines joined once at the end: a %-format per header costs more.
        lines = [b"HTTP/1.1 %d %s" % (status, reason)]
        lines += [b": ".join(pair) for pair in headers]
        self._no_body = self.method == b"HEAD" or status in _NO_BODY_STATUS or status < 200
        self._length = length
        if status == 101:
            keep = False
        elif length is None and not self._no_body:
            if self.version == b"HTTP/1.1":
                self._chunked = True
                lines.append(b"Transfer-Encoding: chunked")
            else:
                keep = False
        if not keep:
            if status != 101:
                lines.append(b"Connection: close")
        elif self.version == b"HTTP/1.0":
            lines.append(b"Connection: keep-alive")
        self.keep_alive = keep
        lines += (b"", b"")
        self._out.append(b"\r\n".join(lines))

    def write(self, data: bytes) -> None:
        if self._no_body or not data or self.finished:
            return
        self.bytes_sent += len(data)
        if self._chunked:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._out.append(data)

    def finish(self, trailers: HeaderList) -> None:
        if self.finished:
            return
        if self._chunked:
            if trailers and self.wants_trailers:
                self._out.append(b"0\r\n%s\r\n" % b"".join(b"%s: %s\r\n" % t for t in trailers))
            else:
                self._out.append(b"0\r\n\r\n")
        self.flush()
        self._done()
        self.connection.request_done(self)

    def _done(self) -> None:
        self.finished = True
        self.source = None
        # The exchange is done with this request too: letting go of it here
        # frees both as soon as they are dropped, instead of leaving a
        # cycle per request for the garbage collector.
        self.events = None

    def flush(self) -> None:
        """Send what the response has so far."""
        out = self._out
        if out:
            self._out = []
            send_now(self.connection.transport, out[0] if len(out) == 1 else b"".join(out))

    def abort(self) -> None:
        self.flush()
        self._done()
        self.connection.cut(delimited=self._chunked or self._length is not None)

    def set_source(self, source: Optional[Pausable]) -> None:
        self.source = source
        if source is not None and self.connection.write_paused:
            source.pause_reading()

    def take_over(self, sink: Callable[[bytes], None]) -> Optional[Tuple[Any, bytes]]:
        return self.connection.take_over(self, sink)
