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
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = [
    "IOpenSSLTrustRoot",
    "QuietClientFactory",
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

