"""
Tests for L{restygate.upstream.balancer}, L{restygate.upstream.pickers} and
L{restygate.upstream.choice}: each strategy's order and shares by weight,
per (datacenter, service), with ejected or tried instances left out, and the
consistent-hash ring's stability.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from restygate.config.values import BALANCERS
from restygate.discovery.model import Instance
from restygate.upstream.balancer import Balancer, IBalancer
from restygate.upstream.choice import Choice
from restygate.upstream.pickers import PICKERS

A = Instance("10.0.0.1", 80, id="a")
B = Instance("10.0.0.2", 80, id="b")
C = Instance("::1", 80, id="c")


def choice(*weighted: Tuple[Instance, int]) -> Choice:
    return Choice(tuple(i for i, _ in weighted), tuple(w for _, w in weighted))


class Picks(SynchronousTestCase):
    def setUp(self) -> None:
        self.inflight: Dict[Instance, int] = {}
        self.balancer = Balancer(lambda dc, service, i: self.inflight.get(i, 0), random.Random(7))

    def picks(
        self, strategy: str, options: Choice, count: int,
        among: Optional[Tuple[Instance, ...]] = None, service: str = "web", key: Optional[bytes] = None,
    ) -> List[Instance]:
        return [
            self.balancer.pick(
                strategy, "dc1", service, options, options.instances if among is None else among, key
            )
            for _ in range(count)
        ]


class RoundRobinTests(Picks):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IBalancer, self.balancer))

    def test_table_matches_config(self) -> None:
        """
        The C{balancer} values the config accepts are exactly the pickers.
        """
        self.assertEqual(sorted(PICKERS), sorted(BALANCERS))

    def test_order(self) -> None:
        self.assertEqual(self.picks("round-robin", choice((A, 1), (B, 1), (C, 1)), 7), [A, B, C, A, B, C, A])

    def test_independent_services(self) -> None:
        options = choice((A, 1), (B, 1), (C, 1))
        self.assertEqual(self.picks("round-robin", options, 2), [A, B])
        self.assertEqual(self.picks("round-robin", options, 1, service="api"), [A])
        self.assertEqual(self.picks("round-robin", options, 1), [C])

    def test_rotation_survives_new_choice(self) -> None:
        """
        A new snapshot (a new choice) does not send the next request back
        to the first instance.
        """
        self.assertEqual(self.picks("round-robin", choice((A, 1), (B, 1), (C, 1)), 2), [A, B])
        self.assertEqual(self.picks("round-robin", choice((A, 1), (B, 1), (C, 1)), 2), [C, A])

    def test_weights_interleaved(self) -> None:
        """
        Weights 1:3 give exactly 1:3 per cycle of four, never four in a row
        to one instance.
        """
        picks = self.picks("round-robin", choice((A, 1), (B, 3)), 400)
        self.assertEqual(Counter(picks), {A: 100, B: 300})
        runs = "".join("a" if p is A else "b" for p in picks)
        self.assertNotIn("bbbb", runs)

    def test_subset(self) -> None:
        """
        Only instances of C{among} are picked, still by their weights.
        """
        options = choice((A, 1), (B, 2), (C, 6))
        picks = self.picks("round-robin", options, 300, among=(A, B))
        self.assertEqual(Counter(picks), {A: 100, B: 200})


class RandomTests(Picks):
    def test_weights(self) -> None:
        picks = Counter(self.picks("random", choice((A, 1), (B, 3)), 4000))
        self.assertLessEqual(abs(picks[B] / 4000 - 0.75), 0.03)

    def test_subset(self) -> None:
        picks = set(self.picks("random", choice((A, 1), (B, 1), (C, 1)), 100, among=(A, C)))
        self.assertEqual(picks, {A, C})


class LeastRequestTests(Picks):
    def test_fewer_in_flight_wins(self) -> None:
        """
        Of the two candidates the one with fewer requests in flight gets the
        request: an instance with many in flight is picked only when both
        candidates drawn are it, which two distinct draws never are.
        """
        self.inflight = {A: 5, B: 0, C: 0}
        picks = Counter(self.picks("least-request", choice((A, 1), (B, 1), (C, 1)), 300))
        self.assertEqual(picks[A], 0)
        self.assertGreater(picks[B], 100)
        self.assertGreater(picks[C], 100)

    def test_weights_when_idle(self) -> None:
        picks = Counter(self.picks("least-request", choice((A, 1), (B, 3)), 4000))
        self.assertGreater(picks[B], picks[A] * 2)

    def test_weight_against_load(self) -> None:
        """
        Weight / (in flight + 1): a weight-4 instance with one in flight
        (2) still beats a weight-1 idle one (1).
        """
        self.inflight = {A: 0, B: 1}
        self.assertEqual(set(self.picks("least-request", choice((A, 1), (B, 4)), 50)), {B})

    def test_single(self) -> None:
        self.assertEqual(self.picks("least-request", choice((A, 1), (B, 1)), 3, among=(B,)), [B, B, B])


class HashTests(Picks):
    def keys(self) -> List[bytes]:
        return [b"user-%d" % n for n in range(3000)]

    def owners(self, options: Choice, among: Optional[Tuple[Instance, ...]] = None) -> Dict[bytes, Instance]:
        return {key: self.picks("hash", options, 1, among=among, key=key)[0] for key in self.keys()}

    def test_sticky(self) -> None:
        options = choice((A, 1), (B, 1), (C, 1))
        first = self.owners(options)
        self.assertEqual(self.owners(choice((A, 1), (B, 1), (C, 1))), first)
        self.assertEqual(set(first.values()), {A, B, C})

    def test_removal_moves_only_its_share(self) -> None:
        """
        Without C, exactly the keys C owned move (about a third); every
        other key stays where it was.
        """
        before = self.owners(choice((A, 1), (B, 1), (C, 1)))
        after = self.owners(choice((A, 1), (B, 1)))
        moved = [key for key in before if before[key] != after[key]]
        self.assertEqual(sorted(moved), sorted(key for key, owner in before.items() if owner is C))
        self.assertLessEqual(abs(len(moved) / len(before) - 1 / 3), 0.08)

    def test_excluded_instance_skipped(self) -> None:
        """
        An ejected instance's keys go to the next on the ring meanwhile;
        the others' keys stay.
        """
        options = choice((A, 1), (B, 1), (C, 1))
        before = self.owners(options)
        during = self.owners(options, among=(A, B))
        for key, owner in before.items():
            if owner is not C:
                self.assertIs(during[key], owner)
            else:
                self.assertIn(during[key], (A, B))

    def test_weights(self) -> None:
        owners = Counter(self.owners(choice((A, 1), (B, 3))).values())
        self.assertLessEqual(abs(owners[B] / 3000 - 0.75), 0.06)

    def test_no_key_round_robin(self) -> None:
        self.assertEqual(self.picks("hash", choice((A, 1), (B, 1)), 4), [A, B, A, B])
