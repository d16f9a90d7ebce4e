"""
When a failed upstream attempt may be tried again on another instance.

Only failures before any response byte are retried: a connection that was
never established (any method: the request provably never reached the
upstream), or one reset or closed before the status line (idempotent methods
only: the upstream may have acted on it).  A retry budget caps retries of
requests an upstream may have seen at a fraction of recent requests, plus a
small floor, so a broken service meets a trickle of retries rather than a
storm; a refused connection put no load on anyone and is not budgeted.
"""

from __future__ import annotations

from typing import FrozenSet, List

from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from restygate._compat import RequestNotSent

__all__ = ["IDEMPOTENT", "never_reached", "retriable", "RetryBudget"]

IDEMPOTENT: FrozenSet[bytes] = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


def never_reached(failure: Failure) -> bool:
    """
    The request never got to the upstream: no connection, or the pool's
    connection died before a byte of the request was sent.
    """
    return bool(failure.check(ConnectError, DNSLookupError, RequestNotSent))


def retriable(method: bytes, failure: Failure) -> bool:
    """
    Whether C{failure} of a C{method} request, before any response, may be
    retried elsewhere.
    """
    if never_reached(failure):
        return True
    return method in IDEMPOTENT and bool(
        failure.check(ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed)
    )


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

    def _advance(self) -> int:
        now = int(self._clock.seconds())
        if now != self._second:
            for second in range(max(self._second + 1, now - self._window + 1), now + 1):
                slot = second % self._window
                self._requests[slot] = 0
                self._retries[slot] = 0
            self._second = now
        return now % self._window

    def request(self) -> None:
        self._requests[self._advance()] += 1

    def try_retry(self) -> bool:
        """
        Take a retry from the budget if there is one left.
        """
        slot = self._advance()
        allowed = max(self._floor * self._window, self._ratio * sum(self._requests))
        if sum(self._retries) >= allowed:
            return False
        self._retries[slot] += 1
        return True
