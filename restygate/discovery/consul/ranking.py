"""
Which watches hold a blocking query of their own: the busiest ones.

Dedicated watches see a change within one round trip; the others wait for
their datacenter's change feed and a fetch.  The budget of dedicated
queries is small (a quarter of the agent connections), so it goes to the
services asked for most: every few seconds each watch's requests since the
last ranking are folded into a decayed rate (half-life L{HALF_LIFE}), and a
fed watch takes the place of the least busy dedicated one only when its
rate is clearly higher (L{MARGIN} times, and by at least L{MIN_GAP}), so
watches of services about as busy as each other do not churn.  A free
place goes to the busiest fed watch that was asked for at all.  An agent
that caps our connections below consul-max-connections (its 429s, learned
by the L{ConsulGate}) shrinks the places to a quarter of its cap, the least
busy going back to the feed, so held queries never take every connection
it allows and first fetches still get through.  Demotion
hands a service back to its feed without a gap: the held query is dropped
and one fetch asks at once, and the feed covers every change after it.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from restygate.discovery.consul.gate import ConsulGate
from restygate.discovery.consul.watch import Watcher
from restygate.pacing import carry_on

__all__ = ["Ranking", "RANK_INTERVAL", "HALF_LIFE", "MARGIN", "MIN_GAP"]

log = Logger()

#: Seconds between rankings.
RANK_INTERVAL = 5.0
#: Seconds after which a request counts half in the rate.
HALF_LIFE = 60.0
#: How many times busier a fed watch must be than a dedicated one to take its place...
MARGIN = 1.5
#: ...and by how many (decayed) requests at least.
MIN_GAP = 2.0


class Ranking:
    """
    Ranks C{watches()} every L{RANK_INTERVAL} seconds and keeps the
    busiest C{budget} of them dedicated; C{demoted(watcher)} is told before
    a watch is handed to the feed (its datacenter's feed must run).

    @ivar moves: watches promoted and demoted, in all.
    """

    def __init__(
        self,
        clock: IReactorTime,
        budget: int,
        watches: Callable[[], Iterable[Watcher]],
        demoted: Callable[[Watcher], None],
        gate: Optional[ConsulGate] = None,
    ) -> None:
        self.budget = budget
        self._gate = gate
        self._watches = watches
        self._demoted = demoted
        self.moves = 0
        self._decay = 0.5 ** (RANK_INTERVAL / HALF_LIFE)
        self._loop = LoopingCall(carry_on(self.rank, "ranking watches by request rate failed"))
        self._loop.clock = clock

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(RANK_INTERVAL, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def rank(self) -> None:
        """
        Fold the requests since the last ranking into each watch's rate,
        then move the busiest fed watches into the dedicated places.
        """
        live: List[Watcher] = []
        for watcher in self._watches():
            watcher.rate = watcher.rate * self._decay + watcher.hits
            watcher.hits = 0
            if watcher.running:
                live.append(watcher)
        dedicated = sorted((w for w in live if w.blocking), key=lambda w: w.rate)
        fed = sorted((w for w in live if not w.blocking and w.rate > 0), key=lambda w: w.rate, reverse=True)
        places = self.places
        while len(dedicated) > places:
            self._demote(dedicated.pop(0))
        free = places - len(dedicated)
        while fed and free > 0:
            self._promote(fed.pop(0))
            free -= 1
        while fed and dedicated and fed[0].rate > max(dedicated[0].rate * MARGIN, dedicated[0].rate + MIN_GAP):
            quiet, busy = dedicated.pop(0), fed.pop(0)
            self._demote(quiet)
            self._promote(busy)
            log.debug(
                "{busy} ({rate:.1f}) takes the dedicated watch of {quiet} ({quieter:.1f})",
                busy=f"{busy.dc}/{busy.service}", rate=busy.rate,
                quiet=f"{quiet.dc}/{quiet.service}", quieter=quiet.rate,
            )

    @property
    def places(self) -> int:
        """
        Dedicated watches at most now: the budget, or a quarter of the
        connections the agent allows us if that is fewer.
        """
        if self._gate is None or self._gate.learned is None:
            return self.budget
        return min(self.budget, self._gate.effective // 4)

    def _demote(self, watcher: Watcher) -> None:
        self._demoted(watcher)
        watcher.demote()
        self.moves += 1

    def _promote(self, watcher: Watcher) -> None:
        watcher.promote()
        self.moves += 1
