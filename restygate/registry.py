"""
Consul-backed discovery: one L{Watcher} per (datacenter, service) that
somebody asked for, started on the first request and stopped once nobody has
asked for it in a while.

Only what is asked for is watched, so a gateway in front of a big catalog
does not re-fetch every service on every change.  Concurrent first requests
for the same pair share the watcher's single in-flight query.  A datacenter
Consul has no path to is remembered for a few seconds, so a client repeating
a bad URL costs Consul one query, not one per request.
"""

from __future__ import annotations

import random
from typing import Dict, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from restygate.discovery import IDiscovery, Snapshot, UnknownDatacenter
from restygate.watcher import HealthSource, Watcher

__all__ = ["ConsulDiscovery"]

log = Logger()

# How long "Consul has no path to this datacenter" is believed without asking
# again; short, so a datacenter that joins the federation is served promptly.
UNKNOWN_DC_TTL = 5.0


@implementer(IDiscovery)
class ConsulDiscovery(Service):
    """
    L{IDiscovery} over a Consul agent.
    """

    def __init__(
        self,
        source: HealthSource,
        clock: IReactorTime,
        tags: Tuple[str, ...] = (),
        wait: float = 60.0,
        discovery_timeout: float = 5.0,
        idle_timeout: float = 600.0,
        rng: Optional[random.Random] = None,
    ) -> None:
        self._source = source
        self._clock = clock
        self._tags = tags
        self._wait = wait
        self._discovery_timeout = discovery_timeout
        self._idle_timeout = idle_timeout
        self._rng = rng or random.Random()
        self._watchers: Dict[Tuple[str, str], Watcher] = {}
        self._unknown_dcs: Dict[str, float] = {}
        self._sweeper = LoopingCall(self._sweep_safely)
        self._sweeper.clock = clock

    @property
    def watchers(self) -> Dict[Tuple[str, str], Watcher]:
        return self._watchers

    def startService(self) -> None:
        super().startService()
        self._sweeper.start(min(60.0, self._idle_timeout / 4), now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._sweeper.running:
            self._sweeper.stop()
        for watcher in list(self._watchers.values()):
            watcher.stop()
        self._watchers.clear()
        return succeed(None)

    def lookup(self, dc: str, service: str) -> Deferred[Snapshot]:
        key = (dc, service)
        watcher = self._watchers.get(key)
        now = self._clock.seconds()
        if watcher is None:
            if self._unknown_dcs.get(dc, 0.0) > now:
                return fail(UnknownDatacenter(dc))
            watcher = Watcher(
                dc, service, self._source, self._clock, self._tags, self._wait,
                self._rng, on_unknown_datacenter=self._unknown_datacenter,
            )
            self._watchers[key] = watcher
            log.info("watching {dc}/{service}", dc=dc, service=service)
            watcher.start()
        watcher.last_used = now
        snapshot = watcher.snapshot
        if snapshot is not None:
            return succeed(snapshot)
        return watcher.first_snapshot(self._discovery_timeout)

    def _unknown_datacenter(self, watcher: Watcher) -> None:
        log.info("Consul has no path to datacenter {dc}", dc=watcher.dc)
        self._unknown_dcs[watcher.dc] = self._clock.seconds() + UNKNOWN_DC_TTL
        self._forget(watcher)

    def _forget(self, watcher: Watcher) -> None:
        key = (watcher.dc, watcher.service)
        if self._watchers.get(key) is watcher:
            del self._watchers[key]
        watcher.stop()

    def _sweep_safely(self) -> None:
        # LoopingCall stops for good on an unhandled error; log and go on.
        try:
            self.sweep()
        except Exception:
            log.failure("sweeping idle watchers failed")

    def sweep(self) -> None:
        """
        Stop watchers nobody used for the idle timeout; drop old negative
        datacenter entries.
        """
        now = self._clock.seconds()
        for watcher in list(self._watchers.values()):
            if now - watcher.last_used >= self._idle_timeout:
                log.info(
                    "stopped watching {dc}/{service}: unused for {idle:.0f}s",
                    dc=watcher.dc, service=watcher.service, idle=now - watcher.last_used,
                )
                self._forget(watcher)
        for dc, until in list(self._unknown_dcs.items()):
            if until <= now:
                del self._unknown_dcs[dc]
