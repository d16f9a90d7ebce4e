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
from twisted.internet.tcp import Connection as TCPConnection, Port
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = [
    "IOpenSSLTrustRoot",
    "adopt_listening_socket",
    "server_tls_context",
    "QuietClientFactory",
    "quiet_pool",
    "send_now",
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


def send_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, straight to its socket when nothing is
    queued before it.

    Twisted's C{write} always queues and asks the reactor to say when the
    socket is writable: two epoll changes and a reactor turn per write,
    which for a proxy answering small requests was a fifth of its time.
    A socket with nothing queued almost always takes the whole write now;
    what it does not take is queued the usual way (so producers are paused
    as usual).  Reading the queue needs TCP's private C{_tempDataBuffer};
    any other transport, and a TCP one carrying TLS, just gets C{write}.
    """
    if (
        # Exactly TCP: a wrapper (TLS over a protocol) would pass attribute
        # reads through to the socket under it.
        not isinstance(transport, TCPConnection)
        # After startTLS (an ssl: listener) the bytes must go through TLS.
        or transport.TLS
        or transport.dataBuffer
        or transport._tempDataBuffer
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        # Twisted's own write path notices and reports the broken connection.
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])
