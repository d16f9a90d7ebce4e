"""
Tests for a watch kept fresh by a change feed (L{Watcher} with C{blocking}
false) and for the L{Outage} account bringing retries forward, on a Clock.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from restygate.discovery.consul.answers import ConsulError
from restygate.discovery.consul.checks import CheckStates, screen
from restygate.discovery.consul.outage import Outage
from restygate.discovery.consul.watch import Watcher
from restygate.discovery.model import Instance
from tests.support.scripted import ScriptedSource

A = Instance("10.0.0.1", 80, id="a")
B = Instance("10.0.0.2", 80, id="b")
NB = Instance("10.0.0.2", 80, id="b", node="n2")


class FedWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.source = ScriptedSource()
        self.outage = Outage(self.clock)

    def watch(self, service: str, seed: int = 1) -> Watcher:
        watcher = Watcher("dc1", service, self.source, self.clock, blocking=False, outage=self.outage,
                          rng=random.Random(seed))
        self.addCleanup(watcher.stop)
        watcher.start()
        return watcher

    def test_one_off_fetches_and_a_refresh_during_one(self) -> None:
        watcher = self.watch("web")
        first = self.source.last
        self.assertEqual((first.index, first.urgent), (0, True))
        first.answer(5, A)
        self.clock.advance(60)
        self.assertEqual(len(self.source.queries), 1)  # no blocking query follows
        watcher.refresh()
        second = self.source.last
        self.assertEqual((second.index, second.urgent), (0, False))
        # The feed tells of another change while that fetch is in flight.
        watcher.refresh()
        self.assertEqual(len(self.source.queries), 2)
        second.answer(6, A)
        self.clock.advance(0)
        third = self.source.last
        self.assertIsNot(third, second)
        third.answer(7, A, B)
        self.clock.advance(60)
        self.assertEqual((len(self.source.queries), watcher.snapshot.instances if watcher.snapshot else None),
                         (3, (A, B)))

    def test_the_first_answer_after_an_outage_brings_retries_forward(self) -> None:
        web, api = self.watch("web", seed=1), self.watch("api", seed=2)
        for query in list(self.source.pending()):
            query.fail(ConsulError("Consul answered 500: No cluster leader", 500))
        self.assertEqual(len(self.outage.failing), 2)
        self.assertEqual(self.outage.outages, 1)
        # Both wait out a backoff; the first to get an answer ends the wait of the other.
        self.clock.advance(min(c.getTime() for c in self.clock.getDelayedCalls()) - self.clock.seconds())
        retried = self.source.pending()
        self.assertEqual(len(retried), 1)
        retried[0].answer(3, A)
        self.assertEqual(len(self.source.pending()), 1)
        self.source.pending()[0].answer(4, B)
        self.assertEqual((web.errors, api.errors, self.outage.failing), (0, 0, set()))

    def test_answers_go_through_the_screen_and_a_change_fetches_promptly(self) -> None:
        # What the change feed last saw not passing: instance b's own check.
        bad = CheckStates({"web": [("n2", "service:b", "critical", (), 9, "b")]})
        watcher = self.watch("web")
        watcher.screen = lambda answer: screen(answer, bad, "web")
        # An answer from before the feed's (b still passing in it) cannot bring b back.
        self.source.last.answer(5, A, NB)
        self.assertEqual(watcher.snapshot.instances if watcher.snapshot else None, (A,))
        # The feed saw b pass again (or go: it cannot tell): not served until a fetch says it is there,
        # which goes ahead of mere re-issues.
        bad = CheckStates()
        watcher.rescreen()
        self.assertEqual(watcher.snapshot.instances if watcher.snapshot else None, (A,))
        watcher.refresh(changed=True)
        self.assertTrue(self.source.last.prompt)
        self.source.last.answer(10, A, NB)
        self.assertEqual(watcher.snapshot.instances if watcher.snapshot else None, (A, NB))
        # b fails again: the feed's view applies to the answer held, without a fetch.
        bad = CheckStates({"web": [("n2", "service:b", "warning", (), 11, "b")]})
        queries = len(self.source.queries)
        watcher.rescreen()
        self.assertEqual((watcher.snapshot.instances, watcher.snapshot.warning) if watcher.snapshot else None,
                         ((A,), (NB,)))
        self.assertEqual(len(self.source.queries), queries)

    def test_a_promoted_watch_serves_its_own_answers_unscreened(self) -> None:
        watcher = self.watch("web")
        watcher.screen = lambda answer: screen(
            answer, CheckStates({"web": [("n2", "service:b", "critical", (), 9, "b")]}), "web"
        )
        self.source.last.answer(5, A, NB)
        self.assertEqual(watcher.snapshot.instances if watcher.snapshot else None, (A,))
        # Promoted to a blocking query of its own: its answers are newer than anything the feed saw.
        watcher.promote()
        self.source.pending()[-1].answer(12, A, NB)
        self.assertEqual(watcher.snapshot.instances if watcher.snapshot else None, (A, NB))
