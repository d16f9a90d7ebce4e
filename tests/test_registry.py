"""
Tests for L{restygate.discovery.consul.source.ConsulDiscovery}: watchers started on demand,
shared, expired when idle, and unknown datacenters remembered briefly.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from restygate.discovery.consul.client import ConsulError
from restygate.discovery.model import DiscoveryUnavailable, IDiscovery, Instance, UnknownDatacenter
from restygate.discovery.consul.source import UNKNOWN_DC_TTL, ConsulDiscovery
from tests.support.scripted import ScriptedSource

A = Instance("10.0.0.1", 8000, id="a")
B = Instance("10.0.0.2", 8000, id="b")


class ConsulDiscoveryTests(SynchronousTestCase):
    IDLE = 100.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.source = ScriptedSource()
        self.discovery = ConsulDiscovery(
            self.source,
            self.clock,
            tags=("prod",),
            wait=30.0,
            discovery_timeout=5.0,
            idle_timeout=self.IDLE,
            rng=random.Random(3),
        )
        self.discovery.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.discovery.running:
            self.successResultOf(self.discovery.stopService())

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IDiscovery, self.discovery))

    def test_nothing_watched_before_a_lookup(self) -> None:
        self.assertEqual(self.source.queries, [])
        self.assertEqual(self.discovery.watchers, {})

    def test_first_lookup_starts_watcher(self) -> None:
        d = self.discovery.lookup("dc1", "web")
        self.assertEqual(list(self.discovery.watchers), [("dc1", "web")])
        query = self.source.last
        self.assertEqual(
            (query.dc, query.service, query.tags, query.index, query.urgent),
            ("dc1", "web", ("prod",), 0, True),
        )
        # Each watch's wait is jittered down by up to 1/16, so watches never move in lock-step.
        self.assertTrue(30.0 * 15 / 16 <= query.wait <= 30.0, query.wait)
        self.assertNoResult(d)
        query.answer(4, A, B)
        snapshot = self.successResultOf(d)
        self.assertEqual((snapshot.dc, snapshot.service, snapshot.instances), ("dc1", "web", (A, B)))

    def test_concurrent_lookups_share(self) -> None:
        first = self.discovery.lookup("dc1", "web")
        second = self.discovery.lookup("dc1", "web")
        self.assertEqual(len(self.source.queries), 1)
        self.source.last.answer(4, A)
        self.assertIs(self.successResultOf(first), self.successResultOf(second))

    def test_later_lookup_answered_at_once(self) -> None:
        d = self.discovery.lookup("dc1", "web")
        self.source.last.answer(4, A)
        snapshot = self.successResultOf(d)
        self.clock.advance(1)
        self.assertIs(self.successResultOf(self.discovery.lookup("dc1", "web")), snapshot)
        # The watcher's own next query, not one per lookup.
        self.assertEqual(len(self.source.queries), 2)

    def test_one_watcher_per_pair(self) -> None:
        lookups = [
            self.discovery.lookup("dc1", "web"),
            self.discovery.lookup("dc1", "api"),
            self.discovery.lookup("dc2", "web"),
        ]
        self.assertEqual(
            sorted(self.discovery.watchers), [("dc1", "api"), ("dc1", "web"), ("dc2", "web")]
        )
        self.assertEqual(
            sorted((q.dc, q.service) for q in self.source.queries),
            [("dc1", "api"), ("dc1", "web"), ("dc2", "web")],
        )
        for query, d in zip(self.source.queries, lookups):
            query.answer(1, Instance(query.dc, 80))
            self.assertEqual(self.successResultOf(d).instances, (Instance(query.dc, 80),))

    def test_discovery_timeout(self) -> None:
        d = self.discovery.lookup("dc1", "web")
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, DiscoveryUnavailable)

    def test_consul_error_before_snapshot(self) -> None:
        d = self.discovery.lookup("dc1", "web")
        self.source.last.fail(ConsulError("Consul answered 500: No cluster leader", 500))
        self.failureResultOf(d, DiscoveryUnavailable)
        # The watcher stays, retrying.
        self.assertIn(("dc1", "web"), self.discovery.watchers)

    def test_idle_watcher_stopped(self) -> None:
        """
        A watcher unused for the idle timeout is stopped by the sweep, its
        query cancelled; a later lookup starts a fresh one.
        """
        d = self.discovery.lookup("dc1", "web")
        self.source.last.answer(4, A)
        self.successResultOf(d)
        self.clock.advance(0)
        old_watcher = self.discovery.watchers[("dc1", "web")]
        blocking = self.source.last
        self.assertEqual(blocking.index, 4)
        self.clock.pump([self.IDLE / 4] * 3)
        self.assertIn(("dc1", "web"), self.discovery.watchers)
        self.clock.advance(self.IDLE / 4)
        self.assertEqual(self.discovery.watchers, {})
        self.assertTrue(blocking.cancelled)
        # Only the sweep itself is left on the clock.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

        again = self.discovery.lookup("dc1", "web")
        self.assertNoResult(again)
        fresh = self.discovery.watchers[("dc1", "web")]
        self.assertIsNot(fresh, old_watcher)
        self.assertEqual(self.source.last.index, 0)
        self.source.last.answer(9, B)
        self.assertEqual(self.successResultOf(again).instances, (B,))

    def test_used_watcher_kept(self) -> None:
        d = self.discovery.lookup("dc1", "web")
        self.source.last.answer(4, A)
        self.successResultOf(d)
        self.clock.advance(self.IDLE * 0.75)
        self.discovery.lookup("dc1", "web")
        self.clock.advance(self.IDLE * 0.75)
        self.assertIn(("dc1", "web"), self.discovery.watchers)
        self.clock.advance(self.IDLE * 0.5)
        self.assertEqual(self.discovery.watchers, {})

    def test_sweep_only_idle(self) -> None:
        old = self.discovery.lookup("dc1", "old")
        self.clock.advance(self.IDLE / 2)
        new = self.discovery.lookup("dc1", "new")
        self.clock.advance(self.IDLE / 2)
        self.assertEqual(list(self.discovery.watchers), [("dc1", "new")])
        self.failureResultOf(old, DiscoveryUnavailable)
        self.failureResultOf(new, DiscoveryUnavailable)

    def test_unknown_datacenter(self) -> None:
        """
        An unknown datacenter fails the lookup with L{UnknownDatacenter} and is
        believed for L{UNKNOWN_DC_TTL} seconds without asking Consul again.
        """
        d = self.discovery.lookup("nowhere", "web")
        self.source.last.fail(UnknownDatacenter("nowhere"))
        self.assertEqual(self.failureResultOf(d, UnknownDatacenter).value.dc, "nowhere")
        self.assertEqual(self.discovery.watchers, {})

        self.clock.advance(UNKNOWN_DC_TTL - 0.1)
        for service in ("web", "api"):
            self.failureResultOf(self.discovery.lookup("nowhere", service), UnknownDatacenter)
        self.assertEqual(len(self.source.queries), 1)
        self.assertEqual(self.discovery.watchers, {})

        self.clock.advance(0.1)
        d = self.discovery.lookup("nowhere", "web")
        self.assertEqual(len(self.source.queries), 2)
        self.source.last.answer(1, A)
        self.assertEqual(self.successResultOf(d).instances, (A,))

    def test_unknown_datacenter_leaves_others(self) -> None:
        known = self.discovery.lookup("dc1", "web")
        unknown = self.discovery.lookup("nowhere", "web")
        self.source.last.fail(UnknownDatacenter("nowhere"))
        self.failureResultOf(unknown, UnknownDatacenter)
        self.assertEqual(list(self.discovery.watchers), [("dc1", "web")])
        self.assertEqual(len(self.source.pending()), 1)
        self.source.queries[0].answer(1, A)
        self.successResultOf(known)

    def test_concurrent_lookups_unknown_datacenter(self) -> None:
        first = self.discovery.lookup("nowhere", "web")
        second = self.discovery.lookup("nowhere", "web")
        self.source.last.fail(UnknownDatacenter("nowhere"))
        self.failureResultOf(first, UnknownDatacenter)
        self.failureResultOf(second, UnknownDatacenter)

    def test_stop_service(self) -> None:
        """
        Stopping the service stops every watcher and the sweep: nothing is
        left in flight or on the clock.
        """
        waiting = self.discovery.lookup("dc1", "web")
        d = self.discovery.lookup("dc1", "api")
        self.source.queries[1].answer(4, A)
        self.successResultOf(d)
        self.clock.advance(0)
        self.successResultOf(self.discovery.stopService())
        self.assertEqual(self.discovery.watchers, {})
        self.assertTrue(all(q.cancelled or q.deferred.called for q in self.source.queries))
        self.assertEqual(self.source.pending(), [])
        self.failureResultOf(waiting, DiscoveryUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertEqual(len(self.source.queries), 3)

    def test_start_stop_without_lookups(self) -> None:
        self.successResultOf(self.discovery.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.discovery.running)
