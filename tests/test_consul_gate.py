"""
Tests for L{restygate.discovery.consul.gate.ConsulGate} on a Clock: at most
C{limit} requests in flight, urgent ones first, background ones paced to the
rate, cancellation before the turn drops a request.
"""

from __future__ import annotations

from typing import List

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from restygate.discovery.consul.answers import ConsulError
from restygate.discovery.consul.gate import AGED, RELEARN, ConsulGate


class GateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.started: List[str] = []
        self.pending: List[Deferred[str]] = []

    def request(self, gate: ConsulGate, name: str, urgent: bool = False, prompt: bool = False) -> Deferred[str]:
        def start() -> Deferred[str]:
            self.started.append(name)
            d: Deferred[str] = Deferred()
            self.pending.append(d)
            return d

        return gate.run(start, urgent, prompt)

    def test_limit_and_urgent_first(self) -> None:
        gate = ConsulGate(self.clock, limit=2, rate=1000.0)
        results = [self.request(gate, f"b{n}") for n in range(3)]
        self.clock.advance(1)
        self.assertEqual((self.started, gate.in_flight), (["b0", "b1"], 2))
        urgent = self.request(gate, "u", urgent=True)
        self.assertEqual(gate.queued, (1, 1))
        self.pending[0].callback("done")
        self.assertEqual(self.successResultOf(results[0]), "done")
        # The freed connection goes to the urgent request, not the older background one.
        self.assertEqual(self.started, ["b0", "b1", "u"])
        self.pending[1].callback("x")
        self.clock.advance(1)
        self.assertEqual(self.started, ["b0", "b1", "u", "b2"])
        self.assertNoResult(urgent)
        self.assertEqual(gate.peak, 2)

    def test_background_paced_to_the_rate(self) -> None:
        gate = ConsulGate(self.clock, limit=100, rate=4.0)
        for n in range(5):
            self.request(gate, f"b{n}")
        self.assertEqual(self.started, ["b0"])
        self.request(gate, "u", urgent=True)
        self.assertEqual(self.started, ["b0", "u"])
        # The urgent one went at once, and took the next paced turn: Consul
        # sees the rate from both together.
        self.clock.advance(0.25)
        self.assertEqual(self.started, ["b0", "u"])
        for step in range(1, 5):
            self.clock.advance(0.25)
            self.assertEqual(len(self.started), 2 + step)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_urgent_ones_hold_the_paced_back_a_second_at_most(self) -> None:
        """
        A cold start's first fetches (far more than the rate) all go at
        once, and the paced requests after them wait one second's worth, not
        until the rate has paid for every first fetch.
        """
        gate = ConsulGate(self.clock, limit=10_000, rate=10.0)
        for n in range(1000):
            self.request(gate, f"u{n}", urgent=True)
        self.assertEqual(len(self.started), 1000)
        self.request(gate, "b")
        self.clock.pump([0.05] * 20)
        self.assertEqual(self.started[-1:], ["u999"])
        self.clock.pump([0.05] * 6)
        self.assertEqual(self.started[-1:], ["b"])

    def test_cancel_before_and_after_the_turn(self) -> None:
        gate = ConsulGate(self.clock, limit=1, rate=1000.0)
        first = self.request(gate, "a")
        second = self.request(gate, "b")
        second.cancel()
        self.failureResultOf(second, CancelledError)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(gate.in_flight, 0)
        self.clock.advance(1)
        self.assertEqual(self.started, ["a"])


    def test_prompt_goes_ahead_of_background_unless_that_waited_too_long(self) -> None:
        gate = ConsulGate(self.clock, limit=100, rate=2.0)
        for name in ["b0", "b1"]:
            self.request(gate, name)
        for name in ["p0", "p1", "p2"]:
            self.request(gate, name, prompt=True)
        self.assertEqual((self.started, gate.queued), (["b0"], (0, 4)))
        # Prompt ones share the rate and go first, until a background one has waited AGED.
        self.clock.advance(0.5)
        self.assertEqual(self.started, ["b0", "p0"])
        self.clock.advance(AGED - 0.5)
        self.assertEqual(self.started, ["b0", "p0", "b1"])
        self.clock.pump([0.5, 0.5])
        self.assertEqual(self.started, ["b0", "p0", "b1", "p1", "p2"])

    def test_a_tenth_of_a_seconds_worth_may_start_at_once(self) -> None:
        gate = ConsulGate(self.clock, limit=1000, rate=100.0)
        for n in range(300):
            self.request(gate, f"b{n}")
        # Ten at once (the bucket is full), then refilled at 91 a second: no second sees more than
        # strict spacing at the rate would start (101 in a closed second).
        self.assertEqual(len(self.started), 10)
        self.clock.pump([0.01] * 100)
        self.assertLessEqual(len(self.started), 101)
        self.clock.pump([0.005])
        self.assertEqual(len(self.started), 101)
        self.clock.pump([0.01] * 100)
        self.assertEqual(len(self.started), 192)
        # Idle, the bucket fills again, to ten at most.
        self.clock.pump([0.01] * 200)
        self.clock.advance(5)
        for n in range(12):
            self.request(gate, f"c{n}")
        self.assertEqual(len(self.started), 310)
