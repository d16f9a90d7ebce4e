"""
A worker process's discovery: the view the daemon sends it over the
discovery channel (L{restygate.discovery.channel}), so that Consul is asked
once per host, not once per worker.

Every snapshot the daemon holds reaches every worker as it changes, and a
worker that starts gets the whole view at once, so nearly every lookup is
answered from memory.  A lookup for a pair the view lacks asks the daemon
(C{want}); concurrent lookups for it share the question.  What the worker
served from its view is reported back every few seconds with how often
(C{used}), so the daemon keeps those watches and gives its dedicated
blocking queries to the busiest services.
"""

from __future__ import annotations

import json
from typing import Callable, Dict, List, Optional, Tuple, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplements

from restygate.config import Config
from restygate.discovery.channel import decode_error, decode_snapshot, snapshot_from
from restygate.discovery.model import DiscoveryUnavailable, IDiscovery, Snapshot
from restygate.ops.views import IDiscoveryView, Watched

__all__ = ["RemoteDiscovery"]

log = Logger()

# Names per `used` line, so a line stays short.
_USED_PER_LINE = 200

_Key = Tuple[str, str]


class RemoteDiscovery(Service):
    """
    L{IDiscovery} over the daemon's view; C{send} writes one line to it.
    """

    def __init__(
        self, send: Callable[[bytes], None], clock: IReactorTime, timeout: float, report_interval: float = 5.0
    ) -> None:
        self._send = send
        self._clock = clock
        self._timeout = timeout
        self._view: Dict[_Key, Tuple[int, Snapshot]] = {}
        self._waiting: Dict[_Key, List[Deferred[Snapshot]]] = {}
        self._asked: Dict[int, _Key] = {}
        self._next_id = 0
        # Lookups served from the view since the last report, by pair.
        self._used: Dict[_Key, int] = {}
        # The daemon's discovery has had Consul's answer (readiness).
        self._ready = False
        self._reporter = LoopingCall(self._report)
        self._reporter.clock = clock
        self._report_interval = report_interval

    def startService(self) -> None:
        super().startService()
        self._reporter.start(self._report_interval, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._reporter.running:
            self._reporter.stop()
        for key in list(self._waiting):
            self._release(key, DiscoveryUnavailable("discovery stopped"))
        return succeed(None)

    def reconfigure(self, config: Config) -> None:
        self._timeout = config.discovery_timeout

    # -- IDiscovery ---------------------------------------------------------------------------

    def current(self, dc: str, service: str) -> Optional[Snapshot]:
        key = (dc.lower(), service.lower())
        held = self._view.get(key)
        if held is None:
            return None
        self._used[key] = self._used.get(key, 0) + 1
        return held[1]

    def lookup(self, dc: str, service: str) -> Deferred[Snapshot]:
        held = self.current(dc, service)
        if held is not None:
            return succeed(held)
        key = (dc.lower(), service.lower())
        waiter: Deferred[Snapshot] = Deferred(lambda d: self._give_up(key, d))
        first = key not in self._waiting
        self._waiting.setdefault(key, []).append(waiter)
        if first:
            self._next_id += 1
            self._asked[self._next_id] = key
            self._send(f"want {self._next_id} {dc} {service}\n".encode("utf-8"))
        # The daemon bounds its own wait by the discovery timeout; this only
        # guards against a daemon that never answers.
        waiter.addTimeout(self._timeout + 1.0, self._clock)
        return waiter.addErrback(self._timed_out, dc, service)

    def _give_up(self, key: _Key, waiter: Deferred[Snapshot]) -> None:
        waiting = self._waiting.get(key, [])
        waiting.remove(waiter)
        if not waiting:
            # The next lookup asks again.
            del self._waiting[key]

    def _timed_out(self, failure: Failure, dc: str, service: str) -> Failure:
        if failure.check(TimeoutError):
            raise DiscoveryUnavailable(f"no answer from the daemon's discovery about {dc}/{service} in time")
        return failure

    # -- IDiscoveryView -----------------------------------------------------------------------

    def watched(self) -> List[Watched]:
        return [
            Watched(s.dc, s.service, s.instances, synced=True, index=s.index)
            for _, s in sorted(self._view.values(), key=lambda v: (v[1].dc, v[1].service))
        ]

    def has_instances(self, dc: str, service: str) -> bool:
        held = self._view.get((dc.lower(), service.lower()))
        return held is not None and (held[1].dc, held[1].service) == (dc, service) and bool(held[1].instances)

    def answered(self) -> bool:
        return self._ready or bool(self._view)

    # -- the channel --------------------------------------------------------------------------

    def received(self, line: bytes) -> bool:
        """
        Take one line from the daemon; whether it was a discovery message.
        """
        verb, _, rest = line.decode("utf-8", "replace").partition(" ")
        if verb == "ready":
            self._ready = True
        elif verb == "snap":
            self._take(*decode_snapshot(rest))
        elif verb == "drop":
            dc, service = json.loads(rest)
            self._view.pop((dc.lower(), service.lower()), None)
        elif verb == "answer":
            number, _, body = rest.partition(" ")
            self._answer(int(number), json.loads(body))
        else:
            return False
        return True

    def _take(self, version: int, snapshot: Snapshot) -> Snapshot:
        key = (snapshot.dc.lower(), snapshot.service.lower())
        held = self._view.get(key)
        if held is None or held[0] < version:
            held = self._view[key] = (version, snapshot)
        self._release(key, held[1])
        return held[1]

    def _answer(self, number: int, data: Dict[str, object]) -> None:
        key = self._asked.pop(number, None)
        if key is None:
            return
        snapshot = data.get("snapshot")
        if isinstance(snapshot, dict):
            self._release(key, self._take(*snapshot_from(snapshot)))
        elif "version" in data:
            # The snapshot came as a `snap` line just before (it answered the waiters already).
            held = self._view.get(key)
            self._release(key, held[1] if held is not None else DiscoveryUnavailable(
                f"the daemon's view of {key[0]}/{key[1]} did not arrive"
            ))
        else:
            self._release(key, decode_error(data))

    def _release(self, key: _Key, outcome: Union[Snapshot, Exception]) -> None:
        for waiter in self._waiting.pop(key, []):
            if isinstance(outcome, Snapshot):
                waiter.callback(outcome)
            else:
                waiter.errback(Failure(outcome))

    def _report(self) -> None:
        used, self._used = sorted(self._used.items()), {}
        for start in range(0, len(used), _USED_PER_LINE):
            # dc/service/count: neither name holds a slash (they are path segments).
            names = " ".join(
                f"{self._view[k][1].dc}/{self._view[k][1].service}/{n}" for k, n in used[start:start + _USED_PER_LINE]
                if k in self._view
            )
            if names:
                self._send(f"used {names}\n".encode("utf-8"))


# Declared here, not with @implementer: a class decorator would keep mypyc
# (setup.py) from compiling the class as a native one.
classImplements(RemoteDiscovery, IDiscovery, IDiscoveryView)
