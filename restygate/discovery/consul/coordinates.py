"""
Datacenters ordered by network distance, for C{failover = "nearest"}: the
way Consul's prepared queries order them for C{NearestN}, from Consul's own
network coordinates (C{/v1/coordinate/datacenters}).

The distance between two servers is Consul's (C{lib/coordinate}
C{DistanceTo}): the Euclidean distance of their vectors plus both heights,
plus both adjustments when that stays positive, in seconds.  A datacenter's
distance from the one a request asked for is the median over every pair of
their servers.  Coordinates move slowly, so they are asked for only when a
failover needs them and the last answer is older than C{refresh} (60 s): an
idle gateway costs Consul nothing, and one failing over asks once a minute.
When Consul cannot answer, the last known order stands.
"""

from __future__ import annotations

import math
from statistics import median
from typing import Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from restygate.discovery.consul.answers import Coordinate

__all__ = ["distance", "by_distance", "NearestDatacenters"]

log = Logger()

Coordinates = Dict[str, Tuple[Coordinate, ...]]


def distance(a: Coordinate, b: Coordinate) -> float:
    """
    Consul's estimated round-trip time between two coordinates, in seconds.
    """
    raw = math.sqrt(sum((x - y) ** 2 for x, y in zip(a.vec, b.vec))) + a.height + b.height
    adjusted = raw + a.adjustment + b.adjustment
    return adjusted if adjusted > 0 else raw


def by_distance(coordinates: Coordinates, origin: str) -> List[str]:
    """
    The datacenters of C{coordinates} but C{origin}, nearest to it first
    (ties by name); none when C{origin} has no coordinates.
    """
    known = {dc.lower(): servers for dc, servers in coordinates.items() if servers}
    home = known.get(origin.lower())
    if home is None:
        return []
    ranked = sorted(
        (median(distance(a, b) for a in home for b in servers), dc)
        for dc, servers in coordinates.items()
        if servers and dc.lower() != origin.lower()
    )
    return [dc for _, dc in ranked]


class NearestDatacenters:
    """
    C{nearest(dc)}: the datacenters by distance from C{dc}, from
    coordinates fetched when needed and older than C{refresh} seconds.
    """

    def __init__(
        self, fetch: Callable[[], Deferred[Coordinates]], clock: IReactorTime, refresh: float = 60.0
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._refresh = refresh
        self._coordinates: Coordinates = {}
        self._fetched: Optional[float] = None
        # One question to Consul at a time, shared by every failover asking.
        self._asking: List[Deferred[None]] = []
        self._in_flight = False

    def __call__(self, dc: str) -> Deferred[List[str]]:
        now = self._clock.seconds()
        if self._fetched is not None and now - self._fetched < self._refresh:
            return succeed(by_distance(self._coordinates, dc))
        answered: Deferred[None] = Deferred()
        self._asking.append(answered)
        if not self._in_flight:
            self._in_flight = True
            self._fetched = now
            self._fetch().addCallbacks(self._answered, self._failed)
        return answered.addCallback(lambda _: by_distance(self._coordinates, dc))

    def _answered(self, coordinates: Coordinates) -> None:
        self._coordinates = coordinates
        self._done()

    def _failed(self, failure: Failure) -> None:
        # The last known order stands; the next failover after the refresh
        # interval asks again.
        log.warn("Consul's network coordinates unavailable ({error}); nearest failover uses the last known",
                 error=failure.getErrorMessage())
        self._done()

    def _done(self) -> None:
        self._in_flight = False
        waiting, self._asking = self._asking, []
        for answered in waiting:
            # A request that went away meanwhile cancelled its own.
            if not answered.called:
                answered.callback(None)
