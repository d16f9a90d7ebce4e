"""
The lean HTTP/1.1 front's factory: one for all the listeners of a gateway,
keeping the open client connections for the connection limit (a clear 503
past it, not a silent reset) and for draining them at shutdown.
"""

from __future__ import annotations

from typing import Any, Dict, List, Set

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from restygate.front.answers import refusal
from restygate.front.server import HTTPConnection
from restygate.proxy.engine import Engine

__all__ = ["GatewayFront"]

log = Logger()


class _Busy(Protocol):
    """
    Answers a connection over the limit with a 503 and closes it: a clear
    refusal instead of a silent reset.
    """

    def connectionMade(self) -> None:
        transport: Any = self.transport
        log.warn("too many client connections; refusing {peer}",
                 peer=str(getattr(transport.getPeer(), "host", "-")))
        transport.write(refusal(503, "too many connections"))
        transport.loseConnection()


class GatewayFront(Factory):
    """
    Builds the front's connections for every listener of one gateway.

    @ivar channels: the open client connections.
    @ivar timeOut: seconds an idle keep-alive connection is kept.
    """

    noisy = False

    def __init__(self, engine: Engine, clock: IReactorTime, timeout: float) -> None:
        self.engine = engine
        self.clock = clock
        self.timeOut = timeout
        self.channels: Set[HTTPConnection] = set()
        self.draining = False
        self._closed_waiters: Dict[HTTPConnection, List[Deferred[None]]] = {}

    @property
    def config(self) -> Any:
        return self.engine.config

    def reconfigure(self, config: Any) -> None:
        # Connections go idle with the new timeout from now on; the other
        # limits are read from the config on each use.
        self.timeOut = config.body_idle_timeout

    def buildProtocol(self, addr: Any) -> Protocol:
        if len(self.channels) >= self.config.max_connections:
            busy = _Busy()
            busy.factory = self
            return busy
        connection = HTTPConnection()
        connection.factory = self
        return connection

    def forget(self, connection: HTTPConnection) -> None:
        self.channels.discard(connection)
        for waiter in self._closed_waiters.pop(connection, []):
            waiter.callback(None)

    def in_flight(self) -> int:
        """Requests being answered now."""
        return sum(1 for connection in self.channels if connection.busy)

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Close idle connections now, the others as soon as their response is
        done; after C{timeout} seconds, cut what is left.
        """
        self.draining = True
        waits: List[Deferred[Any]] = []
        for connection in list(self.channels):
            if not connection.busy:
                transport: Any = connection.transport
                transport.loseConnection()
            closed: Deferred[None] = Deferred()
            self._closed_waiters.setdefault(connection, []).append(closed)
            waits.append(closed)
        if not waits:
            return succeed(None)
        timer = self.clock.callLater(timeout, self._cut, "drain timeout")
        done: Deferred[Any] = DeferredList(waits)

        def finished(_: Any) -> None:
            if timer.active():
                timer.cancel()

        done.addCallback(finished)
        return done

    def _cut(self, why: str) -> None:
        for connection in list(self.channels):
            log.warn("closing a client connection still busy at shutdown ({why})", why=why)
            transport: Any = connection.transport
            transport.abortConnection()
