"""
Consul-backed discovery: one L{Watcher} per (datacenter, service) that
somebody asked for and Consul knows, started on the first request and
stopped once nobody has asked for it in a while.

Only names Consul knows are watched (L{ConsulNames}): a request for a made-up
datacenter or service fails at once and starts nothing.  Names are matched
case-insensitively, so C{/dc1/web} and C{/dc1/WEB} share one watch in
Consul's spelling.  At most C{max-watched-services} watches exist; past
that the least recently used one is dropped (and started again when asked
for).  Connections to the agent are bounded (L{ConsulGate}): up to
C{dedicated} watches, the busiest (L{Ranking}), hold a blocking query each,
every other one is kept fresh by its datacenter's L{ChangeFeed} and one-off
fetches.

When a reload changes what a watch asks Consul (its service's tags, the
wait), each such watched pair gets a successor watcher on its next request,
and the old one keeps serving until the successor's first answer: no request
fails or waits because of a reload, and pairs nobody asks for are not
re-queried at all.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from restygate.config import Config
from restygate.config.services import Overrides, service_tags
from restygate.discovery.consul import shown
from restygate.discovery.consul.feed import ChangeFeed
from restygate.discovery.consul.gate import ConsulGate
from restygate.discovery.consul.names import ConsulNames
from restygate.discovery.consul.outage import Outage
from restygate.discovery.consul.ranking import Ranking
from restygate.discovery.consul.watch import HealthSource, Watcher, instance_changes
from restygate.discovery.model import DiscoveryUnavailable, IDiscovery, Snapshot, UnknownDatacenter
from restygate.ops.views import ConsulLoad, IConsulLoadView, IDiscoveryView, Watched
from restygate.pacing import LogBudget, carry_on

__all__ = ["ConsulDiscovery"]

log = Logger()

# How long "no path to this datacenter" is believed: short, so one that joins is served promptly.
UNKNOWN_DC_TTL = 5.0
# Watches dropped past max-watched-services are logged at most this often.
EVICTION_LOG_INTERVAL = 60.0

_Key = Tuple[str, str]


@implementer(IDiscovery, IDiscoveryView, IConsulLoadView)
class ConsulDiscovery(Service):
    """
    L{IDiscovery} over a Consul agent.

    @param names: the names Consul knows; without it every name is watched.
    @param feed: makes the change feed of a datacenter (given its name and
        the watches it keeps fresh); without it every watch blocks on its own.
    @param dedicated: watches with a blocking query of their own at most, when there is a feed.
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
        names: Optional[ConsulNames] = None,
        feed: Optional[Callable[[str, Callable[[], List[Watcher]]], ChangeFeed]] = None,
        dedicated: int = 0,
        max_watched: int = 10000,
        outage: Optional[Outage] = None,
        gate: Optional[ConsulGate] = None,
        last_contact: Optional[Mapping[str, float]] = None,
        table: Mapping[str, Overrides] = {},
    ) -> None:
        self._gate = gate
        # Told of every snapshot replaced (the snapshot) and every pair no
        # longer watched (None): the daemon's channel to its workers.
        self.listeners: List[Callable[[str, str, Optional[Snapshot]], None]] = []
        self._last_contact = last_contact if last_contact is not None else {}
        self.max_stale = max_stale
        self.datacenter_grace = datacenter_grace
        self.max_watched = max_watched
        self.dedicated = dedicated
        self.outage = outage or Outage(clock)
        self._changes = instance_changes(clock)
        self._stopped = LogBudget(clock, log, "... and {count} more watches unused were stopped in {seconds:g}s")
        self.names = names
        self._make_feed = feed
        self.feeds: Dict[str, ChangeFeed] = {}
        self._source = source
        self._clock = clock
        self._tags = tags
        # Per-service settings: a service's own tags.
        self._table = dict(table)
        self._wait = wait
        self._discovery_timeout = discovery_timeout
        self._idle_timeout = idle_timeout
        self._rng = rng or random.Random()
        # Least recently used first.
        self._watchers: "OrderedDict[_Key, Watcher]" = OrderedDict()
        # Watchers asking Consul with settings from before a reload, and the
        # watchers started to replace them, not answered yet.
        self._outdated: Set[Watcher] = set()
        self._successors: Dict[_Key, Watcher] = {}
        self._unknown_dcs: Dict[str, float] = {}
        # The dedicated budget was found used up: counted again only once a watch goes.
        self._used_up, self.evicted = False, 0
        self._evicted_unlogged = 0
        self._evictions_logged = -EVICTION_LOG_INTERVAL
        self._sweeper = LoopingCall(carry_on(self.sweep, "sweeping idle watchers failed"))
        self._sweeper.clock = clock
        self.ranking = Ranking(clock, dedicated, self._watchers.values, self._feed_for, gate) if feed else None

    @property
    def watchers(self) -> Dict[_Key, Watcher]:
        return {(w.dc, w.service): w for w in self._watchers.values()}

    def fed(self, dc: str) -> List[Watcher]:
        """The watches of C{dc} kept fresh by its change feed."""
        key = dc.lower()
        return [w for k, w in self._watchers.items() if k[0] == key and not w.blocking]

    def watched(self) -> List[Watched]:
        return shown.watched(self._watchers.values())

    def has_instances(self, dc: str, service: str) -> bool:
        # Only Consul's spelling: a series per case variant would be unbounded.
        watcher = self._watchers.get((dc.lower(), service.lower()))
        if watcher is None or (watcher.dc, watcher.service) != (dc, service):
            return False
        return watcher.snapshot is not None and bool(watcher.snapshot.instances)

    def consul_load(self) -> ConsulLoad:
        return shown.load(self._gate, self._watchers.values(), self.max_watched, self.evicted, self.names,
                          self.feeds, self._last_contact, self.outage)

    def answered(self) -> bool:
        return any(w.last_success is not None for w in self._watchers.values())

    def startService(self) -> None:
        super().startService()
        if self.names is not None:
            self.names.startService()
        self._sweeper.start(self._sweep_interval(), now=False)
        if self.ranking is not None:
            self.ranking.start()

    def _sweep_interval(self) -> float:
        return min(60.0, self._idle_timeout / 4)

    def reconfigure(self, config: Config) -> None:
        """
        Take C{config}'s tags (global and per service), wait, timeouts and
        caps.  Watchers whose query changes are replaced lazily (see
        L{lookup}), and keep serving meanwhile.
        """
        self._discovery_timeout = config.discovery_timeout
        self.max_stale = config.max_stale
        self.datacenter_grace = config.datacenter_grace
        self.max_watched = config.max_watched_services
        for watcher in self._watchers.values():
            watcher.datacenter_grace = config.datacenter_grace
        if config.watch_idle_timeout != self._idle_timeout:
            self._idle_timeout = config.watch_idle_timeout
            if self._sweeper.running:
                self._sweeper.stop()
                self._sweeper.start(self._sweep_interval(), now=False)
        before = (self._tags, self._wait, self._table)
        self._tags, self._wait, self._table = config.tags, config.consul_wait, dict(config.services)
        if (self._tags, self._wait, self._table) != before:
            # Successors started with the settings now replaced are no use.
            for successor in self._successors.values():
                successor.stop()
            self._successors.clear()
            self._outdated = {
                w for w in self._watchers.values()
                if w.tags != self._tags_of(w.dc, w.service) or self._wait != before[1]
            }
        self._evict()

    def _tags_of(self, dc: str, service: str) -> Tuple[str, ...]:
        return service_tags(self._tags, self._table, dc, service)
    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._sweeper.running:
            self._sweeper.stop()
        if self.ranking is not None:
            self.ranking.stop()
        for watcher in [*self._watchers.values(), *self._successors.values()]:
            watcher.stop()
        for feed in self.feeds.values():
            feed.stop()
        self.feeds.clear()
        for budget in (self._changes, self._stopped, self.outage.resets):
            budget.stop()
        if self.names is not None and self.names.running:
            self.names.stopService()
        self._watchers.clear()
        self._successors.clear()
        self._outdated.clear()
        return succeed(None)

    def current(self, dc: str, service: str) -> Optional[Snapshot]:
        key, now = (dc.lower(), service.lower()), self._clock.seconds()
        watcher = self._watchers.get(key)
        if watcher is None or watcher.snapshot is None or watcher in self._outdated or watcher.too_stale(
                self.max_stale, now):
            return None
        self._watchers.move_to_end(key)
        watcher.last_used, watcher.hits = now, watcher.hits + 1
        return watcher.snapshot

    def lookup(self, dc: str, service: str) -> Deferred[Snapshot]:
        key = (dc.lower(), service.lower())
        watcher = self._watchers.get(key)
        if watcher is not None:
            self._watchers.move_to_end(key)
            return self._serve(key, watcher)
        if self.names is None:
            if self._unknown_dcs.get(dc, 0.0) > self._clock.seconds():
                return fail(UnknownDatacenter(dc))
            return self._serve_new(dc, service)
        resolved = self.names.resolve(dc, service, self._discovery_timeout)
        return resolved.addCallback(lambda names: self._serve_new(*names))

    def _serve_new(self, dc: str, service: str) -> Deferred[Snapshot]:
        key = (dc.lower(), service.lower())
        watcher = self._watchers.get(key)
        if watcher is None:
            # No log line: at a start under traffic every request starts a
            # watch, and twistd writes debug events too (a line each cost the
            # daemon an eighth of its time; /status and /metrics list watches).
            self._watchers[key] = watcher = self._watch(dc, service)
            self._evict()
        return self._serve(key, watcher)

    def _serve(self, key: _Key, watcher: Watcher) -> Deferred[Snapshot]:
        now = self._clock.seconds()
        if watcher in self._outdated and watcher.snapshot is not None:
            # Without a snapshot yet, requests wait for the outdated watcher's
            # first answer as they would have before the reload.
            watcher = self._renew(key, watcher, now)
        watcher.last_used = now
        watcher.hits += 1
        snapshot = watcher.snapshot
        if snapshot is not None:
            if watcher.too_stale(self.max_stale, now):
                return fail(DiscoveryUnavailable(
                    f"Consul unreachable and the view of {watcher.dc}/{watcher.service} is older than max-stale"
                ))
            return succeed(snapshot)
        return watcher.first_snapshot(self._discovery_timeout)

    def _watch(self, dc: str, service: str) -> Watcher:
        blocking = self._make_feed is None or (
            not self._used_up and sum(1 for w in self._watchers.values() if w.blocking) < self.dedicated)
        self._used_up = not blocking
        # Each watch's wait a little different: watches started together
        # never come back together.
        wait = self._wait * (1 - self._rng.random() / 16)
        watcher = Watcher(
            dc, service, self._source, self._clock, self._tags_of(dc, service), wait,
            self._rng, on_unknown_datacenter=self._unknown_datacenter,
            datacenter_grace=self.datacenter_grace, blocking=blocking, outage=self.outage,
            on_change=self._changed, changes=self._changes,
        )
        watcher.start()
        if not blocking:
            self._feed_for(watcher)
        return watcher

    def _feed_for(self, watcher: Watcher) -> None:  # its datacenter's feed runs from now on
        if self._make_feed is not None and watcher.dc.lower() not in self.feeds:
            dc = watcher.dc
            self.feeds[dc.lower()] = feed = self._make_feed(dc, lambda: self.fed(dc))
            feed.start()

    def requested(self, dc: str, service: str, hits: int) -> bool:
        """
        A worker served C{hits} requests of a pair from its view: whether it
        is watched (if so, the watch counts them, and stays).
        """
        key = (dc.lower(), service.lower())
        watcher = self._watchers.get(key)
        if watcher is None:
            return False
        self._watchers.move_to_end(key)
        watcher.last_used, watcher.hits = self._clock.seconds(), watcher.hits + hits
        return True

    def _changed(self, watcher: Watcher) -> None:
        key = (watcher.dc.lower(), watcher.service.lower())
        # A successor not serving yet changes nothing anyone sees.
        if self._watchers.get(key) is watcher and watcher.snapshot is not None:
            self._tell(watcher.dc, watcher.service, watcher.snapshot)

    def _tell(self, dc: str, service: str, snapshot: Optional[Snapshot]) -> None:
        for listener in self.listeners:
            listener(dc, service, snapshot)

    def _renew(self, key: _Key, outdated: Watcher, now: float) -> Watcher:
        """
        The watcher to serve C{key} from: the outdated one until its
        successor (started here if need be) has a first answer, then the
        successor for good.
        """
        successor = self._successors.get(key)
        if successor is None:
            if self._unknown_dcs.get(outdated.dc, 0.0) > now:
                return outdated
            self._successors[key] = successor = self._watch(outdated.dc, outdated.service)
        if successor.snapshot is None:
            return outdated
        del self._successors[key]
        self._outdated.discard(outdated)
        self._watchers[key] = successor
        self._used_up = False
        outdated.stop()
        self._tell(successor.dc, successor.service, successor.snapshot)
        log.info(
            "{dc}/{service}: now watched with tags {tags}", dc=outdated.dc, service=outdated.service,
            tags=list(successor.tags),
        )
        return successor

    def _unknown_datacenter(self, watcher: Watcher) -> None:
        log.info("Consul has no path to datacenter {dc}", dc=watcher.dc)
        self._unknown_dcs[watcher.dc] = self._clock.seconds() + UNKNOWN_DC_TTL
        self._forget(watcher)

    def _forget(self, watcher: Watcher) -> None:
        key = (watcher.dc.lower(), watcher.service.lower())
        if self._watchers.get(key) is watcher:
            del self._watchers[key]
            self._used_up = False
            self._tell(watcher.dc, watcher.service, None)
            # A pair nobody watches needs no successor either.
            successor = self._successors.pop(key, None)
            if successor is not None:
                successor.stop()
        elif self._successors.get(key) is watcher:
            del self._successors[key]
        self._outdated.discard(watcher)
        watcher.stop()
        feed = self.feeds.get(key[0])
        if feed is not None and not self.fed(key[0]):
            feed.stop()
            del self.feeds[key[0]]

    def _evict(self) -> None:
        while len(self._watchers) > self.max_watched:
            _, oldest = next(iter(self._watchers.items()))
            self._forget(oldest)
            self.evicted += 1
            self._evicted_unlogged += 1
        now = self._clock.seconds()
        if self._evicted_unlogged and now - self._evictions_logged >= EVICTION_LOG_INTERVAL:
            log.warn(
                "max-watched-services ({cap}) reached: dropped {count} least recently used watches "
                "since the last report ({total} in all); they are watched again when asked for",
                cap=self.max_watched, count=self._evicted_unlogged, total=self.evicted,
            )
            self._evicted_unlogged = 0
            self._evictions_logged = now

    def sweep(self) -> None:
        """
        Stop watchers nobody used for the idle timeout; drop old negative
        datacenter entries; report evictions not reported yet.
        """
        now = self._clock.seconds()
        for watcher in list(self._watchers.values()):
            if now - watcher.last_used >= self._idle_timeout:
                self._stopped(
                    "stopped watching {dc}/{service}: unused for {idle:.0f}s",
                    dc=watcher.dc, service=watcher.service, idle=now - watcher.last_used,
                )
                self._forget(watcher)
        for dc, until in list(self._unknown_dcs.items()):
            if until <= now:
                del self._unknown_dcs[dc]
        self._evict()

