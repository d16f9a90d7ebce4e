"""
Keeps one (datacenter, service) fresh: a L{BlockingLoop} on its
C{/v1/health/service} query, turned into routing snapshots.

A dedicated watch holds a chain of blocking queries, so an idle gateway sends
Consul about one request per watched service per wait period and a health
change reaches routing as soon as Consul answers; a watch kept fresh by its
datacenter's change feed (not C{blocking}) fetches once, then once per
L{Watcher.refresh}.  The loop follows Consul's client rules (index resets,
pacing, backoff with jitter); through all of it the last good snapshot keeps
serving, and a datacenter Consul no longer knows is served on for a grace.
"""

from __future__ import annotations

import random
from typing import Callable, List, Optional, Protocol, Sequence, Tuple

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from restygate.discovery.consul.answers import HealthAnswer
from restygate.discovery.consul.client import Indexed
from restygate.discovery.consul.loop import BlockingLoop, describe
from restygate.discovery.consul.outage import Outage
from restygate.discovery.model import DiscoveryUnavailable, Snapshot, UnknownDatacenter
from restygate.pacing import LogBudget

__all__ = ["Watcher", "HealthSource", "instance_changes"]

log = Logger()


class HealthSource(Protocol):
    """
    What a watcher needs from a Consul client.
    """

    def health_service(
        self, dc: str, service: str, tags: Sequence[str], index: int, wait: float, urgent: bool = False,
        prompt: bool = False,
    ) -> Deferred[HealthAnswer]: ...


def instance_changes(clock: IReactorTime) -> LogBudget:
    """
    The log budget for watches' instance changes (10 lines a second, then a count).
    """
    return LogBudget(clock, log, "... and {count} more services' instances changed in {seconds:g}s")


class Watcher:
    """
    The watch of one (dc, service): blocking queries of its own, or, when
    C{blocking} is false, one-off fetches: a first one, then one per
    L{refresh} (the change feed of its datacenter calls it when the service
    changed).

    @ivar snapshot: the last good answer (through C{screen}), or L{None} before the first.
    @ivar screen: what a fed watch's answers go through before they serve
        (not while it blocks): its change feed drops the instances it has
        since seen not passing, or gone (L{answer_fetch} tells it whether
        the answer was asked before or after it saw them go).
    @ivar fetches: queries asked so far; C{answer_fetch}: which of them the
        answer held came from.
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
        changes: Optional[LogBudget] = None,
    ) -> None:
        self.datacenter_grace = datacenter_grace
        # Where "N passing instance(s)" goes: shared by every watch, so a
        # change to thousands of services is a few lines and a count.
        self._changes = changes or instance_changes(clock)
        # Told each time the snapshot is replaced (the daemon sends it on to its workers).
        self._on_change = on_change
        # The next fetch is for a change Consul recorded (the gate's prompt queue).
        self._prompt = False
        self.screen: Optional[Callable[[HealthAnswer], HealthAnswer]] = None
        # The last answer as Consul gave it, before the screen.
        self._answer: Optional[HealthAnswer] = None
        # Fetches asked so far, and which of them that answer came from: a
        # screen tells an answer asked after what it learnt from one asked before.
        self.fetches = 0
        self.answer_fetch = 0
        # When Consul first said it has no path to this datacenter, after it
        # had answered for it: the datacenter is served on until the grace.
        self._gone_since: Optional[float] = None
        self.dc = dc
        self.service = service
        self.tags = tags
        self.snapshot: Optional[Snapshot] = None
        self.last_used = clock.seconds()
        # Requests since the last ranking, and the decayed rate ranking reads
        # (L{restygate.discovery.consul.ranking}).
        self.hits = 0
        self.rate = 0.0
        self._source = source
        self._clock = clock
        self._wait = wait
        self._on_unknown_datacenter = on_unknown_datacenter
        self._waiters: List[Deferred[Snapshot]] = []
        self.loop = BlockingLoop(
            f"{dc}/{service}", self._ask, self._answered, clock, outage or Outage(clock),
            rng or random.Random(), self._failed, blocking=blocking,
        )

    @property
    def blocking(self) -> bool:
        return self.loop.blocking

    @property
    def index(self) -> int:
        return self.loop.index

    @property
    def running(self) -> bool:
        return self.loop.running

    @property
    def errors(self) -> int:
        return self.loop.errors

    @property
    def last_success(self) -> Optional[float]:
        return self.loop.last_success

    @property
    def last_error(self) -> Optional[str]:
        return self.loop.last_error

    def too_stale(self, max_stale: Optional[float], now: float) -> bool:
        """Whether its snapshot is too old to serve (C{max-stale}) while Consul fails."""
        # Stale only counts while Consul is failing: a quiet service whose
        # blocking query simply has not returned is fresh.
        last = self.last_success
        return max_stale is not None and self.errors > 0 and last is not None and now - last > max_stale

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()
        self._fail_waiters(DiscoveryUnavailable(f"stopped watching {self.dc}/{self.service}"))

    def promote(self) -> None:
        """
        Hold a blocking query of its own from now on.
        """
        self.loop.block()

    def demote(self) -> None:
        """
        Leave it to the change feed from now on, after one fetch now.
        """
        self.loop.unblock()

    def refresh(self, changed: bool = False) -> None:
        """
        Fetch again now (a one-off fetch of a watch that is not blocking),
        or as soon as the query in flight is answered (it may have been
        answered before the change); a retry already scheduled is brought
        forward.  C{changed}: Consul recorded a change of the service (the
        fetch goes ahead of mere re-issues and retries).
        """
        self._prompt = self._prompt or changed
        self.loop.refresh()

    def first_snapshot(self, timeout: float) -> Deferred[Snapshot]:
        """
        The snapshot as soon as there is one; fails with
        L{DiscoveryUnavailable} after C{timeout} seconds or on a Consul error.
        """
        if self.snapshot is not None:
            return succeed(self.snapshot)
        if not self.running:
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

    def _ask(self, index: int, urgent: bool) -> Deferred[Indexed]:
        # The first fetch may have a client waiting: it goes ahead of the
        # background queries.
        prompt, self._prompt = self._prompt, False
        self.fetches += 1
        d = self._source.health_service(
            self.dc, self.service, self.tags, index, self._wait, urgent=urgent, prompt=prompt
        )
        return d.addCallback(lambda answer: Indexed(answer.index, answer))

    def _answered(self, indexed: Indexed) -> None:
        answer: HealthAnswer = indexed.value
        self._gone_since = None
        # At most one query is in flight, and one dropped is never answered:
        # this is the answer to the last one asked.
        self._answer, self.answer_fetch = answer, self.fetches
        snapshot = self._install(answer)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(snapshot)

    def rescreen(self) -> None:
        """
        Put the last answer through C{screen} again (what the feed knows
        moved).  This only takes instances away: one the snapshot lacks
        comes back with the fetch that says it is still registered.
        """
        held, current = self._answer, self.snapshot
        if held is not None and current is not None:
            serving = set(current.instances)
            self._install(HealthAnswer(
                held.index, tuple(i for i in held.instances if i in serving), held.registered,
                tuple(i for i in held.warning if i in serving or i in current.warning),
            ))

    def _install(self, answer: HealthAnswer) -> Snapshot:
        # A watch with a blocking query of its own (promoted) sees each change
        # itself: the feed's view of what is not passing no longer applies.
        if self.screen is not None and not self.blocking:
            answer = self.screen(answer)
        current = self.snapshot
        # Spurious wake-ups (index moved, members did not) keep the snapshot
        # object, so nothing downstream sees churn.
        if (
            current is not None
            and current.instances == answer.instances
            and current.registered == answer.registered
            and current.warning == answer.warning
        ):
            return current
        self.snapshot = snapshot = Snapshot(
            self.dc, self.service, answer.instances, self.loop.index, answer.registered, answer.warning
        )
        if current is not None:
            self._changes(
                "{dc}/{service}: {count} passing instance(s)",
                dc=self.dc, service=self.service, count=len(answer.instances),
            )
        if self._on_change is not None:
            self._on_change(self)
        return snapshot

    def _failed(self, failure: Failure) -> bool:
        """
        Whether to go on after C{failure}: not once a datacenter Consul no
        longer knows is past its grace (or was never served).
        """
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
                    self._on_unknown_datacenter(self)
                    return False
        # No line per failed query: twistd writes debug events too, and an
        # outage is one line when it starts and one when it ends, with counts
        # (Outage); each watch's errors are on /status and /metrics.
        error = describe(failure)
        self._fail_waiters(DiscoveryUnavailable(f"discovery failed for {self.dc}/{self.service}: {error}"))
        return True

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(error)
