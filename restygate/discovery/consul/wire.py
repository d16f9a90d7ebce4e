"""
The HTTP/1.1 wire to the Consul agent: GET requests on pooled keep-alive
connections, each answer read whole and parsed by llhttp (C{httptools};
under PyPy L{restygate.h1parse}'s parser, with the same interface).

Twisted's C{Agent} did this before, and through it each query cost the
daemon a URI parsed again, an endpoint made, a name resolved in a thread,
C{HTTP11ClientProtocol}'s state machine, its body protocol and a chain of
Deferreds: measured with bench/scale.py, most of the daemon's time while
thousands of first requests each waited for a first fetch.  The agent's
answers are small, framed (Consul sends a length or chunks) and asked for
one at a time per connection, so a connection here is one request, one
parser and one Deferred.

A connection goes back to the pool only when its answer ended cleanly and
both sides keep it alive; at most C{idle_limit} wait there (the pool of
L{HTTPConnectionPool}'s C{maxPersistentPerHost}), each for at most
L{IDLE_TIMEOUT} seconds, and one that receives anything while idle is
closed.  A query that fails on a reused connection before any byte of an
answer (the agent closed it meanwhile) is asked once more on a new one, as
Twisted's pool did: every query here is a GET, safe to repeat.  Cancelling
a query's Deferred (its timeout) aborts its connection.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import httptools
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from restygate._compat import send_now
from restygate.h1parse import PURE_PYTHON, HttpResponseParser

__all__ = ["AgentAnswer", "AgentPool", "AgentConnectionLost", "AgentProtocolError", "IDLE_TIMEOUT"]

#: Seconds an idle connection to the agent is kept (Twisted's pool: 240).
IDLE_TIMEOUT = 240.0


class AgentAnswer:
    """
    One answer of the agent: its status, its headers by lower-cased name
    (the last of a repeated one) and its whole body.
    """

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class AgentConnectionLost(Exception):
    """
    The connection ended before the whole answer came.
    """

    def __init__(self, answered: bool, reason: str) -> None:
        super().__init__(f"the agent's connection ended {'mid-answer' if answered else 'before an answer'}: {reason}")
        self.answered = answered


class AgentProtocolError(Exception):
    """
    The agent's bytes were not an HTTP/1.1 answer.
    """


class _AgentConnection(Protocol):
    """
    One connection to the agent, asking one query at a time.
    """

    def __init__(self, pool: AgentPool) -> None:
        self._pool = pool
        self._parser: Any = HttpResponseParser(self) if PURE_PYTHON else httptools.HttpResponseParser(self)
        self._waiting: Optional[Deferred[AgentAnswer]] = None
        self._answered = False
        self._headers: Dict[bytes, bytes] = {}
        self._body: List[bytes] = []
        self._done: Optional[AgentAnswer] = None
        self._keep_alive = False
        self._spoiled = False
        self.expiry: Optional[IDelayedCall] = None
        self.gone: Optional[Deferred[None]] = None

    def ask(self, head: bytes) -> Deferred[AgentAnswer]:
        waiting: Deferred[AgentAnswer] = Deferred(self._cancel)
        self._waiting, self._answered, self._headers, self._body = waiting, False, {}, []
        # Now, not when the reactor's turn ends: a turn that starts fifty
        # first fetches would otherwise send them all only after the last.
        send_now(self.transport, head)
        return waiting

    def _cancel(self, waiting: Deferred[AgentAnswer]) -> None:
        # A cancelled query leaves its connection in doubt: never reused.
        self._waiting = None
        self.abort()

    def abort(self) -> None:
        transport: Any = self.transport
        transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._waiting is None:
            # Bytes while idle: nothing asked for them, so nothing to trust.
            self.abort()
            return
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(AgentProtocolError(f"invalid answer from the agent: {e}"))
            self.abort()
            return
        done, self._done = self._done, None
        if done is not None:
            waiting, self._waiting = self._waiting, None
            if self._keep_alive and not self._spoiled:
                self._pool.release(self)
            else:
                transport: Any = self.transport
                transport.loseConnection()
            if waiting is not None:
                waiting.callback(done)

    def on_message_begin(self) -> None:
        if self._done is not None:
            # Another answer after the one asked for, in the same read: the
            # connection says things nobody asked; it answers no more, and
            # what it says now must not touch the answer read.
            self._spoiled = True
            self._headers, self._body = {}, []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        # llhttp knows it only until the message completes.
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._done is None:
            self._done = AgentAnswer(self._parser.get_status_code(), self._headers, b"".join(self._body))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._pool.lost(self)
        self._fail(AgentConnectionLost(self._answered, reason.getErrorMessage()))
        if self.gone is not None:
            self.gone.callback(None)

    def _fail(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(Failure(error))


class _ConnectionFactory(Factory):
    # Not a line per connection to the agent ("Starting factory ...").
    noisy = False

    def __init__(self, pool: AgentPool) -> None:
        self._pool = pool

    def buildProtocol(self, addr: Any) -> _AgentConnection:
        return _AgentConnection(self._pool)


def agent_endpoint(
    reactor: Any, scheme: str, host: str, port: int, tls: Optional[Callable[[bytes, int], Any]] = None
) -> IStreamClientEndpoint:
    """
    Where the agent listens: an address connected to at once (no name
    resolution in a thread), a name through L{HostnameEndpoint}; over TLS
    for C{https}, with the client connection creator C{tls(host, port)}.
    """
    endpoint: IStreamClientEndpoint
    if isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port)
    elif isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, port)
    else:
        endpoint = HostnameEndpoint(reactor, host.encode("ascii"), port)
    if scheme == "https":
        assert tls is not None, "an https agent needs a TLS connection creator"
        endpoint = wrapClientTLS(tls(host.encode("ascii"), port), endpoint)
    return endpoint


class AgentPool:
    """
    Keep-alive connections to one agent, and the GET requests on them.
    """

    def __init__(self, clock: IReactorTime, endpoint: IStreamClientEndpoint, host: str, idle_limit: int) -> None:
        self._clock = clock
        self._endpoint = endpoint
        self._factory = _ConnectionFactory(self)
        self._host = b"Host: " + host.encode("ascii") + b"\r\n"
        self._idle: List[_AgentConnection] = []
        self._idle_limit = idle_limit
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    def get(self, target: bytes, headers: bytes) -> Deferred[AgentAnswer]:
        """
        The agent's answer to C{GET target} with C{headers} (whole header
        lines, each ending in CRLF).
        """
        head = b"GET " + target + b" HTTP/1.1\r\n" + self._host + headers + b"\r\n"
        if self._idle:
            connection = self._idle.pop()
            if connection.expiry is not None and connection.expiry.active():
                connection.expiry.cancel()
            connection.expiry = None
            return connection.ask(head).addErrback(self._again, head)
        return self._fresh(head)

    def _fresh(self, head: bytes) -> Deferred[AgentAnswer]:
        connecting: Deferred[Any] = self._endpoint.connect(self._factory)
        return connecting.addCallback(lambda connection: connection.ask(head))

    def _again(self, failure: Failure, head: bytes) -> Any:
        # The agent closed a kept connection as the query went out on it.
        error = failure.value
        if isinstance(error, AgentConnectionLost) and not error.answered:
            return self._fresh(head)
        return failure

    def release(self, connection: _AgentConnection) -> None:
        """
        C{connection} answered cleanly and may be asked again.
        """
        if len(self._idle) >= self._idle_limit or self._closed:
            transport: Any = connection.transport
            transport.loseConnection()
            return
        connection.expiry = self._clock.callLater(IDLE_TIMEOUT, connection.abort)
        self._idle.append(connection)

    def lost(self, connection: _AgentConnection) -> None:
        """
        C{connection} is gone.
        """
        if connection.expiry is not None and connection.expiry.active():
            connection.expiry.cancel()
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> Deferred[None]:
        """
        Close the idle connections, and each one in use as its answer ends
        (queries in flight are their askers' to cancel); fires once the idle
        ones are gone.
        """
        self._closed = True
        idle, self._idle = self._idle, []
        gone: List[Deferred[None]] = []
        for connection in idle:
            connection.gone = Deferred()
            gone.append(connection.gone)
            transport: Any = connection.transport
            transport.loseConnection()
        if not gone:
            return succeed(None)
        return gatherResults(gone).addCallback(lambda _: None)
