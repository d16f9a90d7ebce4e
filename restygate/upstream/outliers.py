"""
Passive outlier ejection and per-instance bookkeeping.

Consul's health checks run every few seconds; between two checks a dead
instance would keep getting traffic.  The proxy reports every upstream
attempt here, and an instance that fails to connect or resets N times in a
row is taken out of rotation for a while (5 s, doubling with each repeat,
capped), then returns by itself.  Never more than half of a service's
instances are out at once, so a wide failure degrades to "try them all"
rather than "refuse everything".  State is keyed by the instance's address,
not by a snapshot, so a Consul update re-listing an ejected instance does not
bring it back early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from zope.interface import classImplements

from restygate.discovery.model import Instance
from restygate.ops.views import IOutlierView

__all__ = ["Outliers", "InstanceState"]

log = Logger()

Key = Tuple[str, str, str, int]


def _key(dc: str, service: str, instance: Instance) -> Key:
    # Spelt out in started, ended and succeeded, which run for every
    # request: a call less each.
    return (dc, service, instance.address, instance.port)


@dataclass
class InstanceState:
    """
    What the gateway has seen of one instance lately, as L{Outliers.state}
    tells it.
    """

    inflight: int = 0
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0


class _History:
    """
    An instance's failures and ejections: kept only while there are some,
    so a request that succeeds makes no record at all.
    """

    __slots__ = ("consecutive_failures", "ejections", "ejected_until")

    def __init__(self) -> None:
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_until = 0.0


class Outliers:
    """
    Tracks instances' recent failures and decides which are ejected.

    @ivar ejections_total: ejections so far, for metrics.
    """

    def __init__(
        self,
        clock: IReactorTime,
        threshold: int = 3,
        base: float = 5.0,
        cap: float = 120.0,
        max_fraction: float = 0.5,
    ) -> None:
        self._clock = clock
        self.threshold = threshold
        self._base = base
        self._cap = cap
        self._max_fraction = max_fraction
        # Requests in flight per instance, apart from the failure history:
        # counting one costs no object.  Neither table keeps an instance
        # with nothing to remember, so they do not grow with every
        # instance Consul ever listed.
        self._inflight: Dict[Key, int] = {}
        self._history: Dict[Key, _History] = {}
        # Instances currently ejected, per (dc, service): the fast path skips
        # all filtering while a service has none.
        self._ejected: Dict[Tuple[str, str], Dict[Key, float]] = {}
        self.ejections_total = 0

    def state(self, dc: str, service: str, instance: Instance) -> Optional[InstanceState]:
        """What is remembered of C{instance} (a copy), if anything."""
        key = _key(dc, service, instance)
        inflight = self._inflight.get(key, 0)
        history = self._history.get(key)
        if history is None:
            return InstanceState(inflight) if inflight else None
        return InstanceState(inflight, history.consecutive_failures, history.ejections, history.ejected_until)

    def usable(self, dc: str, service: str, instances: Tuple[Instance, ...]) -> Tuple[Instance, ...]:
        """
        The instances not ejected right now (all of them when that would
        leave none).
        """
        ejected = self._ejected.get((dc, service))
        if not ejected:
            return instances
        now = self._clock.seconds()
        for key, until in list(ejected.items()):
            if until <= now:
                del ejected[key]
                log.info("{dc}/{service}: {address}:{port} returns from ejection",
                         dc=dc, service=service, address=key[2], port=key[3])
        if not ejected:
            return instances
        kept = tuple(i for i in instances if _key(dc, service, i) not in ejected)
        return kept or instances

    def started(self, dc: str, service: str, instance: Instance) -> None:
        key = (dc, service, instance.address, instance.port)
        inflight = self._inflight
        inflight[key] = inflight.get(key, 0) + 1

    def ended(self, dc: str, service: str, instance: Instance) -> None:
        key = (dc, service, instance.address, instance.port)
        inflight = self._inflight
        count = inflight.get(key, 0)
        if count > 1:
            inflight[key] = count - 1
        elif count:
            del inflight[key]

    def succeeded(self, dc: str, service: str, instance: Instance) -> None:
        # The common case, nothing failed lately, touches nothing.  An
        # ejection always has a history (failed() makes one and it is kept
        # while ejections are counted), so no history means none to end.
        history = self._history
        if not history:
            return
        key = (dc, service, instance.address, instance.port)
        state = history.get(key)
        if state is None:
            return
        state.consecutive_failures = 0
        # An answer proves the instance alive: an ejection still running
        # would only keep a good instance out (and, by the at-most-half
        # rule, keep a dead one in).
        ejected = self._ejected.get((dc, service))
        if ejected is not None and ejected.pop(key, None) is not None:
            state.ejected_until = self._clock.seconds()
            log.info("{dc}/{service}: {netloc} answered; ejection ended", dc=dc, service=service,
                     netloc=instance.netloc)
        # Healthy for a good while since its last ejection: forgive the past,
        # so the next ejection starts short again.
        if state.ejections and self._clock.seconds() > state.ejected_until + self._cap:
            state.ejections = 0
        if not state.ejections:
            del history[key]

    def failed(self, dc: str, service: str, instance: Instance, instances: Tuple[Instance, ...]) -> bool:
        """
        An attempt on C{instance} failed before any response (connect error,
        reset); C{instances} are the service's current ones.  Returns whether
        this failure ejected it.
        """
        key = _key(dc, service, instance)
        state = self._history.get(key)
        if state is None:
            state = self._history[key] = _History()
        state.consecutive_failures += 1
        if state.consecutive_failures < self.threshold:
            return False
        now = self._clock.seconds()
        ejected = self._ejected.setdefault((dc, service), {})
        if key in ejected and ejected[key] > now:
            return False
        # Only instances Consul still lists count towards the cap: one that
        # has gone critical meanwhile takes no share of the rotation.
        current = sum(1 for i in instances if ejected.get(_key(dc, service, i), 0.0) > now)
        if current + 1 > int(len(instances) * self._max_fraction):
            return False
        duration = min(self._cap, self._base * 2 ** min(state.ejections, 16))
        state.ejections += 1
        state.ejected_until = now + duration
        state.consecutive_failures = 0
        ejected[key] = state.ejected_until
        self.ejections_total += 1
        log.warn(
            "{dc}/{service}: ejecting {netloc} for {duration:.0f}s after {n} consecutive failures",
            dc=dc, service=service, netloc=instance.netloc, duration=duration, n=self.threshold,
        )
        return True

    def inflight(self, dc: str, service: str, instance: Instance) -> int:
        return self._inflight.get(_key(dc, service, instance), 0)

    def ejections(self) -> int:
        return self.ejections_total

    def all_ejected(self, dc: str, service: str, instances: Tuple[Instance, ...]) -> bool:
        """Whether every one of C{instances} is ejected right now."""
        ejected = self._ejected.get((dc, service))
        if not ejected:
            return False
        return all(self.is_ejected(dc, service, i) for i in instances)

    def is_ejected(self, dc: str, service: str, instance: Instance) -> bool:
        ejected = self._ejected.get((dc, service))
        if not ejected:
            return False
        until = ejected.get(_key(dc, service, instance))
        return until is not None and until > self._clock.seconds()


# Declared here, not with @implementer: a class decorator would keep mypyc
# (setup.py) from compiling the class as a native one.
classImplements(Outliers, IOutlierView)
