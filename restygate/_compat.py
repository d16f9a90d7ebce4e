"""
Every use of a name Twisted keeps private, in one place, each with why.  When
a Twisted release moves one, this is the only module to mend.
"""

from __future__ import annotations

import socket
from typing import Any, Type, TypeVar

# What trustRootFromCertificates and platformTrust return: Twisted does not
# re-export the interface from a public module, and our TLS settings are
# typed with it.
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.tcp import Port
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = [
    "IOpenSSLTrustRoot",
    "adopt_listening_socket",
    "server_tls_context",
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


_Port = TypeVar("_Port", bound=Port)


def adopt_listening_socket(
    port_class: Type[_Port], reactor: Any, fd: int, family: socket.AddressFamily, factory: IProtocolFactory
) -> _Port:
    """
    A C{port_class} (a L{Port} subclass) over the listening socket C{fd},
    not started yet; C{fd} is duplicated, the caller closes its own.
    C{reactor.adoptStreamPort} does this with Twisted's own L{Port} class
    only; the classmethod it calls is private.
    """
    port: _Port = port_class._fromListeningDescriptor(reactor, fd, family, factory)
    return port


def server_tls_context(endpoint: SSL4ServerEndpoint) -> Any:
    """
    The TLS context factory an C{ssl:} endpoint description was parsed
    into: Twisted builds it from the description and keeps it only in this
    private attribute, and parsing the description ourselves would copy
    Twisted's parser.
    """
    return endpoint._sslContextFactory
