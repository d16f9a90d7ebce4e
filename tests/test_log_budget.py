"""
L{restygate.pacing.LogBudget}: a few lines of one kind a second, then a
count; and the discovery lines that come one per watch go through one.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from restygate.discovery.consul.outage import Outage
from restygate.pacing import LogBudget


class LogBudgetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: List[Dict[str, Any]] = []
        self.budget = LogBudget(
            self.clock, Logger(observer=self.events.append), "{count} more in {seconds:g}s", burst=3
        )

    def lines(self) -> List[str]:
        return [formatEvent(event) for event in self.events]

    def test_a_burst_then_a_count_at_the_end_of_the_interval(self) -> None:
        for n in range(8):
            self.budget("line {n}", n=n)
        self.assertEqual(self.lines(), ["line 0", "line 1", "line 2"])
        self.clock.advance(0.5)
        self.budget("line {n}", n=8)
        self.assertEqual(len(self.events), 3)
        self.clock.advance(0.5)
        self.assertEqual(self.lines()[3:], ["6 more in 1s"])
        self.assertEqual(self.events[3]["log_level"], LogLevel.info)
        # A new interval writes lines again.
        self.budget("line {n}", n=9)
        self.assertEqual(self.lines()[4:], ["line 9"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lines_within_the_burst_leave_nothing_to_tell(self) -> None:
        for n in range(3):
            self.budget("line {n}", n=n)
            self.clock.advance(0.4)
        self.clock.advance(5)
        self.assertEqual(self.lines(), ["line 0", "line 1", "line 2"])

    def test_stop_tells_what_is_held(self) -> None:
        for n in range(5):
            self.budget("line {n}", n=n)
        self.budget.stop()
        self.assertEqual(self.lines()[3:], ["2 more in 1s"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class IndexResetTests(SynchronousTestCase):
    def test_an_agent_restart_is_ten_lines_and_a_count(self) -> None:
        """
        Consul's index going back for every watch at once (an agent restart)
        is ten example lines and one count, not a line per watch.
        """
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        outage = Outage(clock)
        for n in range(1000):
            outage.went_backwards(f"dc1/svc-{n}", 5000, 3)
        clock.advance(1)
        lines = [formatEvent(e) for e in events if e.get("log_namespace", "").endswith("outage")]
        self.assertEqual(len(lines), 11, lines)
        self.assertEqual(lines[0], "Consul index of dc1/svc-0 went backwards (5000 -> 3); resetting")
        self.assertTrue(lines[-1].startswith("... and Consul's index went backwards for 990 more queries in 1s"),
                        lines[-1])
