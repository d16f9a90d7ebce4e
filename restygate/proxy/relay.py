"""
The upstream's response body, relayed to the client as it arrives with
backpressure: when the client cannot keep up, the upstream transport is
paused, so no more than a small window is held in memory.
"""

from __future__ import annotations


from typing import Any, Callable, Optional

from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.server import Request
from zope.interface import implementer

from restygate.front.answers import abort

__all__ = ["ResponseRelay", "BodyStalled"]


class BodyStalled(Exception):
    """
    Neither side of a body transfer made progress for the idle timeout.
    """


@implementer(IPushProducer)
class ResponseRelay(Protocol):
    """
    Writes an upstream response body to the client as it arrives.

    C{on_done} is called once with L{None} when the body was relayed whole, or
    with the failure that cut it short; in that case the client connection is
    aborted, because a truncated body must never look complete.  A transfer
    where neither the upstream sends nor the client reads for C{idle_timeout}
    seconds is cut the same way, so a stalled peer cannot pin connections.
    """

    def __init__(
        self,
        request: Request,
        on_done: Callable[[Optional[Failure]], None],
        clock: IReactorTime,
        idle_timeout: float,
    ) -> None:
        self._request = request
        self._on_done = on_done
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._idle: Optional[IDelayedCall] = None

    def connectionMade(self) -> None:
        if self._request.channel is not None:
            # The relay sits between the client's flow control and the
            # upstream transport, so it sees progress on both sides.
            self._request.registerProducer(self, True)
            self._idle = self._clock.callLater(self._idle_timeout, self._stalled)

    def pauseProducing(self) -> None:
        transport: Any = self.transport
        transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._progress()
        transport: Any = self.transport
        transport.resumeProducing()

    def stopProducing(self) -> None:
        self.stop()

    def _progress(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)

    def _stalled(self) -> None:
        self._idle = None
        self._abort_with = Failure(BodyStalled(f"no progress for {self._idle_timeout:g}s"))
        self.stop()

    def dataReceived(self, data: bytes) -> None:
        if self._request.channel is not None:
            self._progress()
            self._request.write(data)

    _abort_with: Optional[Failure] = None

    def connectionLost(self, reason: Failure = Failure(ConnectionLost())) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if self._abort_with is not None:
            reason = self._abort_with
        request = self._request
        if request.channel is None:
            self._on_done(reason)
            return
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            self._on_done(None)
        else:
            abort(request)
            self._on_done(reason)

    def stop(self) -> None:
        """
        The client is gone: stop reading the upstream body (which closes that
        upstream connection; its state is unknown, so it cannot be pooled).
        """
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()
