"""
The gateway's listening sockets: one service per endpoint description, with
an accept queue long enough for a burst of new connections.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from restygate.ops.views import IListenerView

__all__ = ["Listener", "LISTEN_BACKLOG", "with_backlog"]

log = Logger()


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
    traceback.  An endpoint may also answer later (its C{listen()} Deferred
    still pending): it is then asked once, its port kept when it comes, and
    a late refusal logged as that same line (readiness says what is not
    bound).  Twisted's C{StreamServerEndpointService} does the same, but
    keeps its port and the pending answer private.
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
        self._listening: Optional[Deferred[None]] = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self.port is not None or self._listening is not None:
            return
        refused: List[Failure] = []
        waiting = False

        def failed(failure: Failure) -> None:
            self._listening = None
            if not waiting:
                refused.append(failure)
            elif not failure.check(CancelledError):
                log.error("{line}", line=self._cannot(failure))

        listening = self._endpoint.listen(self._factory).addCallbacks(self._bound, failed)
        if refused:
            raise SystemExit(self._cannot(refused[0]))
        if self.port is None:
            waiting = True
            self._listening = listening

    def _bound(self, port: IListeningPort) -> None:
        self._listening = None
        self.port = port

    def _cannot(self, failure: Failure) -> str:
        return f"restygate: cannot listen on {self.description}: {failure.getErrorMessage()}"

    def listening(self) -> Optional[IListeningPort]:
        return self.port

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._listening is not None:
            self._listening.cancel()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopping: Any = port.stopListening()
        return stopping if isinstance(stopping, Deferred) else succeed(None)
