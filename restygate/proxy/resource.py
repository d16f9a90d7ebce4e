"""
The twisted.web face of the engine: L{GatewayResource}, a leaf resource
that serves every request under it through the same L{Engine} the lean
front uses, so restygate can be mounted in any twisted.web C{Site}.

A stock C{Site} reads the whole body before the resource sees the request,
so the body here is the C{Request.content} file, sent upstream as it is
read with the upstream socket's backpressure, and replayable for a retry.
twisted.web frames the response itself; it cannot send 1xx answers or give
its connection to an Upgrade tunnel, so through this face those are not
available (the lean front has them).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure as TwistedFailure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from restygate.proxy.downstream import ExchangeEvents, Pausable
from restygate.proxy.headers import noted_headers
from restygate.proxy.engine import Engine

__all__ = ["GatewayResource"]

HeaderList = List[Tuple[bytes, bytes]]

_CHUNK = 64 * 1024


class _FileBody:
    """
    A body already whole in a file, written upstream chunk by chunk while
    the upstream socket takes it.
    """

    def __init__(self, content: Any, length: int) -> None:
        self.length: Optional[int] = length
        self.replayable = True
        self._content = content
        self._consumer: Any = None
        self._paused = False

    def start(self, consumer: Any) -> None:
        self._content.seek(0)
        self._consumer = consumer
        self._paused = False
        self._pump()

    def _pump(self) -> None:
        while self._consumer is not None and not self._paused:
            data = self._content.read(_CHUNK)
            if not data:
                consumer, self._consumer = self._consumer, None
                consumer.finish([])
                return
            self._consumer.write(data)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._pump()

    def detach(self) -> None:
        self._consumer = None


@implementer(IPushProducer)
class _Flow:
    """Pauses the upstream while twisted.web's client transport is full."""

    def __init__(self, source: Pausable) -> None:
        self._source = source

    def pauseProducing(self) -> None:
        self._source.pause_reading()

    def resumeProducing(self) -> None:
        self._source.resume_reading()

    def stopProducing(self) -> None:
        pass


class _WebRequest:
    """
    A twisted.web L{Request} as the engine's L{Downstream}.
    """

    def __init__(self, request: Request) -> None:
        self._request = request
        self.method: bytes = request.method
        self.target: bytes = request.uri
        self.version: bytes = request.clientproto or b"HTTP/1.0"
        self.headers: HeaderList = [
            (name, value) for name, values in request.requestHeaders.getAllRawHeaders() for value in values
        ]
        self.noted = noted_headers(self.headers)
        self.client_ip = str(getattr(request.getClientAddress(), "host", "") or "unknown")
        self.secure = bool(request.isSecure())
        content = request.content
        size = 0
        if content is not None:
            content.seek(0, 2)
            size = content.tell()
        self.body: Optional[_FileBody] = _FileBody(content, size) if size else None
        self.status = 0
        self.bytes_sent = 0
        self.started = False
        self._producing = False

    def attach(self, events: ExchangeEvents) -> None:
        def gone(reason: TwistedFailure) -> None:
            events.client_gone()

        self._request.notifyFinish().addErrback(gone)

    def interim(self, status: int, headers: HeaderList) -> None:
        pass

    def respond(self, status: int, reason: bytes, headers: HeaderList, length: Optional[int]) -> None:
        request = self._request
        self.started = True
        self.status = status
        request.setResponseCode(status, reason)
        out = request.responseHeaders
        for name, value in headers:
            out.addRawHeader(name, value)
        request.write(b"")

    def write(self, data: bytes) -> None:
        if not self._request.finished and self._request.channel is not None:
            self.bytes_sent += len(data)
            self._request.write(data)

    def flush(self) -> None:
        pass

    def finish(self, trailers: HeaderList) -> None:
        self.set_source(None)
        if not self._request.finished and self._request.channel is not None:
            self._request.finish()

    def abort(self) -> None:
        self.set_source(None)
        channel = self._request.channel
        transport: Any = channel.transport if channel is not None else None
        if transport is not None:
            transport.abortConnection()

    def set_source(self, source: Optional[Pausable]) -> None:
        request = self._request
        if self._producing:
            self._producing = False
            if request.channel is not None:
                request.unregisterProducer()
        if source is not None and request.channel is not None:
            request.registerProducer(_Flow(source), True)
            self._producing = True

    def take_over(self, sink: Callable[[bytes], None]) -> Optional[Tuple[Any, bytes]]:
        return None


class GatewayResource(Resource):
    """
    The root and only resource of a gateway mounted in a twisted.web site.
    """

    isLeaf = True

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine

    def render(self, request: Request) -> int:
        self.engine.handle(_WebRequest(request))
        return NOT_DONE_YET
