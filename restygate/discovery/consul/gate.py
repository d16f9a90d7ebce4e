"""
The one door every request to the Consul agent goes through: at most
C{consul-max-connections} in flight at once, so never more connections than
that, whatever the number of watched services; first fetches a client request
waits for go ahead of everything else; background queries (re-issued
blocking queries, refreshes, retries, re-fetches after an index reset) are
also paced to C{consul-max-rps} (a token bucket holding a tenth of a
second's worth), so a herd becomes a queue, not a burst.  Urgent ones take
from the same bucket without waiting for it, so the paced ones make room
for them.
Prompt ones (a change feed's re-issued query, the fetch of a service whose
change it saw) share that pace but go ahead of the other background ones,
which are not starved: one that has waited L{AGED} seconds goes first.

Urgent requests are bounded by the names Consul knows (a made-up name never
gets this far; a change feed's full reads: one at a time per datacenter),
so putting them first cannot be abused to starve the rest;
prompt ones by the changes Consul records.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Optional, Tuple, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["ConsulGate", "AGED", "RELEARN"]

log = Logger()

T = TypeVar("T")

#: Seconds a background request waits at most before it goes ahead of prompt ones.
AGED = 1.0
#: Paced requests may start this many seconds' worth of the rate at once
#: (at least one): queries that come in bunches do not queue behind each
#: other while the average stays within the rate.
BURST_SECONDS = 0.1

#: Urgent requests past the rate hold the paced ones back by this many
#: seconds' worth at most: a cold start's thousands of first fetches must not
#: stall refreshes and retries for a minute after.
URGENT_DEBT = 1.0
#: An agent that refused a connection (429: its per-client cap, below
#: consul-max-connections) is trusted with one connection more per this many
#: seconds without another refusal.
RELEARN = 30.0

_Start = Callable[[], "Deferred[Any]"]


class _Ticket:
    """One request waiting for its turn; cancelled before its turn, it never starts."""

    def __init__(self, start: _Start, result: Deferred[Any], queued: float) -> None:
        self.start = start
        self.queued = queued
        self.result = result
        self.running: Optional[Deferred[Any]] = None
        self.cancelled = False


class ConsulGate:
    """
    A concurrency limit with three queues (urgent, prompt, background) and a
    rate for the last two.

    @ivar limit: requests in flight at most (C{consul-max-connections}).
    @ivar learned: the agent's own cap on our connections, as its 429s
        told it (L{None} while it refused none): in flight at most, if lower.
    @ivar rate: background requests started per second at most (C{consul-max-rps}).
    """

    def __init__(self, clock: IReactorTime, limit: int, rate: float) -> None:
        self._clock = clock
        self.limit = limit
        self.rate = rate
        self.in_flight = 0
        self.peak = 0
        self.learned: Optional[int] = None
        # When an urgent request (a first fetch a client waits for) last came.
        self.urgent_at = float("-inf")
        self._learned_at = 0.0
        self._urgent: Deque[_Ticket] = deque()
        self._prompt: Deque[_Ticket] = deque()
        self._background: Deque[_Ticket] = deque()
        # Paced requests that may start now (a token bucket), as of when.
        self._tokens = self._burst
        self._filled = clock.seconds()
        self._timer: Optional[IDelayedCall] = None

    @property
    def _burst(self) -> float:
        return max(1.0, self.rate * BURST_SECONDS)

    def reconfigure(self, limit: int, rate: float) -> None:
        self.limit, self.rate = limit, rate
        self._pump()

    @property
    def queued(self) -> Tuple[int, int]:
        """(urgent, paced) requests waiting for their turn (paced: prompt and background)."""
        return len(self._urgent), len(self._prompt) + len(self._background)

    def run(self, start: Callable[[], Deferred[T]], urgent: bool = False, prompt: bool = False) -> Deferred[T]:
        """
        C{start()} once its turn comes; its result.  Cancelling the result
        before the turn drops the request, after it cancels the request.
        """
        result: Deferred[T] = Deferred(lambda d: self._cancel(ticket))
        ticket = _Ticket(start, result, self._clock.seconds())
        if urgent:
            self.urgent_at = ticket.queued
        (self._urgent if urgent else self._prompt if prompt else self._background).append(ticket)
        self._pump()
        return result

    def _cancel(self, ticket: _Ticket) -> None:
        ticket.cancelled = True
        if ticket.running is not None:
            ticket.running.cancel()

    @property
    def effective(self) -> int:
        """
        Requests in flight at most: the limit, or the agent's cap if lower.
        """
        return self.limit if self.learned is None else min(self.limit, self.learned)

    def _pump(self) -> None:
        while self.in_flight < self.effective:
            ticket = self._take()
            if ticket is None:
                return
            self._launch(ticket)

    def _take(self) -> Optional[_Ticket]:
        while self._urgent:
            ticket = self._urgent.popleft()
            if not ticket.cancelled:
                # It goes now whatever the bucket holds, but counts: the paced
                # ones wait for it (at most URGENT_DEBT seconds' worth), so
                # Consul never sees more than the rate from both together
                # unless first fetches alone need more.
                self._refill()
                self._tokens = max(-self.rate * URGENT_DEBT, self._tokens - 1)
                return ticket
        for queue in (self._prompt, self._background):
            while queue and queue[0].cancelled:
                queue.popleft()
        if not self._prompt and not self._background:
            self.close()
            return None
        now, refill = self._refill()
        # (A hair below a whole token is rounding, not a reason to wait.)
        if self._tokens < 1 - 1e-9:
            if self._timer is None or not self._timer.active():
                self._timer = self._clock.callLater((1 - self._tokens) / refill, self._pump)
            return None
        self._tokens -= 1
        aged = bool(self._background) and now - self._background[0].queued >= AGED
        return (self._prompt if self._prompt and not aged else self._background).popleft()

    def _refill(self) -> Tuple[float, float]:
        """
        Fill the bucket for the time since it was last filled; the time now
        and the refill rate.
        """
        now = self._clock.seconds()
        # Refilled a little slower than the rate by what the bucket holds
        # beyond one, so no second ever sees more starts than strict spacing
        # at the rate would give (C{consul-max-rps}, plus the one at its edge).
        refill = self.rate - (self._burst - 1)
        self._tokens = min(self._burst, self._tokens + (now - self._filled) * refill)
        self._filled = now
        return now, refill

    def close(self) -> None:
        """
        Forget the timer of the background queue (nothing waits in it, or
        the gateway is stopping).
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _launch(self, ticket: _Ticket) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            ticket.running = running = ticket.start()
        except BaseException:
            running = Deferred()
            running.errback(Failure())
        running.addBoth(self._done, ticket)

    def _done(self, outcome: Any, ticket: _Ticket) -> None:
        self.in_flight -= 1
        ticket.running = None
        self._learn(outcome)
        if not ticket.result.called:
            if isinstance(outcome, Failure):
                ticket.result.errback(outcome)
            else:
                ticket.result.callback(outcome)
        elif isinstance(outcome, Failure):
            # Cancelled by its caller: the failure is the cancellation, expected.
            outcome.trap(Exception)
        self._pump()

    def _learn(self, outcome: Any) -> None:
        # Refused with this many in flight (this one included): the agent's
        # cap is below that.  Never more than that until RELEARN passes.
        now = self._clock.seconds()
        if isinstance(outcome, Failure) and getattr(outcome.value, "status", None) == 429:
            learned = max(1, min(self.effective, self.in_flight + 1) - 1)
            if learned != self.learned:
                log.info("the Consul agent refuses connections past {n} in flight: keeping below it",
                         n=learned + 1)
            self.learned, self._learned_at = learned, now
        elif self.learned is not None and now - self._learned_at >= RELEARN:
            self.learned, self._learned_at = self.learned + 1, now
            if self.learned >= self.limit:
                self.learned = None
