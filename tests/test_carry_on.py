"""
L{restygate.pacing.carry_on}: periodic housekeeping goes on after a round
that raised, and the error is logged, not lost.
"""

from __future__ import annotations

from typing import List

from twisted.internet.task import Clock, LoopingCall
from twisted.trial.unittest import TestCase

from restygate.pacing import carry_on


class CarryOnTests(TestCase):
    def test_a_failing_round_is_logged_and_the_loop_goes_on(self) -> None:
        rounds: List[int] = []

        def round_() -> None:
            rounds.append(len(rounds))
            if len(rounds) == 2:
                raise ZeroDivisionError("round two")

        clock = Clock()
        loop = LoopingCall(carry_on(round_, "housekeeping failed"))
        loop.clock = clock
        loop.start(1.0, now=False)
        self.addCleanup(loop.stop)
        clock.pump([1.0] * 4)
        self.assertEqual(rounds, [0, 1, 2, 3])
        self.assertTrue(loop.running)
        [failure] = self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(str(failure.value), "round two")
