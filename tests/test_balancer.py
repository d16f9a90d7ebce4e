"""
Tests for L{restygate.upstream.balancer}: round-robin over a snapshot, per
(datacenter, service), surviving snapshot replacement.
"""

from __future__ import annotations

from typing import List

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from restygate.upstream.balancer import IBalancer, RoundRobin
from restygate.discovery.model import Instance, Snapshot

A = Instance("10.0.0.1", 80, id="a")
B = Instance("10.0.0.2", 80, id="b")
C = Instance("::1", 80, id="c")


class RoundRobinTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.balancer = RoundRobin()

    def picks(self, snapshot: Snapshot, count: int) -> List[Instance]:
        return [self.balancer.pick(snapshot) for _ in range(count)]

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IBalancer, self.balancer))

    def test_order(self) -> None:
        snapshot = Snapshot("dc1", "web", (A, B, C))
        self.assertEqual(self.picks(snapshot, 7), [A, B, C, A, B, C, A])

    def test_single_instance(self) -> None:
        snapshot = Snapshot("dc1", "web", (A,))
        self.assertEqual(self.picks(snapshot, 3), [A, A, A])

    def test_independent_keys(self) -> None:
        """
        Each (datacenter, service) has its own turn.
        """
        web = Snapshot("dc1", "web", (A, B, C))
        api = Snapshot("dc1", "api", (A, B, C))
        web2 = Snapshot("dc2", "web", (A, B, C))
        self.assertEqual(self.picks(web, 2), [A, B])
        self.assertEqual(self.picks(api, 1), [A])
        self.assertEqual(self.picks(web2, 1), [A])
        self.assertEqual(self.picks(web, 1), [C])
        self.assertEqual(self.picks(api, 1), [B])

    def test_rotation_survives_new_snapshot(self) -> None:
        """
        A new snapshot for the same service (Consul answered again) does not
        send the next request back to the first instance.
        """
        self.assertEqual(self.picks(Snapshot("dc1", "web", (A, B, C), 1), 2), [A, B])
        self.assertEqual(self.picks(Snapshot("dc1", "web", (A, B, C), 2), 2), [C, A])

    def test_changed_membership(self) -> None:
        """
        After the instance list changes the rotation goes on over the new
        list, picking only its members.
        """
        self.picks(Snapshot("dc1", "web", (A, B, C)), 2)
        shrunk = Snapshot("dc1", "web", (A, C))
        self.assertEqual(self.picks(shrunk, 4), [A, C, A, C])

    def test_even_spread(self) -> None:
        snapshot = Snapshot("dc1", "web", (A, B, C))
        picks = self.picks(snapshot, 300)
        self.assertEqual([picks.count(i) for i in (A, B, C)], [100, 100, 100])

    def test_snapshot_untouched(self) -> None:
        snapshot = Snapshot("dc1", "web", (A, B))
        self.picks(snapshot, 3)
        self.assertEqual(snapshot, Snapshot("dc1", "web", (A, B)))
