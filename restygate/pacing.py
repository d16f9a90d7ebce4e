"""
Pacing for loops that talk to something that may be broken: a token bucket
that caps how fast answers may drive a loop, and capped exponential backoff
with jitter for retries after errors.  Shared by the Consul watches and the
worker supervisor.  A guard for periodic housekeeping, which must go on
whatever one round raised.  And a budget for log lines that come one per
watch, so a change to thousands of them is a few lines and a count.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["TokenBucket", "Backoff", "LogBudget", "carry_on"]

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


class LogBudget:
    """
    At most C{burst} lines of one kind a second; the lines past that are
    counted, and the count is logged once (C{summary}, with C{{count}} and
    C{{seconds}}) when the second ends.  A change Consul
    makes to every service (an agent restart, a deregistered node, a
    thousand services unused for the idle timeout) is then a few example
    lines and one count, not thousands of lines that each cost the log's
    writer (twistd's text observer took ~0.2 ms a line on a busy machine,
    while discovery waited).
    """

    def __init__(self, clock: IReactorTime, logger: Logger, summary: str, burst: int = 10) -> None:
        self._clock = clock
        self._log = logger
        self._summary = summary
        self._burst = burst
        self._interval = 1.0
        self._started = float("-inf")
        self._written = 0
        self._held = 0
        self._report: Optional[IDelayedCall] = None

    def __call__(self, format: str, **fields: Any) -> None:
        now = self._clock.seconds()
        if now - self._started >= self._interval:
            self._started, self._written = now, 0
        if self._written < self._burst:
            self._written += 1
            self._log.info(format, **fields)
            return
        self._held += 1
        if self._report is None:
            self._report = self._clock.callLater(self._started + self._interval - now, self._tell)

    def _tell(self) -> None:
        self._report = None
        held, self._held = self._held, 0
        self._log.info(self._summary, count=held, seconds=self._interval)

    def stop(self) -> None:
        """
        Tell what is held now (the process is stopping).
        """
        if self._report is not None and self._report.active():
            self._report.cancel()
            self._tell()
