"""The agent's per-client connection cap, as Consul's go-connlimit enforces ``limits.http_max_conns_per_client``.

Consul counts the concurrent TCP connections of each client IP; a connection past the cap (default 200)
gets a fixed ``429 Too Many Requests`` answer and is closed before any request is read. Every blocking
query holds a connection for up to its wait, so this is what a gateway watching hundreds of services
runs into first.
"""

from __future__ import annotations

from typing import Dict, Optional

from twisted.internet.interfaces import IAddress, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.server import Site

#: Consul's default ``limits.http_max_conns_per_client``.
DEFAULT_MAX_CONNS_PER_CLIENT = 200

_TOO_MANY = "Your IP is issuing too many concurrent connections, please rate limit your calls\n"
#: go-connlimit's answer, byte for byte.
TOO_MANY_RESPONSE = (
    "HTTP/1.1 429 Too Many Requests\r\n"
    "Content-Type: text/plain\r\n"
    f"Content-Length: {len(_TOO_MANY)}\r\n"
    "Connection: close\r\n\r\n" + _TOO_MANY
).encode("ascii")


class _Refuse(ProtocolWrapper):
    """A connection past the cap: the 429, then closed; the wrapped site never sees it."""

    def makeConnection(self, transport: ITransport) -> None:
        transport.write(TOO_MANY_RESPONSE)
        transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pass


class PerClientLimit(WrappingFactory):
    """Wraps a `Site`, refusing a client IP's connections past ``limit`` (0: no limit) with go-connlimit's 429.

    ``open``, ``peak`` and ``refused`` count connections, for tests and the benchmark to read.
    """

    protocol = ProtocolWrapper

    def __init__(self, site: Site, limit: int = DEFAULT_MAX_CONNS_PER_CLIENT) -> None:
        super().__init__(site)
        self.limit = limit
        self.open: Dict[str, int] = {}
        self.peak = 0
        self.refused = 0
        self._hosts: Dict[ProtocolWrapper, str] = {}

    @property
    def total(self) -> int:
        """Connections open now, all clients together."""
        return sum(self.open.values())

    def buildProtocol(self, addr: Optional[IAddress]) -> ProtocolWrapper:
        host = str(getattr(addr, "host", ""))
        if self.limit and self.open.get(host, 0) >= self.limit:
            self.refused += 1
            # WrappingFactory's stubs make it generic in its wrapper type, which _Refuse is not.
            return _Refuse(self, Protocol())  # type: ignore[arg-type]
        wrapper = super().buildProtocol(addr)
        self.open[host] = self.open.get(host, 0) + 1
        self.peak = max(self.peak, self.total)
        self._hosts[wrapper] = host
        return wrapper

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)
        host = self._hosts.pop(p, None)
        if host is not None:
            left = self.open[host] - 1
            if left:
                self.open[host] = left
            else:
                del self.open[host]
