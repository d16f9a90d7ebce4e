"""
What bounds retries of failed upstream attempts on another instance.

Which failures may be retried is each L{restygate.proxy.failure.Failure}'s
to say (any method when the request provably never reached the upstream,
L{IDEMPOTENT} methods when the upstream may have acted on it).  A retry budget caps retries of
requests an upstream may have seen at a fraction of recent requests, plus a
small floor, so a broken service meets a trickle of retries rather than a
storm; a refused connection put no load on anyone and is not budgeted.
"""

from __future__ import annotations

from typing import Any, FrozenSet, List

from twisted.internet.interfaces import IReactorTime

__all__ = ["IDEMPOTENT", "RetryBudget", "may_retry"]

IDEMPOTENT: FrozenSet[bytes] = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


def may_retry(never_reached: bool, retriable: bool, method: bytes, body: Any) -> bool:
    """
    Whether a failed attempt may be tried elsewhere, budget aside: any
    method when it C{never_reached} the upstream, an idempotent one when the
    failure is C{retriable}; and only with a body still at hand to resend.
    """
    if not (never_reached or (retriable and method in IDEMPOTENT)):
        return False
    return body is None or bool(body.replayable)


class RetryBudget:
    """
    Allows retries up to C{ratio} of the requests seen in the last
    C{window} seconds, and always at least C{floor} per second.
    """

    def __init__(self, clock: IReactorTime, ratio: float = 0.2, floor: float = 3.0, window: int = 10) -> None:
        self._clock = clock
        self._ratio = ratio
        self._floor = floor
        self._window = window
        self._requests: List[int] = [0] * window
        self._retries: List[int] = [0] * window
        self._second = int(clock.seconds())

    def _advance(self, now: int) -> None:
        """Empty the slots of the seconds gone by since C{self._second}."""
        for second in range(max(self._second + 1, now - self._window + 1), now + 1):
            slot = second % self._window
            self._requests[slot] = 0
            self._retries[slot] = 0
        self._second = now

    def request(self, when: float) -> None:
        """Count a request, at C{when} (a clock reading)."""
        now = int(when)
        # Nearly every request comes within the second of the one before:
        # nothing to advance, no call made.
        if now != self._second:
            self._advance(now)
        self._requests[now % self._window] += 1

    def try_retry(self) -> bool:
        """
        Take a retry from the budget if there is one left.
        """
        now = int(self._clock.seconds())
        if now != self._second:
            self._advance(now)
        slot = now % self._window
        allowed = max(self._floor * self._window, self._ratio * sum(self._requests))
        if sum(self._retries) >= allowed:
            return False
        self._retries[slot] += 1
        return True
