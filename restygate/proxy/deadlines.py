"""
The timers of the request path (an exchange's response and body timeouts),
reused rather than made and cancelled for every request.

A Twisted C{DelayedCall} made and cancelled per request was about 6% of the
instructions a proxied request costs: making one allocates it and queues it
in the reactor, cancelling one leaves it for the reactor to sift out.  Here
a stopped timer is parked instead, and the next one to start takes it for
its own deadline.  Its C{DelayedCall} is not even moved when the deadline is
later than the call (the usual case: the same timeout, started later): the
call comes early, finds its deadline not due, and waits for the rest, once
a timeout at most.  So a timer started or moved costs no clock reading of
its own (the caller passes the one it has) and no call into the reactor.
A parked timer that comes due does nothing and is not taken again.  At most
as many exist as were ever running at once; the parked ones are cancelled
when the gateway stops (L{Deadlines.close}).
"""

from __future__ import annotations

from typing import Callable, List, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Deadline", "Deadlines"]


class Deadline:
    """One running timer, from L{Deadlines.start}."""

    __slots__ = ("_call", "_on_due", "_due", "_armed", "_clock")

    def __init__(self, clock: IReactorTime, on_due: Optional[Callable[[], None]], due: float) -> None:
        self._clock = clock
        self._on_due = on_due
        # When it comes due, and (about) when its call comes: never later.
        self._due = self._armed = due
        self._call: Optional[IDelayedCall] = None

    def _fire(self) -> None:
        self._call = None
        on_due = self._on_due
        if on_due is None:
            return
        now = self._clock.seconds()
        if now < self._due:
            # Moved later since its call was made: wait for the rest.
            self._call = self._clock.callLater(self._due - now, self._fire)
            self._armed = self._due
            return
        self._on_due = None
        on_due()


class Deadlines:
    """Where the request path's timers come from, and go back to."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._parked: List[Deadline] = []

    def start(self, now: float, seconds: float, on_due: Callable[[], None]) -> Deadline:
        """
        Call C{on_due} C{seconds} after C{now} (the caller's reading of the
        clock), unless L{stop} is called first.
        """
        due = now + seconds
        parked = self._parked
        while parked:
            deadline = parked.pop()
            if deadline._call is not None:
                deadline._on_due = on_due
                self._set(deadline, due, seconds)
                return deadline
        deadline = Deadline(self._clock, on_due, due)
        deadline._call = self._clock.callLater(seconds, deadline._fire)
        return deadline

    def move(self, deadline: Deadline, now: float, seconds: float) -> None:
        """C{deadline}, not due yet, now comes due C{seconds} after C{now}."""
        self._set(deadline, now + seconds, seconds)

    def _set(self, deadline: Deadline, due: float, seconds: float) -> None:
        deadline._due = due
        call = deadline._call
        # A call that comes too late is moved; one that comes early finds
        # the deadline not due yet and waits again (_fire).
        if call is not None and deadline._armed > due:
            call.reset(seconds)
            deadline._armed = due

    def stop(self, deadline: Deadline) -> None:
        """C{deadline}, not due yet, will not call its C{on_due}."""
        deadline._on_due = None
        self._parked.append(deadline)

    def close(self) -> Deferred[None]:
        """Cancel the parked timers (the gateway is stopping)."""
        for deadline in self._parked:
            call = deadline._call
            if call is not None:
                call.cancel()
        self._parked.clear()
        return succeed(None)
