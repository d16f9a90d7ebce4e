"""
A chain of Consul blocking queries on one endpoint (a datacenter's service
names, its change feed, one watched service), following Consul's client
rules: an index that goes backwards resets to 0, an index below 1 counts as
1, answers that come back too fast are paced (token bucket), errors back off
with jitter -- harder after a 429 from the agent's connection cap -- and
every failure and recovery is reported to the one L{Outage}.  A loop that
is not C{blocking} asks once, then again only when told to (L{refresh}) or
to retry a failure: a watch kept fresh by its datacenter's change feed.
"""

from __future__ import annotations

import random
from typing import Callable, Optional, Union

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from restygate.discovery.consul.answers import ConsulError
from restygate.discovery.consul.client import Indexed
from restygate.discovery.consul.outage import Outage
from restygate.discovery.model import UnknownDatacenter
from restygate.pacing import Backoff, TokenBucket

__all__ = ["BlockingLoop", "describe", "backoff_for"]

log = Logger()

# After a 429 the agent is at its connection cap: wait at least this long.
LIMITED_BACKOFF = 5.0


def describe(failure: Failure) -> str:
    """
    A failure as a short log text.
    """
    if failure.check(ConsulError, UnknownDatacenter):
        return str(failure.value)
    if failure.check(TimeoutError, CancelledError):
        return "timed out"
    return f"{type(failure.value).__name__}: {failure.value}"


def backoff_for(failure: Failure, backoff: Backoff) -> float:
    """
    The next retry delay: the backoff's, plus L{LIMITED_BACKOFF} after a 429.
    """
    delay = backoff.next()
    if failure.check(ConsulError) and getattr(failure.value, "status", None) == 429:
        delay += LIMITED_BACKOFF
    return delay


class BlockingLoop:
    """
    Asks C{query(index, urgent)} again and again, handing each answer to
    C{on_answer}; the first query is urgent.  C{on_error} sees each failure
    and may return C{False} to end the loop (a datacenter that is gone).
    Answers drive at most C{pace} queries a second (after a burst of 3).

    @ivar blocking: when false, an answer is not followed by another query
        and every query asks afresh (index 0); it can change while running.
    """

    def __init__(
        self,
        name: str,
        query: Callable[[int, bool], "Deferred[Indexed]"],
        on_answer: Callable[[Indexed], None],
        clock: IReactorTime,
        outage: Outage,
        rng: random.Random,
        on_error: Optional[Callable[[Failure], bool]] = None,
        pace: float = 2.0,
        blocking: bool = True,
    ) -> None:
        self.name = name
        self.blocking = blocking
        # A refresh asked while a one-off query was in flight: ask once more after it.
        self._again = False
        self._query = query
        self._on_answer = on_answer
        self._on_error = on_error
        self._clock = clock
        self._outage = outage
        self._bucket = TokenBucket(rate=pace, burst=3.0)
        self._backoff = Backoff(base=0.5, cap=30.0, rng=rng)
        self.index = 0
        # Which of the outage's outages had begun by the last answer.
        self._answered_in = outage.outages
        self.answers = 0
        self.last_success: Optional[float] = None
        self.last_error: Optional[str] = None
        self._inflight: Optional[Deferred[Indexed]] = None
        self._next: Optional[IDelayedCall] = None
        self.running = False

    @property
    def errors(self) -> int:
        return self._backoff.failures

    def start(self) -> None:
        if not self.running:
            self.running = True
            self._ask()

    def stop(self) -> None:
        self.running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._inflight is not None:
            self._inflight.cancel()
        self._outage.forget(self.name)

    def retry_now(self) -> None:
        """
        Ask now instead of when the backoff says (Consul answers again).
        """
        if self.running and self._inflight is None and self._next is not None and self._next.active():
            self._next.cancel()
            self._ask()

    def refresh(self) -> None:
        """
        Ask again now -- or, when not blocking, as soon as the query in
        flight is answered (it may have been answered before the change);
        a retry or paced query already scheduled is brought forward.
        """
        if not self.running:
            return
        if self._inflight is not None:
            self._again = self._again or not self.blocking
            return
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._ask()

    def _ask(self) -> None:
        self._next = None
        if not self.running:
            return
        self._inflight = d = self._query(self.index if self.blocking else 0, self.answers == 0)
        d.addBoth(self._settle, d)

    def _settle(self, result: Union[Indexed, Failure], asked: Deferred[Indexed]) -> None:
        if asked is not self._inflight:
            # Dropped by unblock(): its outcome is nobody's.
            return None
        try:
            delay = self._failed(result) if isinstance(result, Failure) else self._answered(result)
        except Exception:
            # A bug in the handlers must not end the loop for good.
            delay = self._crashed(Failure())
        self._schedule(delay)
        return None

    def block(self) -> None:
        """
        Hold a blocking query from now on (after the one-off query in
        flight, if any, or at once), starting from the last index: a change
        since the last answer returns at once.
        """
        self.blocking = True
        if self._answered_in != self._outage.outages:
            # Its index is from before an outage: an agent that restarted may
            # be behind it, and a query blocking on it would sit out its whole
            # wait before showing anything.
            self.index = 0
        if self.running and self._inflight is None and (self._next is None or not self._next.active()):
            self._ask()

    def unblock(self) -> None:
        """
        Ask only when told to from now on: the blocking query held is
        dropped and one one-off query asks now, so nothing that changed
        before the hand-over is missed.
        """
        self.blocking = False
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.cancel()
        self.refresh()

    def _schedule(self, delay: Optional[float]) -> None:
        self._inflight = None
        if self._again and self.running:
            self._again = False
            delay = 0.0
        if delay is not None and self.running:
            self._next = self._clock.callLater(delay, self._ask)

    def _answered(self, answer: Indexed) -> Optional[float]:
        now = self._clock.seconds()
        index = max(answer.index, 1)
        if index < self.index:
            self._outage.went_backwards(self.name, self.index, answer.index)
            self.index = 0
        else:
            self.index = index
        self._backoff.reset()
        self._answered_in = self._outage.outages
        self._outage.succeeded(self.name)
        self.answers += 1
        self.last_success = now
        self.last_error = None
        self._on_answer(answer)
        delay = self._bucket.delay(now)
        return delay if self.blocking else None

    def _failed(self, failure: Failure) -> Optional[float]:
        if not self.running:
            return None
        if self._on_error is not None and not self._on_error(failure):
            self.running = False
            self._outage.forget(self.name)
            return None
        self.last_error = describe(failure)
        self._outage.failed(self.name, self.last_error, getattr(failure.value, "status", None), self.retry_now)
        # Ask afresh after a failure: an agent that came back from a snapshot
        # restore has a lower index, and a blocking query on the old one would
        # sit out its whole wait before showing it.  One read per loop, cheap.
        self.index = 0
        return backoff_for(failure, self._backoff)

    def _crashed(self, failure: Failure) -> float:
        log.failure("{name} crashed", failure, name=self.name)
        return self._backoff.next()
