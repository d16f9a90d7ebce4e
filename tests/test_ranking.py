"""
Tests for L{restygate.discovery.consul.ranking}: the dedicated blocking
queries go to the busiest watches, re-ranked on a L{Clock} with hysteresis,
and a demoted watch is handed to its feed without a gap; then once over
real sockets, a gateway in front of the Consul test server.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from restygate.discovery.consul.outage import Outage
from restygate.discovery.consul.ranking import MARGIN, RANK_INTERVAL, Ranking
from restygate.discovery.consul.watch import Watcher
from restygate.discovery.model import Instance
from tests.support.harness import GatewayRig, eventually
from tests.support.scripted import Query, ScriptedSource

A = Instance("10.0.0.1", 80, id="a")
B = Instance("10.0.0.2", 80, id="b")


class RankingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.source = ScriptedSource()
        self.outage = Outage(self.clock)
        self.watches: Dict[str, Watcher] = {}
        self.handed: List[str] = []
        self.ranking = Ranking(self.clock, 2, lambda: self.watches.values(),
                               lambda w: self.handed.append(w.service))
        self.ranking.start()
        self.addCleanup(self.ranking.stop)

    def watch(self, service: str, blocking: bool) -> Watcher:
        watcher = Watcher("dc1", service, self.source, self.clock, wait=30.0, blocking=blocking,
                          outage=self.outage, rng=random.Random(len(self.watches)))
        self.addCleanup(watcher.stop)
        self.watches[service] = watcher
        watcher.start()
        self.last(service).answer(10, A)
        self.clock.advance(0)
        return watcher

    def last(self, service: str) -> Query:
        return [q for q in self.source.queries if q.service == service][-1]

    def rank_with(self, **hits: int) -> None:
        for service, count in hits.items():
            self.watches[service].hits += count
        self.clock.advance(RANK_INTERVAL)

    def test_the_busiest_take_the_dedicated_places_without_a_gap(self) -> None:
        quiet, busy_dedicated, busy = self.watch("quiet", True), self.watch("hot", True), self.watch("busy", False)
        held = self.last("quiet")
        self.assertEqual((held.index, held.deferred.called), (10, False))
        self.rank_with(busy=30, hot=40)
        self.assertEqual([w.blocking for w in (quiet, busy_dedicated, busy)], [False, True, True])
        # The quiet one's feed was made sure of, its held query dropped and
        # one fetch asked afresh (index 0): a change before the hand-over is seen.
        self.assertEqual(self.handed, ["quiet"])
        self.assertTrue(held.cancelled)
        fetch = self.last("quiet")
        self.assertEqual(fetch.index, 0)
        fetch.answer(11, A, B)
        self.clock.advance(60)
        self.assertEqual(quiet.snapshot.instances if quiet.snapshot else None, (A, B))
        # No query of its own follows; the drop was no failure.
        self.assertEqual(self.source.pending().count(self.last("quiet")), 0)
        self.assertEqual((quiet.errors, self.outage.failing), (0, set()))
        # The busy one holds a blocking query from its last index.
        self.assertEqual((self.last("busy").index, self.last("busy").deferred.called), (10, False))

    def test_no_churn_between_services_about_as_busy(self) -> None:
        first, second, third = self.watch("one", True), self.watch("two", True), self.watch("three", False)
        for _ in range(20):
            # The fed one is a little busier than a dedicated one, never MARGIN times.
            self.rank_with(one=10, two=10, three=int(10 * MARGIN) - 1)
        self.assertEqual([w.blocking for w in (first, second, third)], [True, True, False])
        self.assertEqual(self.ranking.moves, 0)

    def test_a_free_place_goes_to_a_fed_watch_asked_for(self) -> None:
        dedicated, idle, asked = self.watch("one", True), self.watch("idle", False), self.watch("asked", False)
        self.rank_with(asked=1)
        self.assertEqual([w.blocking for w in (dedicated, idle, asked)], [True, False, True])
        self.assertEqual(self.last("asked").index, 10)
        # Rates decay: a service nobody asks for any more loses its place to one asked for.
        for _ in range(30):
            self.rank_with(idle=5)
        self.assertEqual([w.blocking for w in (dedicated, idle, asked)], [False, True, True])


class RankingOverSocketsTests(TestCase):
    async def test_a_busy_service_gets_a_watch_of_its_own(self) -> None:
        """
        With room for one dedicated watch (consul-max-connections 4), the
        service asked for most holds it after a ranking; the one it
        replaced is still kept fresh by its datacenter's change feed.
        """
        rig = GatewayRig(self, consul_max_connections=4)
        backend = rig.backend()
        for service in ("first", "busy"):
            rig.register(backend, service=service)
        for path in ["/dc1/first/", "/dc1/busy/"]:
            self.assertEqual((await rig.get(path))[0].code, 200, path)
        discovery: Any = rig.gateway.engine.discovery
        self.assertEqual([w.blocking for w in (rig.watcher("dc1", "first"), rig.watcher("dc1", "busy"))],
                         [True, False])
        for _ in range(10):
            self.assertEqual((await rig.get("/dc1/busy/"))[0].code, 200)
        discovery.ranking.rank()
        first, busy = rig.watcher("dc1", "first"), rig.watcher("dc1", "busy")
        self.assertEqual([first.blocking, busy.blocking], [False, True])
        # The busy one blocks on Consul from its index.
        await eventually(lambda: any(int(dict(q.args).get("index", "0")) > 0
                                     for q in rig.consul.requests_for("/v1/health/service/busy")))
        # The demoted one follows a health change through the feed.
        rig.consul.set_check_status("dc1", "first-backend", "critical")
        await eventually(lambda: first.snapshot is not None and not first.snapshot.instances, timeout=10.0)
