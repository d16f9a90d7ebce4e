"""
One account of Consul's availability for every query restygate makes, so an
outage is logged once when it starts and once when it ends, with counts,
instead of one warning per watch per retry (thousands of lines a minute
with thousands of watches).  The first answer after failures also brings
every query waiting out its backoff forward (through the gate's background
rate, so not as a herd): Consul is back, so is everything within seconds.
While nothing answers, one failing query a second is asked again whatever
its backoff, so "Consul is back" is seen within a second of it answering,
not when the luckiest of the backoffs (up to 30 s apart after a long
outage) runs out.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Set

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from restygate.discovery.consul.answers import CONNECTION_LIMIT
from restygate.pacing import LogBudget

__all__ = ["Outage"]

log = Logger()

#: Seconds between the retries of one failing query while nothing answers.
NUDGE_INTERVAL = 1.0


class Outage:
    """
    Counts failing queries; logs the first failure and the recovery.

    @ivar failing: what is failing now (watch names, C{"feed dc1"}...).
    @ivar failures: failed queries since the outage began.
    @ivar limited: 429 answers (the agent's connection cap) in this outage.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._nudge: Optional[IDelayedCall] = None
        # Whether any query was answered since the last nudge.
        self._answered = False
        # Every watch sees an agent restart or a snapshot restore at once.
        self.resets = LogBudget(
            clock, log, "... and Consul's index went backwards for {count} more queries in {seconds:g}s; "
            "each reset"
        )
        self.failing: Set[str] = set()
        self.failures = 0
        self.limited = 0
        self.since: Optional[float] = None
        self.outages = 0
        # What failing queries do to be retried now, by name.
        self._retry: Dict[str, Callable[[], None]] = {}

    def failed(
        self, what: str, error: str, status: Optional[int] = None, retry: Optional[Callable[[], None]] = None
    ) -> None:
        """
        C{what} failed; C{retry} asks it again at once (once Consul answers anything).
        """
        self.failing.add(what)
        if retry is not None:
            self._retry[what] = retry
        self.failures += 1
        if status == 429:
            if not self.limited:
                log.warn("{limit}: the agent refuses more connections from this host", limit=CONNECTION_LIMIT)
            self.limited += 1
        if self.since is None:
            self.since = self._clock.seconds()
            self.outages += 1
            log.warn(
                "Consul queries failing ({what}: {error}); serving the last known instances meanwhile",
                what=what, error=error,
            )
        self._nudged()

    def succeeded(self, what: str) -> None:
        self._answered = True
        if what not in self.failing:
            return
        self.failing.discard(what)
        self._retry.pop(what, None)
        retry, self._retry = self._retry, {}
        for again in retry.values():
            again()
        self._settle()

    def _settle(self) -> None:
        if self.failing or self.since is None:
            self._nudged()
            return
        log.info(
            "Consul answers again after {seconds:.1f}s: {failures} failed queries ({limited} refused by the "
            "agent's connection limit), every query recovered",
            seconds=self._clock.seconds() - self.since, failures=self.failures, limited=self.limited,
        )
        self.since = None
        self.failures = 0
        self.limited = 0
        self._nudged()

    def _nudged(self) -> None:
        """
        Keep the once-a-second retry going while failing queries wait to be
        asked again, and only then (nothing is left behind once they stop).
        """
        wanted = self.since is not None and bool(self._retry)
        if wanted and self._nudge is None:
            self._nudge = self._clock.callLater(NUDGE_INTERVAL, self._ask_one)
        elif not wanted and self._nudge is not None:
            if self._nudge.active():
                self._nudge.cancel()
            self._nudge = None

    def _ask_one(self) -> None:
        """
        Ask the longest-waiting failing query again now (it is taken off
        the list; failing again puts it back at the end).
        """
        self._nudge = None
        if self._answered:
            # Consul answers others: what fails is this query's own
            # trouble (an ACL, say), and its backoff decides.
            self._answered = False
        elif self._retry:
            what = next(iter(self._retry))
            self._retry.pop(what)()
        # It may have answered, and with it every other query: the outage is over.
        self._nudged()

    def went_backwards(self, what: str, old: int, new: int) -> None:
        """
        Consul's index for C{what} went back (an agent restart, a snapshot
        restore): its query starts again from 0.
        """
        self.resets("Consul index of {name} went backwards ({old} -> {new}); resetting",
                     name=what, old=old, new=new)

    def forget(self, what: str) -> None:
        """
        C{what} stopped (unwatched) while failing: it no longer holds the outage open.
        """
        # Not an answer from Consul: the others wait for their own turn.
        self._retry.pop(what, None)
        self.failing.discard(what)
        self._settle()
