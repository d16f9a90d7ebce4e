"""
The request path's reused timers (L{restygate.proxy.deadlines}), on a Clock.
"""

from __future__ import annotations

from typing import List

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from restygate.proxy.deadlines import Deadlines


class DeadlinesTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock)
        self.fired: List[str] = []

    def test_due(self) -> None:
        """A started timer calls back when its time comes, not before, and once."""
        self.deadlines.start(self.clock.seconds(), 5, lambda: self.fired.append("a"))
        self.clock.advance(4.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, ["a"])
        self.clock.advance(100)
        self.assertEqual(self.fired, ["a"])

    def test_parked_timer_reused(self) -> None:
        """
        The next timer to start takes the parked one, moved to its own
        deadline: no new call is scheduled, and only the new owner is called.
        """
        first = self.deadlines.start(self.clock.seconds(), 5, lambda: self.fired.append("a"))
        self.deadlines.stop(first)
        self.clock.advance(3)
        second = self.deadlines.start(self.clock.seconds(), 5, lambda: self.fired.append("b"))
        self.assertIs(second, first)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(4.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, ["b"])

    def test_moved(self) -> None:
        """A running timer moved comes due at its new time, later or sooner."""
        deadline = self.deadlines.start(self.clock.seconds(), 5, lambda: self.fired.append("a"))
        self.clock.advance(4)
        self.deadlines.move(deadline, self.clock.seconds(), 10)
        self.clock.advance(9.9)
        self.assertEqual(self.fired, [])
        self.deadlines.move(deadline, self.clock.seconds(), 1)
        self.clock.advance(1)
        self.assertEqual(self.fired, ["a"])

    def test_stopped_timer_that_came_due_is_not_reused(self) -> None:
        """
        A stopped timer never calls back; once its time passed it is done,
        and the next timer is a new one.
        """
        first = self.deadlines.start(self.clock.seconds(), 5, lambda: self.fired.append("a"))
        self.deadlines.stop(first)
        self.clock.advance(5)
        self.assertEqual((self.fired, self.clock.getDelayedCalls()), ([], []))
        second = self.deadlines.start(self.clock.seconds(), 5, lambda: self.fired.append("b"))
        self.assertIsNot(second, first)
        self.clock.advance(5)
        self.assertEqual(self.fired, ["b"])

    def test_close(self) -> None:
        """Closing cancels the parked timers and leaves running ones alone."""
        parked = self.deadlines.start(self.clock.seconds(), 5, lambda: self.fired.append("a"))
        self.deadlines.start(self.clock.seconds(), 5, lambda: self.fired.append("b"))
        self.deadlines.stop(parked)
        self.deadlines.close()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(5)
        self.assertEqual(self.fired, ["b"])
