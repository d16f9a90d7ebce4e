"""
Unix signals that ask a running gateway to do something (SIGHUP: reload,
SIGUSR1: reopen the access log), handled the one safe way.

A signal handler interrupts whatever the reactor was doing, so it only hands
the work to the reactor's next turn.  Only the main thread may install a
handler and Python runs them only there, so a gateway embedded in a thread,
or driven by a test clock, gets none and is asked through its methods.  The
replaced handler is chained to (twistd's own SIGUSR1 log rotation keeps
working) and given back on removal, unless someone took the signal over
since.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IReactorThreads

__all__ = ["SignalHook"]


class SignalHook:
    """
    Runs C{action} in the reactor when C{signum} arrives, while installed.
    """

    def __init__(self, signum: int, action: Callable[[], Any], reactor: Any) -> None:
        self._signum = signum
        self._action = action
        self._reactor = reactor
        self._previous: Any = None
        self.installed = False

    def install(self) -> None:
        if self.installed:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        if not IReactorThreads.providedBy(self._reactor):
            return
        self._previous = signal.signal(self._signum, self.handler)
        self.installed = True

    def remove(self) -> None:
        if not self.installed:
            return
        if signal.getsignal(self._signum) == self.handler:
            signal.signal(self._signum, self._previous or signal.SIG_DFL)
        self._previous = None
        self.installed = False

    def handler(self, signum: int, frame: Optional[FrameType]) -> None:
        self._reactor.callFromThread(self._action)
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
