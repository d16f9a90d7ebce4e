"""
The timers of the request path (an exchange's response and body timeouts),
reused rather than made and cancelled for every request.

A Twisted C{DelayedCall} made and cancelled per request was about 6% of the
instructions a proxied request costs: making one allocates it and queues it
in the reactor, cancelling one leaves it for the reactor to sift out.  Here
a stopped timer is parked instead, and the next one to start takes it and
moves it to its own deadline: moving a C{DelayedCall} later is a little
arithmetic, and the reactor requeues it only when its old time comes.  A
parked timer that comes due does nothing and is not taken again.  At most
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

    __slots__ = ("_call", "_on_due")

    def __init__(self, on_due: Optional[Callable[[], None]]) -> None:
        self._on_due = on_due
        self._call: Optional[IDelayedCall] = None

    def _due(self) -> None:
        on_due, self._on_due = self._on_due, None
        if on_due is not None:
            on_due()


class Deadlines:
    """Where the request path's timers come from, and go back to."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._parked: List[Deadline] = []

    def start(self, seconds: float, on_due: Callable[[], None]) -> Deadline:
        """Call C{on_due} in C{seconds}, unless L{stop} is called first."""
        parked = self._parked
        while parked:
            deadline = parked.pop()
            call = deadline._call
            if call is not None and call.active():
                deadline._on_due = on_due
                call.reset(seconds)
                return deadline
        deadline = Deadline(on_due)
        deadline._call = self._clock.callLater(seconds, deadline._due)
        return deadline

    def move(self, deadline: Deadline, seconds: float) -> None:
        """C{deadline}, not due yet, now comes due C{seconds} from now."""
        call = deadline._call
        assert call is not None
        call.reset(seconds)

    def stop(self, deadline: Deadline) -> None:
        """C{deadline}, not due yet, will not call its C{on_due}."""
        deadline._on_due = None
        self._parked.append(deadline)

    def close(self) -> Deferred[None]:
        """Cancel the parked timers (the gateway is stopping)."""
        for deadline in self._parked:
            call = deadline._call
            if call is not None and call.active():
                call.cancel()
        self._parked.clear()
        return succeed(None)
