"""
A new change feed's first full read (every check of its datacenter, the
baseline later reads are compared with) waits until the first fetches
clients wait for have quietened, so a gateway that just started does not
hold them all up behind it; and nothing is missed meanwhile: a node whose own
check fails stops serving at once, a catalog change reads at once, and the
first read fetches every watch with an instance it does not account for.
On a L{Clock}, with the real gate and a scripted Consul.
"""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from restygate.discovery.consul.checks import CheckStates
from restygate.discovery.consul.client import Indexed
from restygate.discovery.consul.feed import BASELINE_LATEST, BASELINE_QUIET, ChangeFeed
from restygate.discovery.consul.gate import ConsulGate
from restygate.discovery.consul.outage import Outage
from tests.test_feed_gone import EVERY, A, B, C, FedWatchCase, _full


class FirstFullReadTests(FedWatchCase):
    def make_gate(self, clock: Clock) -> ConsulGate:
        return ConsulGate(clock, 10, 100.0)

    def first_fetch(self) -> None:
        """An urgent request through the gate: a first fetch a client waits for."""
        assert self.gate is not None
        self.gate.run(lambda: Deferred(), urgent=True)

    def test_waits_for_the_first_fetches_to_quieten(self) -> None:
        self.first_fetch()
        self.feed.start()
        self.assertEqual(self.states.full, [])
        for _ in range(3):
            self.clock.advance(BASELINE_QUIET / 2)
            self.first_fetch()
        self.clock.advance(BASELINE_QUIET - 0.01)
        self.assertEqual(self.states.full, [])
        self.clock.advance(0.01)
        self.assertEqual(len(self.states.full), 1)
        self.assertEqual(self.states.urgent, [True])

    def test_at_once_without_first_fetches_and_at_the_latest_with_them(self) -> None:
        self.feed.start()
        self.assertEqual(len(self.states.full), 1)
        self.feed.stop()
        busy = ChangeFeed("dc2", self.states, self.clock, Outage(self.clock), random.Random(3), 30.0,  # type: ignore[arg-type]
                          lambda: [], gate=self.gate)
        self.addCleanup(busy.stop)
        self.first_fetch()
        busy.start()
        while self.clock.seconds() < BASELINE_LATEST - BASELINE_QUIET:
            self.clock.advance(BASELINE_QUIET / 2)
            self.first_fetch()
        self.assertEqual(len(self.states.full), 1)
        self.clock.advance(BASELINE_QUIET)
        self.assertEqual(len(self.states.full), 2)

    def test_a_catalog_change_reads_at_once_and_is_the_baseline(self) -> None:
        self.first_fetch()
        self.feed.start()
        self.feed.catalog_changed()
        self.assertEqual(len(self.states.full), 1)
        self.states.full[-1].callback(Indexed(10, EVERY))
        self.clock.advance(BASELINE_LATEST)
        self.assertEqual(len(self.states.full), 1)

    def test_a_failing_node_stops_serving_before_the_first_read(self) -> None:
        self.first_fetch()
        self.feed.start()
        self.source.last.answer(10, A, B, C)
        self.assertEqual(self.watcher.snapshot.instances, (A, B, C))  # type: ignore[union-attr]
        # Node n2's own check fails: which services n2 has is not known yet, its instances go anyway.
        failing = CheckStates(per_node={"n2": [("n2", "serfHealth", "critical", (), 11, "")]})
        self.states.feed[-1].callback(Indexed(11, failing))
        self.assertEqual(self.watcher.snapshot.instances, (A,))  # type: ignore[union-attr]
        self.assertEqual(self.states.full, [])

    def test_the_first_read_fetches_a_watch_it_does_not_account_for(self) -> None:
        self.first_fetch()
        self.feed.start()
        self.source.last.answer(10, A, B, C)
        fetches = len(self.source.queries)
        self.clock.advance(BASELINE_QUIET)
        # c has no check in it (deregistered before it, maybe): web is fetched, nothing taken away.
        self.states.full[-1].callback(Indexed(10, _full(
            ("n1", "serfHealth", ""), ("n2", "serfHealth", ""), ("n1", "service:a", "a"), ("n2", "service:b", "b"),
        )))
        self.clock.advance(0)
        self.assertEqual(len(self.source.queries), fetches + 1)
        self.assertTrue(self.source.last.prompt)
        self.assertEqual(self.watcher.snapshot.instances, (A, B, C))  # type: ignore[union-attr]
        self.source.last.answer(12, A, B)
        self.assertEqual(self.watcher.snapshot.instances, (A, B))  # type: ignore[union-attr]

    def test_every_instance_accounted_for_fetches_nothing(self) -> None:
        self.feed.start()
        self.source.last.answer(10, A, B, C)
        fetches = len(self.source.queries)
        self.states.full[-1].callback(Indexed(10, EVERY))
        self.clock.advance(0)
        self.assertEqual(len(self.source.queries), fetches)
        self.assertEqual(self.watcher.snapshot.instances, (A, B, C))  # type: ignore[union-attr]


class FailedFullReadTests(FedWatchCase):
    def test_a_failed_read_is_asked_again_once_consul_answers(self) -> None:
        """
        A full read that fails (Consul down) is part of the outage: asked
        again when Consul answers anything, and not before (no loop while
        it is down) but for the outage's one query a second.
        """
        self.feed.start()
        self.assertEqual(len(self.states.full), 1)
        self.states.full[-1].errback(ConnectionRefusedError())
        self.assertEqual(len(self.states.full), 1)
        # The one failing query the outage asks again a second later is this read.
        self.clock.advance(1.0)
        self.assertEqual(len(self.states.full), 2)
        self.states.full[-1].callback(Indexed(10, EVERY))
        self.assertEqual(self.feed.full_answers, 1)
        self.clock.advance(10.0)
        self.assertEqual(len(self.states.full), 2)

    def test_the_read_comes_back_with_any_answer(self) -> None:
        self.feed.start()
        self.states.full[-1].errback(ConnectionRefusedError())
        self.states.feed[-1].errback(ConnectionRefusedError())
        # The feed's own query answers first: the read is asked again with it.
        self.clock.advance(0.5)
        self.states.feed[-1].callback(Indexed(11, CheckStates()))
        self.assertEqual(len(self.states.full), 2)
