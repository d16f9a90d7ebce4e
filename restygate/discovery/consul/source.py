"""
Consul-backed discovery: one L{Watcher} per (datacenter, service) that
somebody asked for, started on the first request and stopped once nobody has
asked for it in a while.

Only what is asked for is watched, so a gateway in front of a big catalog
does not re-fetch every service on every change.  Concurrent first requests
for the same pair share the watcher's single in-flight query.  A datacenter
Consul has no path to is remembered for a few seconds, so a client repeating
a bad URL costs Consul one query, not one per request.

When a reload changes what a watch asks Consul (tags, wait), each watched
pair gets a successor watcher on its next request, and the old one keeps
serving until the successor's first answer: no request fails or waits
because of a reload, and pairs nobody asks for are not re-queried at all.
"""

from __future__ import annotations

import random
from typing import Dict, List, Optional, Set, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from restygate.config import Config
from restygate.discovery.model import DiscoveryUnavailable, IDiscovery, Snapshot, UnknownDatacenter
from restygate.discovery.consul.watch import HealthSource, Watcher
from restygate.ops.views import IDiscoveryView, Watched

__all__ = ["ConsulDiscovery"]

log = Logger()

# How long "Consul has no path to this datacenter" is believed without asking
# again; short, so a datacenter that joins the federation is served promptly.
UNKNOWN_DC_TTL = 5.0


@implementer(IDiscovery, IDiscoveryView)
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
        max_stale: Optional[float] = None,
        datacenter_grace: float = 60.0,
    ) -> None:
        self.max_stale = max_stale
        self.datacenter_grace = datacenter_grace
        self._source = source
        self._clock = clock
        self._tags = tags
        self._wait = wait
        self._discovery_timeout = discovery_timeout
        self._idle_timeout = idle_timeout
        self._rng = rng or random.Random()
        self._watchers: Dict[Tuple[str, str], Watcher] = {}
        # Watchers asking Consul with settings from before a reload, and the
        # watchers started to replace them, not answered yet.
        self._outdated: Set[Watcher] = set()
        self._successors: Dict[Tuple[str, str], Watcher] = {}
        self._unknown_dcs: Dict[str, float] = {}
        self._sweeper = LoopingCall(self._sweep_safely)
        self._sweeper.clock = clock

    @property
    def watchers(self) -> Dict[Tuple[str, str], Watcher]:
        return self._watchers

    def watched(self) -> List[Watched]:
        found = []
        for (dc, service), watcher in sorted(self._watchers.items()):
            snapshot = watcher.snapshot
            found.append(
                Watched(
                    dc, service,
                    instances=snapshot.instances if snapshot is not None else (),
                    synced=snapshot is not None,
                    index=watcher.index,
                    last_success=watcher.last_success,
                    last_error=watcher.last_error,
                    errors=watcher.errors,
                )
            )
        return found

    def has_instances(self, dc: str, service: str) -> bool:
        watcher = self._watchers.get((dc, service))
        snapshot = watcher.snapshot if watcher is not None else None
        return snapshot is not None and bool(snapshot.instances)

    def answered(self) -> bool:
        return any(w.last_success is not None for w in self._watchers.values())

    def startService(self) -> None:
        super().startService()
        self._sweeper.start(self._sweep_interval(), now=False)

    def _sweep_interval(self) -> float:
        return min(60.0, self._idle_timeout / 4)

    def reconfigure(self, config: Config) -> None:
        """
        Take C{config}'s tags, wait and timeouts.  Watchers already running
        are replaced lazily (see L{lookup}), and keep serving meanwhile.
        """
        self._discovery_timeout = config.discovery_timeout
        self.max_stale = config.max_stale
        self.datacenter_grace = config.datacenter_grace
        for watcher in self._watchers.values():
            watcher.datacenter_grace = config.datacenter_grace
        if config.watch_idle_timeout != self._idle_timeout:
            self._idle_timeout = config.watch_idle_timeout
            if self._sweeper.running:
                self._sweeper.stop()
                self._sweeper.start(self._sweep_interval(), now=False)
        if (config.tags, config.consul_wait) != (self._tags, self._wait):
            self._tags, self._wait = config.tags, config.consul_wait
            # Successors started with the settings now replaced are no use.
            for successor in self._successors.values():
                successor.stop()
            self._successors.clear()
            self._outdated = set(self._watchers.values())

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._sweeper.running:
            self._sweeper.stop()
        for watcher in [*self._watchers.values(), *self._successors.values()]:
            watcher.stop()
        self._watchers.clear()
        self._successors.clear()
        self._outdated.clear()
        return succeed(None)

    def lookup(self, dc: str, service: str) -> Deferred[Snapshot]:
        key = (dc, service)
        watcher = self._watchers.get(key)
        now = self._clock.seconds()
        if watcher is None:
            if self._unknown_dcs.get(dc, 0.0) > now:
                return fail(UnknownDatacenter(dc))
            self._watchers[key] = watcher = self._watch(dc, service)
            log.info("watching {dc}/{service}", dc=dc, service=service)
        elif watcher in self._outdated and watcher.snapshot is not None:
            # Without a snapshot yet, requests wait for the outdated watcher's
            # first answer as they would have before the reload.
            watcher = self._renew(key, watcher, now)
        watcher.last_used = now
        snapshot = watcher.snapshot
        if snapshot is not None:
            if self._too_stale(watcher, now):
                return fail(DiscoveryUnavailable(
                    f"Consul unreachable and the view of {dc}/{service} is older than max-stale"
                ))
            return succeed(snapshot)
        return watcher.first_snapshot(self._discovery_timeout)

    def _too_stale(self, watcher: Watcher, now: float) -> bool:
        # Stale only counts while Consul is failing: a quiet service whose
        # blocking query simply has not returned is fresh.
        return (
            self.max_stale is not None
            and watcher.errors > 0
            and watcher.last_success is not None
            and now - watcher.last_success > self.max_stale
        )

    def _watch(self, dc: str, service: str) -> Watcher:
        watcher = Watcher(
            dc, service, self._source, self._clock, self._tags, self._wait,
            self._rng, on_unknown_datacenter=self._unknown_datacenter,
            datacenter_grace=self.datacenter_grace,
        )
        watcher.start()
        return watcher

    def _renew(self, key: Tuple[str, str], outdated: Watcher, now: float) -> Watcher:
        """
        The watcher to serve C{key} from: the outdated one until its
        successor (started here if need be) has a first answer, then the
        successor for good.
        """
        successor = self._successors.get(key)
        if successor is None:
            if self._unknown_dcs.get(key[0], 0.0) > now:
                return outdated
            self._successors[key] = successor = self._watch(*key)
        if successor.snapshot is None:
            return outdated
        del self._successors[key]
        self._outdated.discard(outdated)
        self._watchers[key] = successor
        outdated.stop()
        log.info(
            "{dc}/{service}: now watched with tags {tags}", dc=key[0], service=key[1], tags=list(self._tags)
        )
        return successor

    def _unknown_datacenter(self, watcher: Watcher) -> None:
        log.info("Consul has no path to datacenter {dc}", dc=watcher.dc)
        self._unknown_dcs[watcher.dc] = self._clock.seconds() + UNKNOWN_DC_TTL
        self._forget(watcher)

    def _forget(self, watcher: Watcher) -> None:
        key = (watcher.dc, watcher.service)
        if self._watchers.get(key) is watcher:
            del self._watchers[key]
            # A pair nobody watches needs no successor either.
            successor = self._successors.pop(key, None)
            if successor is not None:
                successor.stop()
        elif self._successors.get(key) is watcher:
            del self._successors[key]
        self._outdated.discard(watcher)
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
