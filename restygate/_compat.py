"""
Every use of a name Twisted keeps private, in one place, each with why.  When
a Twisted release moves one, this is the only module to mend.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from functools import partial
from typing import Any, Callable, Optional, Type, TypeVar

# What trustRootFromCertificates and platformTrust return: Twisted does not
# re-export the interface from a public module, and our TLS settings are
# typed with it.
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.endpoints import SSL4ServerEndpoint, _WrappingProtocol
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.process import ProcessWriter
from twisted.internet.tcp import Connection as TCPConnection, Port
from twisted.python import log as legacy_log
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

from twisted.internet.posixbase import _NO_FILEDESC

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux: no epoll, and no lean reactor either
    EPollReactor = None  # type: ignore[assignment,misc]

__all__ = [
    "IOpenSSLTrustRoot",
    "adopt_listening_socket",
    "server_tls_context",
    "QuietClientFactory",
    "quiet_pool",
    "send_now",
    "write_now",
    "write_to_child_now",
    "read_directly",
    "lean_reactor",
    "install",
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
    _through(transport.socket.send, transport, data)


def _through(raw: Callable[[bytes], int], transport: Any, data: bytes) -> None:
    """
    Hand C{data} to C{raw} (a non-blocking send or write); what it does not
    take goes to C{transport}'s own write queue.
    """
    try:
        sent = raw(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        # Twisted's own write path notices and reports the broken connection.
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to a pipe between restygate's own processes -- a
    L{ProcessWriter}, or a C{StandardIO} (whose writer it uses) -- straight
    to the pipe when nothing is queued before it.

    Twisted queues every write until the reactor's turn ends.  A worker
    that takes fifty new requests in one turn then sent the daemon fifty
    lookups in one write at its end, and the daemon's answers came back
    the same way: each first request waited for the whole batch at every
    step.  What the pipe does not take now is queued the usual way.
    """
    writer = getattr(transport, "_writer", transport)
    if (
        not isinstance(writer, ProcessWriter)
        or writer.dataBuffer
        or writer._tempDataBuffer
        or not writer.connected
        or writer.disconnecting
    ):
        transport.write(data)
        return
    _through(partial(os.write, writer.fd), writer, data)


def write_to_child_now(process: Any, fd: int, data: bytes) -> None:
    """
    L{write_now} to a child process's pipe C{fd} (its standard input: 0).
    """
    pipe = getattr(process, "pipes", {}).get(fd)
    if pipe is None:
        process.writeToChild(fd, data)
    else:
        write_now(pipe, data)


def read_directly(protocol: Any) -> None:
    """
    Have the TCP connection under C{protocol} (perhaps with TLS between)
    hand its reads straight to it, not through the wrapper the endpoint
    that connected it put in between.

    A client endpoint connects an C{_WrappingProtocol}, which calls the
    protocol it was given: one more Python call for every read of a
    connection that lives for many requests.  Once connected, the wrapper
    only passes each event on, so the transport may as well call the
    protocol itself; the endpoint's connect has already fired by then.
    """
    upper, transport = protocol, protocol.transport
    while transport is not None and not isinstance(transport, TCPConnection):
        upper, transport = transport, getattr(transport, "transport", None)
    if transport is not None:
        wrapper = transport.protocol
        if isinstance(wrapper, _WrappingProtocol) and wrapper._wrappedProtocol is upper:
            transport.protocol = upper


def lean_reactor() -> Optional[Any]:
    """
    A new L{EPollReactor} whose turn hands a plain read event straight to
    its selectable; L{None} where there is no epoll.

    Twisted's C{doPoll} calls every event through C{log.callWithLogger}:
    the selectable's C{logPrefix()}, a copy of the legacy log context and a
    context push and pop, for every read of every connection -- a tenth of
    a proxy's CPU time when each request is two small reads.  Only Twisted's
    legacy C{log.msg} reads that context (restygate logs with
    C{twisted.logger}, whose events carry their own namespace), so a plain
    read (C{EPOLLIN} alone) runs without it.  Everything else -- writes,
    hang-ups, errors -- and the rare outcomes of a read (an exception, a
    connection done) still go through Twisted's own code in that context:
    an exception is logged with the selectable's prefix as its system and
    the selectable disconnected, exactly as C{_doReadOrWrite} does.  The
    poller and the selectables' table are C{EPollReactor}'s private state.
    """
    if EPollReactor is None:
        return None
    return _LeanEPollReactor()


if EPollReactor is not None:

    class _LeanEPollReactor(EPollReactor):
        def doPoll(self, timeout: Optional[float]) -> None:
            if timeout is None:
                timeout = -1
            try:
                events = self._poller.poll(timeout, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            plain_read = self._POLL_IN
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                if event != plain_read:
                    legacy_log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)
                    continue
                # _doReadOrWrite's read branch, outside the log context.
                in_read = False
                why: Any
                try:
                    if selectable.fileno() == -1:
                        why = _NO_FILEDESC
                    else:
                        why = selectable.doRead()
                        in_read = True
                except BaseException:
                    why = sys.exc_info()[1]
                    legacy_log.err(system=_log_prefix(selectable))
                if why:
                    legacy_log.callWithLogger(selectable, self._disconnectSelectable, selectable, why, in_read)

        doIteration = doPoll


def _log_prefix(selectable: Any) -> str:
    # What log.callWithLogger names the system of an event logged for it.
    try:
        return str(selectable.logPrefix())
    except BaseException:
        return "(buggy logPrefix method)"


def install() -> None:
    """
    Install L{lean_reactor} as the global reactor (Twisted's epoll one
    where it cannot be had): what C{twistd --reactor=restygate} and each
    worker process do.
    """
    from twisted.internet.main import installReactor

    reactor = lean_reactor()
    if reactor is None:
        from twisted.internet.default import install as install_default

        install_default()
        return
    installReactor(reactor)
