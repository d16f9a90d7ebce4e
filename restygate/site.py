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
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from restygate.errors import send_error
from restygate.streams import RequestBody

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
            self.body = RequestBody(length, IPushProducer(self.channel.transport))
            self.content = self.body

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


class GatewayChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that hands requests with a body to the site at end of
    headers.
    """

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        request = self.requests[-1] if self.requests else None
        if isinstance(request, GatewayRequest) and request.body is not None:
            request.headersReceived(self._command, self._path, self._version)

    def allContentReceived(self) -> None:
        # An early answer may have finished and removed the request before
        # its body was all read; the rest of that body is simply dropped.
        if self.requests:
            super().allContentReceived()


class GatewaySite(Site):
    """
    A L{Site} serving one gateway resource over L{GatewayChannel}s.
    """

    requestFactory = GatewayRequest
    protocol = GatewayChannel  # type: ignore[assignment]
    displayTracebacks = False

    def __init__(self, resource: IResource, reactor: Any = None, timeout: float = CLIENT_IDLE_TIMEOUT) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)

    def log(self, request: Any) -> None:
        # restygate writes its own access log (restygate.accesslog).
        pass
