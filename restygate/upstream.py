"""
The upstream side: one L{HTTPConnectionPool} of HTTP/1.1 keep-alive
connections to service instances, and the L{Agent} that sends requests over
it.

The agent here is Twisted's plain one, not treq's C{HTTPClient}: a proxy must
not keep a cookie jar shared by every client, decode content encodings or
follow redirects.  Connections go only to the address and port of an
L{Instance} that discovery handed us; the endpoint is built from that
instance, never from anything the client sent.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import URI, Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from restygate.discovery import Instance

__all__ = ["Upstream", "quiet_pool"]

# Idle pooled connections are dropped before typical upstream keep-alive
# timeouts (nginx 75 s, many app servers less) close them under us.
IDLE_CONNECTION_TIMEOUT = 30


class _QuietFactory(_HTTP11ClientFactory):
    # One "Starting factory" log line per upstream connection is noise.
    noisy = False


def quiet_pool(reactor: Any, size: int) -> HTTPConnectionPool:
    """
    A persistent pool keeping C{size} idle connections per host, without
    a log line per connection.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = size
    pool._factory = _QuietFactory
    return pool


@implementer(IAgentEndpointFactory)
class _InstanceEndpoints:
    """
    TCP endpoints straight to an instance's address: IP literals skip name
    resolution (a thread-pool round trip per new connection otherwise).
    """

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii").strip("[]")
        if isIPAddress(host):
            return TCP4ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        return HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)


class Upstream:
    """
    Sends requests to instances over the shared keep-alive pool.
    """

    def __init__(self, reactor: Any, pool_size: int, connect_timeout: float) -> None:
        self.pool = quiet_pool(reactor, pool_size)
        self.pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
        self._agent = Agent.usingEndpointFactory(
            reactor, _InstanceEndpoints(reactor, connect_timeout), pool=self.pool
        )

    def request(
        self,
        instance: Instance,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Optional[IBodyProducer],
    ) -> Deferred[IResponse]:
        """
        Send C{method target} to C{instance}; C{target} is the origin-form
        path and query for the upstream.
        """
        uri = b"http://" + instance.netloc.encode("ascii") + target
        result: Deferred[IResponse] = self._agent.request(method, uri, headers, body)
        return result

    def close(self) -> Deferred[None]:
        result: Deferred[None] = self.pool.closeCachedConnections()
        return result
