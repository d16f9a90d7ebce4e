"""
Upgrade tunnels: after an upstream's C{101 Switching Protocols} (a
WebSocket, or any other protocol an C{Upgrade} names), the client and
upstream connections stop being HTTP and become one byte pipe.

Each side's transport is the other's producer, so a slow reader on either
end pauses the writer on the other (bounded memory both ways).  A tunnel
that carries no byte either way for C{tunnel-idle-timeout} is closed; either
side closing closes both.  The engine counts open tunnels for
C{restygate_tunnels}, and the exchange's access log line is written when the
tunnel closes, with the bytes each way and the duration.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from restygate.discovery.model import Instance
from restygate.proxy.headers import HeaderList, response_headers
from restygate.upstream.client import UpstreamConnection

__all__ = ["open_tunnel", "TunnelOwner"]

log = Logger()


class TunnelOwner(Protocol):
    """The exchange a tunnel belongs to."""

    engine: Any
    request: Any
    instance: Optional[Instance]

    def tunnel_closed(self, bytes_up: int) -> None:
        """The tunnel closed after C{bytes_up} bytes from the client."""


def open_tunnel(
    exchange: TunnelOwner, upstream: UpstreamConnection, reason: bytes, headers: HeaderList, rest: bytes
) -> bool:
    """
    Join the client and C{upstream} after the upstream's 101; L{False} when
    the client's front cannot hand its connection over.
    """
    tunnel = _Tunnel(exchange, upstream)
    request = exchange.request
    taken = request.take_over(tunnel.from_client)
    if taken is None:
        return False
    client, held = taken
    request.respond(101, reason, response_headers(headers, upgrade=True), None)
    request.flush()
    tunnel.start(client, held, rest)
    return True


class _Tunnel:
    def __init__(self, exchange: TunnelOwner, upstream: UpstreamConnection) -> None:
        self._exchange = exchange
        self._upstream = upstream
        self._client: Any = None
        self._timer: Optional[IDelayedCall] = None
        self._progress = False
        self._closed = False
        self.bytes_up = 0

    def start(self, client: Any, held: bytes, rest: bytes) -> None:
        engine = self._exchange.engine
        engine.tunnels += 1
        self._client = client
        upstream: Any = self._upstream.transport
        client.registerProducer(upstream, True)
        upstream.registerProducer(client, True)
        self._upstream.tunnel(self.from_upstream)
        client.resumeProducing()
        self._timer = engine.clock.callLater(engine.config.tunnel_idle_timeout, self._idle)
        if rest:
            self.from_upstream(rest)
        if held:
            self.from_client(held)

    def from_client(self, data: bytes) -> None:
        if not data:
            self._close()
            return
        if self._closed:
            return
        self._progress = True
        self.bytes_up += len(data)
        upstream: Any = self._upstream.transport
        upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        if not data:
            self._close()
            return
        if self._closed or self._client is None:
            return
        self._progress = True
        self._exchange.request.bytes_sent += len(data)
        self._client.write(data)

    def _idle(self) -> None:
        self._timer = None
        if self._progress:
            # A flag checked once a period instead of a timer moved per
            # read: an idle tunnel is cut within two periods.
            self._progress = False
            engine = self._exchange.engine
            self._timer = engine.clock.callLater(engine.config.tunnel_idle_timeout, self._idle)
            return
        log.info("tunnel to {upstream} idle for {timeout:g}s; closed",
                 upstream=self._exchange.instance.netloc if self._exchange.instance else "-",
                 timeout=self._exchange.engine.config.tunnel_idle_timeout)
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._exchange.engine.tunnels -= 1
        for transport in (self._client, self._upstream.transport):
            if transport is not None:
                transport.loseConnection()
        self._exchange.tunnel_closed(self.bytes_up)
