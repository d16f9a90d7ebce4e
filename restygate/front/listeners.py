"""
The gateway's listening sockets: one service per endpoint description, with
an accept queue long enough for a burst of new connections.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from restygate.ops.views import IListenerView

__all__ = ["Listener", "LISTEN_BACKLOG", "with_backlog"]


# Twisted listens with an accept queue of 50: a burst of new connections
# (a load balancer reconnecting, a client pool starting) overflows it, the
# kernel drops SYNs, and clients retry them only a second later.  nginx asks
# for 511; the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024
_QUEUED_KINDS = ("tcp", "tcp6", "ssl", "unix")


def with_backlog(description: str) -> str:
    """
    C{description} with our accept queue length, unless it names its own
    or its kind of endpoint has none.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind in _QUEUED_KINDS and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


@implementer(IListenerView)
class Listener(Service):
    """
    Listens on one endpoint description and keeps the port, so that tests,
    the status page and shutdown can reach it.  A worker process gives the
    endpoint adopting the socket its parent bound for that description.

    It listens in C{privilegedStartService}, before twistd drops privileges,
    and a port that cannot be had ends the start with one line instead of a
    traceback.
    """

    def __init__(
        self,
        description: str,
        factory: IProtocolFactory,
        reactor: Any,
        endpoint: Optional[IStreamServerEndpoint] = None,
    ) -> None:
        self.description = description
        self.port: Optional[IListeningPort] = None
        self._endpoint = endpoint or serverFromString(reactor, with_backlog(description))
        self._factory = factory

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self._listen()

    def _listen(self) -> None:
        outcome: List[Any] = []
        self._endpoint.listen(self._factory).addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            raise SystemExit(
                f"restygate: cannot listen on {self.description}: {outcome[0].getErrorMessage()}"
            )
        if outcome:
            self.port = outcome[0]

    def listening(self) -> Optional[IListeningPort]:
        return self.port

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopping: Any = port.stopListening()
        return stopping if isinstance(stopping, Deferred) else succeed(None)
