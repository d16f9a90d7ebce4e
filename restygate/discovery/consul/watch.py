"""
Keeps one (datacenter, service) fresh with a chain of Consul blocking queries.

Each answer schedules the next query, so an idle gateway sends Consul about
one request per watched service per wait period, and a health change reaches
routing as soon as Consul answers.  The loop follows Consul's client rules:
an index that goes backwards (a snapshot restore) resets the watch, an index
below 1 is treated as 1, answers that come back too fast are rate-limited so
a broken cluster degrades to polling instead of a hot loop, and errors back
off exponentially with jitter.  Through all of it the last good snapshot
keeps serving.
"""

from __future__ import annotations

import random
from typing import Callable, List, Optional, Protocol, Sequence, Tuple

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from restygate.discovery.consul.answers import HealthAnswer
from restygate.discovery.consul.loop import backoff_for, describe
from restygate.discovery.consul.outage import Outage
from restygate.pacing import Backoff, TokenBucket
from restygate.discovery.model import DiscoveryUnavailable, Snapshot, UnknownDatacenter

__all__ = ["Watcher", "HealthSource"]

log = Logger()


class HealthSource(Protocol):
    """
    What a watcher needs from a Consul client.
    """

    def health_service(
        self, dc: str, service: str, tags: Sequence[str], index: int, wait: float, urgent: bool = False
    ) -> Deferred[HealthAnswer]: ...


class Watcher:
    """
    The blocking-query loop for one (dc, service), or, when C{blocking} is
    false, its one-off fetches: a first one, then one per L{refresh} (the
    change feed of its datacenter calls it when the service changed).

    @ivar snapshot: the last good answer, or L{None} before the first.
    """

    def __init__(
        self,
        dc: str,
        service: str,
        source: HealthSource,
        clock: IReactorTime,
        tags: Tuple[str, ...] = (),
        wait: float = 60.0,
        rng: Optional[random.Random] = None,
        on_unknown_datacenter: Optional[Callable[[Watcher], None]] = None,
        on_change: Optional[Callable[[Watcher], None]] = None,
        datacenter_grace: float = 60.0,
        blocking: bool = True,
        outage: Optional[Outage] = None,
    ) -> None:
        self.datacenter_grace = datacenter_grace
        self.blocking = blocking
        # Told each time the snapshot is replaced (the daemon sends it on to its workers).
        self._on_change = on_change
        self._outage = outage or Outage(clock)
        self.refreshes = 0
        # A refresh asked while a fetch was in flight: fetch once more after it.
        self._again = False
        # When Consul first said it has no path to this datacenter, after it
        # had answered for it: the datacenter is served on until the grace.
        self._gone_since: Optional[float] = None
        self.dc = dc
        self.service = service
        self.tags = tags
        self.snapshot: Optional[Snapshot] = None
        self.last_used = clock.seconds()
        self.last_success: Optional[float] = None
        self.last_error: Optional[str] = None
        self._source = source
        self._clock = clock
        self._wait = wait
        self._index = 0
        self._rng = rng or random.Random()
        self._bucket = TokenBucket(rate=2.0, burst=3.0)
        self._backoff = Backoff(base=0.5, cap=30.0, rng=self._rng)
        self._on_unknown_datacenter = on_unknown_datacenter
        self._waiters: List[Deferred[Snapshot]] = []
        self._inflight: Optional[Deferred[HealthAnswer]] = None
        self._next: Optional[IDelayedCall] = None
        self._running = False

    @property
    def index(self) -> int:
        return self._index

    @property
    def running(self) -> bool:
        return self._running

    @property
    def errors(self) -> int:
        return self._backoff.failures

    def start(self) -> None:
        if not self._running:
            self._running = True
            self._query()

    def stop(self) -> None:
        self._running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._inflight is not None:
            self._inflight.cancel()
        self._outage.forget(self._name)
        self._fail_waiters(DiscoveryUnavailable(f"stopped watching {self.dc}/{self.service}"))

    @property
    def _name(self) -> str:
        return f"{self.dc}/{self.service}"

    def refresh(self) -> None:
        """
        Fetch again now (a one-off fetch of a watch that is not blocking),
        or as soon as the query in flight is answered (it may have been
        answered before the change); a retry already scheduled is brought
        forward.
        """
        if not self._running:
            return
        if self._inflight is not None:
            self._again = not self.blocking
            return
        if self._next is not None and self._next.active():
            self._next.cancel()
        self.refreshes += 1
        self._query()

    def first_snapshot(self, timeout: float) -> Deferred[Snapshot]:
        """
        The snapshot as soon as there is one; fails with
        L{DiscoveryUnavailable} after C{timeout} seconds or on a Consul error.
        """
        if self.snapshot is not None:
            return succeed(self.snapshot)
        if not self._running:
            return fail(DiscoveryUnavailable(f"not watching {self.dc}/{self.service}"))
        d: Deferred[Snapshot] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        d.addTimeout(timeout, self._clock)
        d.addErrback(self._timed_out)
        return d

    def _timed_out(self, failure: Failure) -> Failure:
        if failure.check(TimeoutError, CancelledError):
            raise DiscoveryUnavailable(
                f"no answer from discovery about {self.dc}/{self.service} in time"
            )
        return failure

    def _query(self) -> None:
        self._next = None
        if not self._running:
            return
        # The first fetch may have a client waiting: it goes ahead of the
        # background queries.
        self._inflight = d = self._source.health_service(
            self.dc, self.service, self.tags, self._index if self.blocking else 0, self._wait,
            urgent=self.snapshot is None,
        )
        handled: Deferred[Optional[float]] = d.addCallbacks(self._answered, self._failed)
        # A bug in the handlers above must not end the loop for good.
        handled.addErrback(self._crashed).addCallback(self._schedule)

    def _schedule(self, delay: Optional[float]) -> None:
        self._inflight = None
        if self._again and self._running:
            self._again = False
            self.refreshes += 1
            delay = 0.0
        if delay is not None and self._running:
            self._next = self._clock.callLater(delay, self._query)

    def _answered(self, answer: HealthAnswer) -> Optional[float]:
        now = self._clock.seconds()
        # An index below 1 is an agent bug; read it as 1 before comparing, so
        # that it neither counts as going backwards nor makes a hot loop.
        index = max(answer.index, 1)
        if index < self._index:
            log.info(
                "Consul index for {dc}/{service} went backwards ({old} -> {new}); resetting the watch",
                dc=self.dc, service=self.service, old=self._index, new=answer.index,
            )
            self._index = 0
        else:
            self._index = index
        self._outage.succeeded(self._name)
        self._backoff.reset()
        self._gone_since = None
        self.last_success = now
        self.last_error = None
        current = self.snapshot
        # Spurious wake-ups (index moved, members did not) keep the snapshot
        # object, so nothing downstream sees churn.
        snapshot = current
        if (
            snapshot is None
            or snapshot.instances != answer.instances
            or snapshot.registered != answer.registered
            or snapshot.warning != answer.warning
        ):
            self.snapshot = snapshot = Snapshot(
                self.dc, self.service, answer.instances, self._index, answer.registered, answer.warning
            )
            if current is not None:
                log.info(
                    "{dc}/{service}: {count} passing instance(s)",
                    dc=self.dc, service=self.service, count=len(answer.instances),
                )
            if self._on_change is not None:
                self._on_change(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(snapshot)
        delay = self._bucket.delay(now)
        return delay if self.blocking else None

    def _failed(self, failure: Failure) -> Optional[float]:
        if not self._running:
            return None
        if failure.check(UnknownDatacenter):
            now = self._clock.seconds()
            if self.snapshot is not None:
                if self._gone_since is None:
                    self._gone_since = now
                    log.warn(
                        "Consul no longer knows datacenter {dc}; serving {dc}/{service} from the last "
                        "view for {grace:g}s more",
                        dc=self.dc, service=self.service, grace=self.datacenter_grace,
                    )
            if self.snapshot is None or now - (self._gone_since or now) >= self.datacenter_grace:
                if self.snapshot is not None:
                    log.warn("datacenter {dc} is gone; {dc}/{service} is no longer served",
                             dc=self.dc, service=self.service)
                    self.snapshot = None
                self._fail_waiters(UnknownDatacenter(self.dc))
                if self._on_unknown_datacenter is not None:
                    self._running = False
                    self._on_unknown_datacenter(self)
                    return None
        self.last_error = describe(failure)
        delay = backoff_for(failure, self._backoff)
        # Ask afresh after a failure (the snapshot keeps serving meanwhile): an
        # agent back from a snapshot restore has a lower index, and a blocking
        # query on the old one would sit out its whole wait before showing it.
        self._index = 0
        # One line per outage (Outage), not one per watch per retry.
        self._outage.failed(self._name, self.last_error, getattr(failure.value, "status", None), self.refresh)
        log.debug(
            "Consul query for {dc}/{service} failed ({error}); {serving}, retrying in {delay:.1f}s",
            dc=self.dc, service=self.service, error=self.last_error, delay=delay,
            serving="serving the last known instances" if self.snapshot else "no instances known yet",
        )
        self._fail_waiters(DiscoveryUnavailable(f"discovery failed for {self.dc}/{self.service}: {self.last_error}"))
        return delay

    def _crashed(self, failure: Failure) -> float:
        log.failure("watcher for {dc}/{service} crashed", failure, dc=self.dc, service=self.service)
        return self._backoff.next()

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(error)

