"""
L{restygate.discovery.consul.outage.Outage} brings the queries of an outage
back: one failing query asked again every second whatever its backoff, and
every other one as soon as any answers.
"""

from __future__ import annotations

import random
from typing import List

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from restygate.discovery.consul.client import Indexed
from restygate.discovery.consul.loop import BlockingLoop
from restygate.discovery.consul.outage import Outage


class _Agent:
    """
    What the loops ask: refused while C{down}, else an answer at once
    (the loops do not block here: each answer is counted, then they wait for
    a refresh).
    """

    def __init__(self) -> None:
        self.down = True
        self.asked: List[str] = []

    def query(self, name: str) -> "Deferred[Indexed]":
        self.asked.append(name)
        if self.down:
            return fail(ConnectionRefusedError())
        return succeed(Indexed(index=7, value=[]))


class OutageNudgeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.outage = Outage(self.clock)
        self.agent = _Agent()
        self.answers: List[str] = []
        rng = random.Random(4)
        self.loops = [
            BlockingLoop(
                name, lambda index, urgent, name=name: self.agent.query(name),
                lambda answer, name=name: self.answers.append(name), self.clock, self.outage, rng,
                blocking=False,
            )
            for name in ("dc1/web", "dc1/api", "feed dc1")
        ]
        for loop in self.loops:
            loop.start()

    def test_a_long_outage_is_seen_to_end_within_a_second(self) -> None:
        """
        After minutes down, each loop's backoff is 15 to 30 s; Consul back
        is still seen within a second, and every loop asks at once then.
        """
        self.clock.pump([1.0] * 300)
        self.assertEqual(self.outage.failing, {"dc1/web", "dc1/api", "feed dc1"})
        self.assertTrue(all(loop.errors > 6 for loop in self.loops), [loop.errors for loop in self.loops])
        self.agent.down = False
        self.clock.advance(1.0)
        self.assertEqual(sorted(self.answers), ["dc1/api", "dc1/web", "feed dc1"])
        self.assertEqual(self.outage.failing, set())
        self.assertIsNone(self.outage.since)
        # Nothing is left behind to ask again.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_query_a_second_while_down(self) -> None:
        """
        The nudges add at most one query a second, in turn, to the loops'
        own (backed off) retries.
        """
        self.clock.pump([1.0] * 120)
        before = len(self.agent.asked)
        self.clock.pump([1.0] * 60)
        asked = self.agent.asked[before:]
        # Each loop's own retries come 15 to 30 s apart by now: 3 loops x at most 4.
        self.assertGreaterEqual(len(asked), 60)
        self.assertLessEqual(len(asked), 60 + 12)
        self.assertEqual({name for name in asked}, {"dc1/web", "dc1/api", "feed dc1"})

    def test_a_stopped_loop_ends_its_part(self) -> None:
        """
        Loops stopped during an outage (unwatched, or the service stopping)
        leave no nudge behind.
        """
        self.clock.advance(5.0)
        for loop in self.loops:
            loop.stop()
        self.assertIsNone(self.outage.since)
        self.clock.advance(5.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PromotedAfterAnOutageTests(SynchronousTestCase):
    def test_a_watch_last_answered_before_an_outage_blocks_from_zero(self) -> None:
        """
        A watch kept fresh by its feed (no query of its own) that is given a
        blocking query after an outage asks from index 0: the agent may have
        restarted behind its last index, and a query blocking on that would
        sit out its whole wait.  One that answered since blocks from its index.
        """
        clock = Clock()
        outage = Outage(clock)
        asked: List[int] = []
        answers = {"index": 6295}

        def query(index: int, urgent: bool) -> "Deferred[Indexed]":
            asked.append(index)
            if index:
                return Deferred()  # blocks
            return succeed(Indexed(index=answers["index"], value=[]))

        fed = BlockingLoop("dc3/svc-0097", query, lambda answer: None, clock, outage, random.Random(1), blocking=False)
        fed.start()
        self.assertEqual((asked, fed.index), ([0], 6295))
        # The agent restarts; the feed's query fails meanwhile and answers again after.
        outage.failed("change feed of dc3", "Connection refused")
        outage.succeeded("change feed of dc3")
        answers["index"] = 4195
        fed.block()
        self.assertEqual(asked, [0, 0])
        self.assertEqual(fed.index, 4195)
        # Then blocking from the index the new agent gave.
        clock.advance(1)
        self.assertEqual(asked, [0, 0, 4195])

        other = BlockingLoop("dc3/web", query, lambda answer: None, clock, outage, random.Random(1), blocking=False)
        other.start()
        other.block()
        self.assertEqual(asked[-2:], [0, 4195])


class OneQueryFailingTests(SynchronousTestCase):
    def test_a_query_failing_on_its_own_keeps_its_backoff(self) -> None:
        """
        When Consul answers other queries, one that keeps failing (an ACL
        that denies it, say) is asked again when its backoff says, not once
        a second.
        """
        clock = Clock()
        outage = Outage(clock)
        denied: List[int] = []

        def deny(index: int, urgent: bool) -> "Deferred[Indexed]":
            denied.append(index)
            return fail(ConnectionRefusedError())

        def answer(index: int, urgent: bool) -> "Deferred[Indexed]":
            return succeed(Indexed(index=index + 1, value=[]))

        failing = BlockingLoop("dc1/secret", deny, lambda a: None, clock, outage, random.Random(5))
        answering = BlockingLoop("dc1/web", answer, lambda a: None, clock, outage, random.Random(6), pace=2.0)
        failing.start()
        answering.start()
        clock.pump([0.25] * 240)
        # Backoffs of 0.5, 1, 2, 4, 8, 16, 30 s (halved at most by jitter) over 60 s: ten asks at most.
        self.assertLessEqual(len(denied), 10)
        self.assertGreaterEqual(len(denied), 5)
        failing.stop()
        answering.stop()
