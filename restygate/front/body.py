"""
The client's upload, streamed from the front to the upstream connection with
backpressure.

L{RequestBody} takes the body as the front parses it and writes it into
whichever upstream connection the engine started it on.  It never holds
more than a small window in memory: when no upstream takes the bytes fast
enough, the client's reading is paused.  Small bodies are also kept whole,
so a failed attempt can be replayed to another instance.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

__all__ = ["RequestBody", "WINDOW", "REPLAY_LIMIT"]

HeaderList = List[Tuple[bytes, bytes]]

# Bytes of upload kept while no upstream connection takes them yet; past it
# the client is paused.  Small: the window is all we promise to hold.
WINDOW = 64 * 1024

# Bodies up to this size are kept until the response comes, so a failed
# attempt can be replayed to another instance; larger ones are not retried.
REPLAY_LIMIT = 64 * 1024


class RequestBody:
    """
    A request body in flight.  The front calls L{write}, L{finish} and
    L{client_lost}; an upstream connection consumes it through L{start},
    L{pause}, L{resume} and L{detach}.

    @ivar length: the announced length, or L{None} for a chunked upload.
    @ivar received: bytes of body received from the client so far.
    @ivar trailers: the client's trailer fields, once complete.
    @ivar complete: whether the client sent the whole body.
    """

    def __init__(
        self,
        length: Optional[int],
        pause_client: Callable[[bool], None],
        limit: Optional[int] = None,
    ) -> None:
        self.length = length
        self._limit = limit
        self._pause_client = pause_client
        self.received = 0
        self.complete = False
        self.trailers: HeaderList = []
        self._paused_by: set[str] = set()
        self._pending: List[bytes] = []
        self._pending_size = 0
        self._consumer: Any = None
        self._replay: Optional[List[bytes]] = []
        self._client_gone = False
        self._dropping = False
        self._started = False
        # Set by the front: called once if the body goes over the limit, and
        # when an upstream starts reading a body the client holds back until
        # told to go on (Expect: 100-continue).
        self.on_too_large: Optional[Callable[[], None]] = None
        self.continue_wanted: Optional[Callable[[], None]] = None

    # -- the front's side -----------------------------------------------------
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
        if self._client_gone or self._dropping:
            return
        if self._consumer is not None and not self._pending and not self._paused_by:
            self._consumer.write(data)
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > WINDOW:
            self._pause("window")

    def _too_large(self) -> None:
        # A chunked body over the limit: the upstream request fails rather
        # than receive a truncated body, and the client gets a 413.
        on_too_large, self.on_too_large = self.on_too_large, None
        self.client_lost()
        if on_too_large is not None:
            on_too_large()

    def finish(self, trailers: HeaderList) -> None:
        """The client sent the whole body."""
        self.complete = True
        self.trailers = trailers
        if self._consumer is not None and not self._pending:
            self._consumer.finish(trailers)

    def client_lost(self) -> None:
        """
        The client connection went away (or its upload was refused): if the
        body never completed, the upstream request must fail rather than
        send a short body.
        """
        if self.complete or self._client_gone:
            return
        self._client_gone = True
        self._pending = []
        self._replay = None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.fail()

    @property
    def replayable(self) -> bool:
        """Whether every byte sent so far is still at hand to send again."""
        if self._client_gone:
            return False
        return not self._started or self._replay is not None

    @property
    def started(self) -> bool:
        return self._started

    # -- the upstream connection's side ---------------------------------------
    def start(self, consumer: Any) -> None:
        """
        Write into C{consumer} from the first byte (again, for a retry).
        """
        if self._started:
            assert self._replay is not None
            self._pending = list(self._replay)
            self._pending_size = sum(map(len, self._pending))
        self._started = True
        self._consumer = consumer
        self._paused_by.discard("upstream")
        if self.continue_wanted is not None:
            # Expect: 100-continue: the client waits for our word to send.
            wanted, self.continue_wanted = self.continue_wanted, None
            wanted()
        self._flush()

    def _flush(self) -> None:
        while self._pending and self._consumer is not None and "upstream" not in self._paused_by:
            data = self._pending.pop(0)
            self._pending_size -= len(data)
            self._consumer.write(data)
        if not self._pending:
            self._resume("window")
            if self.complete and self._consumer is not None:
                self._consumer.finish(self.trailers)

    def pause(self) -> None:
        self._pause("upstream")

    def resume(self) -> None:
        self._resume("upstream")
        self._flush()

    def detach(self) -> None:
        """
        The attempt is over before the body is: keep reading what the client
        sends (and drop it, unless a retry will want it), never pausing it.
        """
        self._consumer = None
        self._pending = []
        self._pending_size = 0
        self._paused_by.discard("upstream")
        self._resume("window")

    def close(self) -> None:
        """
        The request is over: whatever more of the body arrives is dropped.
        """
        self._dropping = True
        self._consumer = None
        self._pending = []
        self._pending_size = 0
        self._replay = None
        self.continue_wanted = None
        if self._paused_by:
            self._paused_by.clear()
            self._pause_client(False)

    def _pause(self, reason: str) -> None:
        if not self._paused_by:
            self._pause_client(True)
        self._paused_by.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._paused_by:
            self._paused_by.discard(reason)
            if not self._paused_by:
                self._pause_client(False)
