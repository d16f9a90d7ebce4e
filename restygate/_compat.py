"""
Every use of a name Twisted keeps private, in one place, each with why.  When
a Twisted release moves one, this is the only module to mend.
"""

from __future__ import annotations

from typing import Any

# What trustRootFromCertificates and platformTrust return: Twisted does not
# re-export the interface from a public module, and our TLS settings are
# typed with it.
from twisted.internet._sslverify import IOpenSSLTrustRoot
# The request a pooled HTTP/1.1 connection sends (HTTP11ClientProtocol.request
# takes one): restygate sends on pooled connections without an Agent, and
# twisted.web.client uses this class without exporting it.  RequestNotSent
# is what such a connection fails with when it was already lost, so the
# request never left: twisted.web.client raises it but does not export it.
from twisted.web._newclient import Request, RequestNotSent
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = [
    "IOpenSSLTrustRoot",
    "QuietClientFactory",
    "Request",
    "RequestNotSent",
    "idle_connections",
    "quiet_pool",
]


class QuietClientFactory(_HTTP11ClientFactory):
    """
    The factory L{HTTPConnectionPool} builds its connections with, without
    its "Starting factory" log line: one per upstream connection is noise.
    Twisted offers no public way to set it.
    """

    noisy = False


def quiet_pool(reactor: Any, size: int) -> HTTPConnectionPool:
    """
    A persistent pool keeping C{size} idle connections per host, without
    a log line per connection.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = size
    pool._factory = QuietClientFactory
    return pool


def idle_connections(pool: HTTPConnectionPool) -> int:
    """
    The idle keep-alive connections C{pool} holds, ready for reuse.
    L{HTTPConnectionPool} counts them nowhere public: its private
    C{_connections} (key -> idle connections) is the only source.
    """
    return sum(len(idle) for idle in pool._connections.values())
