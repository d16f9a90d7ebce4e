"""
The client's upload, streamed from the HTTP channel to the upstream request
with backpressure.

L{RequestBody} takes the body as it arrives and produces it to the upstream
request.  It never holds more than a small window in memory: when no
upstream takes the bytes fast enough, the client's transport is paused.
Small bodies are also kept whole, so a failed attempt can be replayed to
another instance.
"""

from __future__ import annotations


from typing import Callable, List, Optional, Set

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer


__all__ = ["RequestBody"]

# Bytes of upload kept while no upstream connection takes them yet; past it
# the client is paused.  Small: the window is all we promise to hold.
WINDOW = 64 * 1024

# Bodies up to this size are kept until the response comes, so a failed
# attempt can be replayed to another instance; larger ones are not retried.
REPLAY_LIMIT = 64 * 1024


@implementer(IBodyProducer)
class RequestBody:
    """
    A request body in flight: the HTTP channel writes into it as a file (it
    stands in for C{Request.content}), the upstream HTTP client consumes it
    as an L{IBodyProducer}.

    @ivar received: bytes of body received from the client so far.
    """

    def __init__(
        self,
        length: Optional[int],
        client: IPushProducer,
        limit: Optional[int] = None,
        on_too_large: Optional[Callable[[], None]] = None,
    ) -> None:
        self.length = UNKNOWN_LENGTH if length is None else length
        self._limit = limit
        self._on_too_large = on_too_large
        self.received = 0
        self.complete = False
        self._client = client
        self._paused_by: Set[str] = set()
        self._pending: List[bytes] = []
        self._pending_size = 0
        self._consumer: Optional[IConsumer] = None
        self._done: Optional[Deferred[None]] = None
        self._abandoned = False
        self._replay: Optional[List[bytes]] = []
        self._client_gone = False
        self._started = False

    # -- the channel's side ---------------------------------------------------
    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self._limit is not None and self.received > self._limit:
            self._too_large()
            return
        if self._replay is not None:
            if self.received <= REPLAY_LIMIT:
                self._replay.append(data)
            else:
                self._replay = None
        if self._abandoned:
            return
        if self._consumer is not None and not self._pending:
            self._consumer.write(data)
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > WINDOW:
            self._pause("window")

    def _too_large(self) -> None:
        # A chunked body over the limit: the upstream request fails rather
        # than receive a truncated body, and the client gets a 413.
        if self._abandoned and self._on_too_large is None:
            return
        on_too_large, self._on_too_large = self._on_too_large, None
        self._client_gone = True
        self._abandoned = True
        self._pending = []
        self._replay = None
        if self._done is not None:
            done, self._done = self._done, None
            done.errback(Failure(ConnectionLost("request body over the limit")))
        if on_too_large is not None:
            on_too_large()

    def finish(self) -> None:
        """
        The client sent the whole body.
        """
        self.complete = True
        if self._consumer is not None and not self._pending:
            self._succeed()

    def client_lost(self) -> None:
        """
        The client connection went away: if the body never completed, the
        upstream request must fail rather than send a short body.
        """
        if not self.complete:
            self._client_gone = True
            if self._done is not None:
                done, self._done = self._done, None
                done.errback(Failure(ConnectionLost("client closed the connection during the upload")))

    def close(self) -> None:
        """
        The request is over.  An upload still incomplete now was answered
        early by the upstream (or by us); the upstream client stops asking
        for the rest by itself, so nothing is fired here, only dropped.
        """
        if not self.complete:
            self._client_gone = True
        self._abandoned = True
        self._pending = []
        self._replay = None

    @property
    def replayable(self) -> bool:
        """
        Whether every byte sent so far is still at hand to send again.
        """
        if self._client_gone:
            return False
        return not self._started or self._replay is not None

    def rewind(self) -> None:
        """
        Start over for another upstream attempt: the next C{startProducing}
        gets everything from the first byte.
        """
        if not self._started:
            return  # nothing was consumed: what is pending is the whole body
        assert self._replay is not None
        self._started = False
        self._consumer = None
        self._done = None
        self._abandoned = False
        self._pending = list(self._replay)
        self._pending_size = sum(map(len, self._pending))

    # -- the upstream client's side -------------------------------------------
    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._started = True
        self._consumer = consumer
        self._done = Deferred()
        done = self._done
        pending, self._pending, self._pending_size = self._pending, [], 0
        for data in pending:
            consumer.write(data)
        self._resume("window")
        if self.complete:
            self._succeed()
        return done

    def pauseProducing(self) -> None:
        self._pause("upstream")

    def resumeProducing(self) -> None:
        self._resume("upstream")

    def stopProducing(self) -> None:
        # The upstream request is over before the body is (it failed, or the
        # upstream answered early).  Per IBodyProducer, our Deferred must not
        # fire now; the rest of the upload is read and dropped.
        self._done = None
        self._abandoned = True
        self._pending = []
        self._paused_by.clear()
        self._client.resumeProducing()

    def _succeed(self) -> None:
        if self._done is not None:
            done, self._done = self._done, None
            done.callback(None)

    def _pause(self, reason: str) -> None:
        if not self._paused_by:
            self._client.pauseProducing()
        self._paused_by.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._paused_by:
            self._paused_by.discard(reason)
            if not self._paused_by:
                self._client.resumeProducing()
