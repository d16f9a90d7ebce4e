"""
The datacenters and service names Consul knows, so that only those can be
watched: a request for a made-up datacenter or service is answered at once
and starts nothing (no watch, no Consul query, no metrics series).

The datacenter list comes from C{/v1/catalog/datacenters}, refreshed every
C{refresh} seconds and, at most once per C{miss_interval}, when a request
names one not on it (a datacenter that just joined is served within
seconds; a flood of made-up names costs Consul one query per interval).  The
service names of each datacenter come from a blocking query on
C{/v1/catalog/services?dc=}, so they are fresh within one round trip of a
registration.  That query starts as soon as Consul lists the datacenter for
the first C{eager} datacenters in Consul's order (nearest first, the likeliest
to be asked for), so the first requests for them need not wait for their
names too; each other datacenter's starts the first time it is asked for,
which keeps the held connections to the datacenters in use.  Names are
matched case-insensitively, as Consul matches them, and canonicalised to
Consul's spelling.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from restygate.discovery.consul.client import ConsulClient, Indexed
from restygate.discovery.consul.loop import BlockingLoop, describe
from restygate.discovery.consul.outage import Outage
from restygate.discovery.model import DiscoveryUnavailable, UnknownDatacenter, UnknownService

__all__ = ["ConsulNames"]

log = Logger()


class _Datacenter:
    """
    One datacenter's service names, with the requests waiting for the first answer.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.services: Optional[Dict[str, str]] = None
        self.index = 0
        self.waiting: List[Deferred[None]] = []
        self.loop: Optional[BlockingLoop] = None


class ConsulNames(Service):
    """
    Resolves (dc, service) as a client wrote them to Consul's spelling.
    """

    def __init__(
        self,
        client: ConsulClient,
        clock: IReactorTime,
        outage: Outage,
        wait: float = 60.0,
        refresh: float = 60.0,
        miss_interval: float = 5.0,
        rng: Optional[random.Random] = None,
        eager: int = 0,
    ) -> None:
        self._client = client
        self._clock = clock
        self._outage = outage
        self._wait = wait
        self._miss_interval = miss_interval
        self._eager = eager
        self._rng = rng or random.Random()
        # Lower-cased name -> Consul's spelling and its service names.
        self._dcs: Dict[str, _Datacenter] = {}
        self._listed = False
        self._listing: Optional[Deferred[object]] = None
        self._last_listing = -miss_interval
        self._refresher = LoopingCall(self._refresh)
        self._refresher.clock = clock
        self._refresh_interval = refresh
        self.misses = 0
        # Told when a datacenter's services change (its catalog index moves): its change feed.
        self.catalog_listeners: Dict[str, Callable[[], None]] = {}
        # Told each time Consul lists its datacenters: Consul answers.
        self.listed_listeners: List[Callable[[], None]] = []

    def startService(self) -> None:
        super().startService()
        self._refresher.start(self._refresh_interval, now=True)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._refresher.running:
            self._refresher.stop()
        if self._listing is not None:
            self._listing.cancel()
        self._outage.forget("datacenter list")
        for dc in self._dcs.values():
            if dc.loop is not None:
                dc.loop.stop()
            self._release(dc, DiscoveryUnavailable("discovery stopped"))
        return succeed(None)

    @property
    def listed(self) -> bool:
        """
        Whether Consul has listed its datacenters yet (it answers).
        """
        return self._listed

    @property
    def datacenters(self) -> List[str]:
        return sorted(dc.name for dc in self._dcs.values())

    def names_in(self, dc: str) -> int:
        known = self._dcs.get(dc.lower())
        return len(known.services or {}) if known is not None else 0

    def resolve(self, dc: str, service: str, timeout: float) -> Deferred[Tuple[str, str]]:
        """
        C{(dc, service)} in Consul's spelling; fails at once with
        L{UnknownDatacenter} or L{UnknownService} for a name Consul does not
        know, and with L{DiscoveryUnavailable} when the names could not be
        had within C{timeout} seconds.
        """
        if not self._listed:
            return self._after(self._list(urgent=True), timeout).addCallback(
                lambda _: self.resolve(dc, service, 0.0)
            )
        known = self._dcs.get(dc.lower())
        if known is None:
            self.misses += 1
            if self._clock.seconds() - self._last_listing >= self._miss_interval:
                self._list(urgent=False)
            return fail(UnknownDatacenter(dc))
        if known.services is None:
            self._follow(known)
            waiting: Deferred[None] = Deferred(lambda d: known.waiting.remove(d))
            known.waiting.append(waiting)
            return self._after(waiting, timeout).addCallback(lambda _: self.resolve(dc, service, 0.0))
        name = known.services.get(service.lower())
        if name is None:
            self.misses += 1
            return fail(UnknownService(known.name, service))
        return succeed((known.name, name))

    def _after(self, d: Deferred[None], timeout: float) -> Deferred[None]:
        if timeout > 0:
            d.addTimeout(timeout, self._clock)

        def unavailable(failure: Failure) -> Failure:
            if failure.check(DiscoveryUnavailable, UnknownDatacenter):
                return failure
            raise DiscoveryUnavailable(f"the names Consul knows are not available: {describe(failure)}")

        return d.addErrback(unavailable)

    # -- the datacenter list ------------------------------------------------------------------

    def _refresh(self) -> None:
        self._list(urgent=False).addErrback(lambda f: None)

    def _list(self, urgent: bool) -> Deferred[None]:
        listing = self._listing
        if listing is None:
            self._last_listing = self._clock.seconds()
            self._listing = listing = self._client.datacenters(urgent=urgent).addCallbacks(
                self._listed_now, self._listing_failed
            )
        waiter: Deferred[None] = Deferred()
        listing.addBoth(self._pass_on, waiter)
        return waiter

    def _pass_on(self, result: object, waiter: Deferred[None]) -> object:
        if isinstance(result, Failure):
            waiter.errback(result)
            return None
        waiter.callback(None)
        return result

    def _listed_now(self, names: Tuple[str, ...]) -> None:
        self._listing = None
        self._listed = True
        for listener in self.listed_listeners:
            listener()
        self._outage.succeeded("datacenter list")
        fresh = {n.lower(): n for n in names}
        for key, name in fresh.items():
            if key not in self._dcs:
                self._dcs[key] = _Datacenter(name)
                log.info("Consul knows datacenter {dc}", dc=name)
        for key in [k for k in self._dcs if k not in fresh]:
            gone = self._dcs.pop(key)
            log.info("Consul no longer lists datacenter {dc}", dc=gone.name)
            if gone.loop is not None:
                gone.loop.stop()
            self._release(gone, UnknownDatacenter(gone.name))
        followed = sum(1 for dc in self._dcs.values() if dc.loop is not None)
        for key in fresh:
            if followed >= self._eager:
                break
            if self._dcs[key].loop is None:
                self._follow(self._dcs[key])
                followed += 1

    def _listing_failed(self, failure: Failure) -> Failure:
        self._listing = None
        self._outage.failed(
            "datacenter list", describe(failure), getattr(failure.value, "status", None), self._refresh
        )
        return failure

    # -- each datacenter's service names ------------------------------------------------------

    def _follow(self, dc: _Datacenter) -> None:
        if dc.loop is not None:
            return

        def query(index: int, urgent: bool) -> Deferred[Indexed]:
            return self._client.service_names(dc.name, index, self._wait, urgent=urgent)

        def answered(answer: Indexed) -> None:
            moved = dc.services is not None and answer.index != dc.index
            dc.services, dc.index = {n.lower(): n for n in answer.value}, answer.index
            self._release(dc, None)
            listener = self.catalog_listeners.get(dc.name.lower())
            if moved and listener is not None:
                listener()

        def failed(failure: Failure) -> bool:
            if failure.check(UnknownDatacenter):
                self._dcs.pop(dc.name.lower(), None)
                self._release(dc, failure.value)
                return False
            if dc.services is None:
                self._release(dc, DiscoveryUnavailable(f"Consul's service names in {dc.name}: {describe(failure)}"))
            return True

        dc.loop = BlockingLoop(f"service names in {dc.name}", query, answered, self._clock, self._outage,
                               self._rng, failed)
        dc.loop.start()

    def _release(self, dc: _Datacenter, error: Optional[BaseException]) -> None:
        waiting, dc.waiting = dc.waiting, []
        for d in waiting:
            if error is None:
                d.callback(None)
            else:
                d.errback(Failure(error))
