"""
When CPython's cycle collector walks what: the garbage collection policy of
every restygate process (the daemon, each worker, a single-process gateway).

Discovery holds thousands of long-lived containers (watches, snapshots,
instances, checks), and CPython's full collection walks every tracked object
each time: while discovery grows, a full collection comes each time what
survived grew by a quarter, and under traffic in-flight objects promoted to
the old generation bring one every few seconds, each 50-400 ms long on a busy
machine (measured with bench/scale.py), stalling every request of that process.

So young collections come less often (L{YOUNG_THRESHOLD}), and what
survived a full collection is moved out of the collector's sight
(C{gc.freeze()}): right after a full collection every tracked object left is
reachable, so nothing that is garbage then is frozen, and the next full
collection walks only what came since.  Startup's objects (modules, classes,
the services) are frozen after one collection when the process starts.  A
frozen object that later becomes cyclic garbage (a watch stopped, a connection
closed, each a cycle) would never be freed: every C{thaw_interval} seconds
everything is unfrozen and collected once -- one full walk, the pause the
default collector would take every few seconds -- and what survives is frozen
again.  On PyPy (its own incremental collector, no C{gc.freeze}) this does
nothing.
"""

from __future__ import annotations

import gc
from typing import Dict, Tuple

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from restygate.pacing import carry_on

__all__ = ["CollectionPolicy", "THAW_INTERVAL", "YOUNG_THRESHOLD", "SUPPORTED"]

log = Logger()

#: Allocations of tracked objects between two young collections (CPython's
#: default: 700).  Requests in flight live a few ms: with 700, every young
#: collection walks the objects of every request in flight and promotes them
#: (the daemon did ~1,600 young collections in a scale run's first half
#: minute); with more they mostly die first.  A young collection walks only
#: what is alive and young: a few ms at most.
YOUNG_THRESHOLD = 20_000

#: Seconds between two full walks of everything (frozen cyclic garbage is
#: freed then): the only long collection pause a process takes.
THAW_INTERVAL = 600.0

# CPython's oldest generation: a collection of it is a full one.
_OLDEST = 2

#: Whether this interpreter's collector can be told (CPython 3.7+).
SUPPORTED = hasattr(gc, "freeze") and hasattr(gc, "callbacks")


class CollectionPolicy(Service):
    """
    Keeps the cycle collector's full collections short in this process
    while the service runs: survivors of each full collection are frozen,
    and everything is thawed and collected once every C{thaw_interval}
    seconds on C{clock}.

    @ivar thaws: full walks of everything done so far.
    """

    def __init__(self, clock: IReactorTime, thaw_interval: float = THAW_INTERVAL) -> None:
        self._clock = clock
        self.thaw_interval = thaw_interval
        self.thaws = 0
        self._thawing = LoopingCall(carry_on(self.thaw, "thawing the frozen objects failed"))
        self._thawing.clock = clock
        self._installed = False
        # CPython's thresholds before the service changed them (PyPy's gc
        # has no thresholds: read only where SUPPORTED).
        self._thresholds: Tuple[int, ...] = ()

    def startService(self) -> None:
        super().startService()
        if not SUPPORTED:
            return
        gc.callbacks.append(self._collected)
        self._installed = True
        self._thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, *self._thresholds[1:])
        # The callback freezes what this collection leaves: startup's objects.
        gc.collect()
        self._thawing.start(self.thaw_interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._thawing.running:
            self._thawing.stop()
        if self._installed:
            gc.callbacks.remove(self._collected)
            self._installed = False
            gc.set_threshold(*self._thresholds)
            gc.unfreeze()

    def thaw(self) -> None:
        """
        Unfreeze everything and collect it all once (freeing cyclic garbage
        that was frozen while alive); what survives is frozen again.
        """
        if not self._installed:
            return
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        freed = gc.collect()
        self.thaws += 1
        log.debug("thawed {frozen} objects: {freed} were garbage", frozen=frozen, freed=freed)

    def _collected(self, phase: str, info: Dict[str, int]) -> None:
        # After a full collection every tracked object left is reachable:
        # freezing them freezes no garbage.
        if phase == "stop" and info.get("generation") == _OLDEST:
            gc.freeze()
