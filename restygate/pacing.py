"""
Pacing for loops that talk to something that may be broken: a token bucket
that caps how fast answers may drive a loop, and capped exponential backoff
with jitter for retries after errors.  Shared by the Consul watches and the
worker supervisor.  And a guard for periodic housekeeping, which must go on
whatever one round raised.
"""

from __future__ import annotations

import random
from typing import Callable, Optional

from twisted.logger import Logger

__all__ = ["TokenBucket", "Backoff", "carry_on"]

log = Logger()


def carry_on(call: Callable[[], None], what: str) -> Callable[[], None]:
    """
    C{call} for a C{LoopingCall}: an error is logged as C{what} and the
    loop goes on (a C{LoopingCall} stops for good on an unhandled error).
    """

    def guarded() -> None:
        try:
            call()
        except Exception:
            log.failure(what)

    return guarded


class TokenBucket:
    """
    Allows C{burst} queries at once and C{rate} per second after that, so
    answers that come back immediately (index resets, flapping services,
    an agent that ignores C{index}) cannot drive a hot loop.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._updated: Optional[float] = None

    def delay(self, now: float) -> float:
        """
        Take a token: how long to wait before the next query may start.
        """
        if self._updated is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        self._tokens -= 1
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self._rate


class Backoff:
    """
    Exponential backoff with full jitter, capped.
    """

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        self._base = base
        self._cap = cap
        self._rng = rng
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        ceiling: float = min(self._cap, self._base * 2.0 ** min(self.failures - 1, 32))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0
