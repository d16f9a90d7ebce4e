"""
A datacenter's change feed: one blocking query on C{/v1/health/state/any}
that keeps every service watched without a blocking query of its own fresh.

Each answer lists every check in the datacenter; per service it gives a
fingerprint and the highest C{ModifyIndex} (L{parse_check_states}).  A
service whose fingerprint moved since the last answer, or whose highest
index is above the index of its watch's last fetch, changed: its watch is
told to fetch once more (a one-off C{/v1/health/service} query).  So a
thousand services cost one held connection and, per change, one answer of
the feed plus one fetch of just the services that changed.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, Iterable, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from restygate.discovery.consul.client import ConsulClient, Indexed
from restygate.discovery.consul.loop import BlockingLoop
from restygate.discovery.consul.outage import Outage
from restygate.discovery.consul.watch import Watcher

__all__ = ["ChangeFeed", "FEED_PACE"]

#: Change feed answers per second per datacenter, at most.
FEED_PACE = 10.0


class ChangeFeed:
    """
    The change feed of datacenter C{dc}; C{watches()} are the watches it keeps fresh.

    @ivar refetches: one-off fetches it asked for, in all.
    """

    def __init__(
        self,
        dc: str,
        client: ConsulClient,
        clock: IReactorTime,
        outage: Outage,
        rng: random.Random,
        wait: float,
        watches: Callable[[], Iterable[Watcher]],
    ) -> None:
        self.dc = dc
        self._client = client
        self._clock = clock
        self._watches = watches
        self._wait = wait
        self._states: Optional[Dict[str, Tuple[int, int]]] = None
        self.refetches = 0
        # The last answer's time and the watches it sent fetching, for the lag.
        self._cycle_started: Optional[float] = None
        self._cycle: Tuple[Watcher, ...] = ()
        # Up to FEED_PACE answers a second: a burst of changes costs one
        # answer per 1/FEED_PACE s, each covering every change since the last.
        self.loop = BlockingLoop(
            f"change feed of {dc}", self._query, self._answered, clock, outage, rng, pace=FEED_PACE
        )

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    @property
    def running(self) -> bool:
        return self.loop.running

    def lag(self) -> float:
        """
        Seconds from the feed's last answer until every fetch it caused had
        its answer (still counting while one has not), plus how far behind
        the leader that answer was (X-Consul-LastContact): how old a change
        can be when routing sees it.
        """
        if self._cycle_started is None:
            return 0.0
        now = self._clock.seconds()
        started = self._cycle_started
        done = [
            (w.last_success if w.last_success is not None and w.last_success >= started else now) - started
            for w in self._cycle
            if w.running
        ]
        return max(done, default=0.0) + self._client.last_contact.get(self.dc, 0.0)

    def _query(self, index: int, urgent: bool) -> Deferred[Indexed]:
        return self._client.check_states(self.dc, index, self._wait, urgent=urgent)

    def _answered(self, answer: Indexed) -> None:
        states: Dict[str, Tuple[int, int]] = answer.value
        before = self._states
        changed = []
        for watcher in self._watches():
            name = watcher.service.lower()
            fingerprint, top = states.get(name, (0, 0))
            moved = before is not None and before.get(name, (0, 0))[0] != fingerprint
            if moved or (watcher.snapshot is not None and top > watcher.index):
                changed.append(watcher)
        self._states = states
        self._cycle_started = self._clock.seconds()
        self._cycle = tuple(changed)
        self.refetches += len(changed)
        for watcher in changed:
            watcher.refresh()
