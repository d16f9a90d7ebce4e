"""
A datacenter's change feed: what keeps every service watched without a
blocking query of its own fresh, on one held connection per datacenter.

The feed is a blocking query on C{/v1/health/state/any?filter=Status !=
"passing"}: it wakes on any check change in the datacenter and its body is
only what is not passing (small, however many services).  A service whose
fingerprint of not-passing checks (L{restygate.discovery.consul.checks})
moved stops serving the instances now not passing at once (from the checks
the answer names: the watches' answers go through L{ChangeFeed.screen});
when some check of it is no longer as bad as before (an instance may pass
again: only Consul knows whether it is still registered) it is also told
to fetch once more (a one-off C{/v1/health/service} query, ahead of the
gate's mere re-issues).
Registrations do not always show there (a new instance with a passing
check): those move the datacenter's catalog index, which its service-names
query follows (L{ConsulNames}), and each move brings one full, non-blocking
C{/v1/health/state/any} answer whose fingerprints of every check find the
services that changed.  So per health flip: one small feed answer, and a
fetch of just that service when it gets better; per registration, one full
answer more.
Two full answers in turn also tell which instances are evidently gone (their
checks, or their node's own, were in the first and are not in the second:
deregistered meanwhile, during an outage too): those stop serving at once,
and stay screened out of every answer to a fetch asked before that read,
until the fetch it sends answers for itself.  A full read that fails is
part of the outage: read again as soon as Consul answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Set, Tuple

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from restygate.discovery.consul.answers import HealthAnswer
from restygate.discovery.consul.checks import (
    NOT_PASSING, CheckStates, Present, fingerprints, gone, only_worse, present, screen, without,
)
from restygate.discovery.consul.client import ConsulClient, Indexed
from restygate.discovery.consul.gate import ConsulGate
from restygate.discovery.consul.loop import BlockingLoop, describe
from restygate.discovery.consul.names import ConsulNames
from restygate.discovery.consul.outage import Outage
from restygate.discovery.consul.watch import Watcher

__all__ = ["ChangeFeed", "FEED_PACE"]

#: Change feed answers per second per datacenter, at most.
FEED_PACE = 25.0
#: A new feed's first full read waits until no urgent request (a first fetch
#: a client waits for) has come for this many seconds...
BASELINE_QUIET = 1.0
#: ... but no longer than this after the feed started.
BASELINE_LATEST = 30.0


@dataclass
class _Gone:
    """
    A watch's instances a full read found gone, and the watch's fetches
    asked by then: only the answer to a later one may have them again.
    """

    fetches: int
    pairs: Set[Tuple[str, str]]
    nodes: Set[str]


class ChangeFeed:
    """
    The change feed of datacenter C{dc}; C{watches()} are the watches it keeps fresh.

    @ivar refetches: one-off fetches it asked for, in all.
    @ivar full_answers: full C{/v1/health/state/any} answers it read.
    """

    def __init__(
        self,
        dc: str,
        client: ConsulClient,
        clock: IReactorTime,
        outage: Outage,
        rng: random.Random,
        wait: float,
        watches: Callable[[], Iterable[Watcher]],
        names: Optional[ConsulNames] = None,
        gate: Optional[ConsulGate] = None,
    ) -> None:
        self.dc = dc
        self._client = client
        self._clock = clock
        self._watches = watches
        self._wait = wait
        self._names = names
        self._gate = gate
        self._outage = outage
        self._full_name = f"full read of {dc}"
        self._started_at = 0.0
        self._baseline: Optional[IDelayedCall] = None
        # Fingerprints of every check (the last full answer) and of what is not passing.
        self._full: Optional[Dict[str, Tuple[int, int]]] = None
        self._not_passing: Dict[str, Tuple[int, int]] = {}
        # What is not passing, as the last feed answer (or a full answer at least as new) said.
        self._bad = CheckStates()
        self._services_on_node: Dict[str, Set[str]] = {}
        # What had checks in the last full answer; per watch, what has gone since.
        self._present: Optional[Present] = None
        self._gone: Dict[Watcher, _Gone] = {}
        self._full_asked: Optional[Deferred[None]] = None
        self._full_again = False
        self.refetches = 0
        self.full_answers = 0
        # The last answer's time and the watches it sent fetching, for the lag.
        self._cycle_started: Optional[float] = None
        self._cycle: Tuple[Watcher, ...] = ()
        # Up to FEED_PACE answers a second: a burst of changes costs one
        # answer per 1/FEED_PACE s, each covering every change since the last.
        self.loop = BlockingLoop(
            f"change feed of {dc}", self._query, self._answered, clock, outage, rng, pace=FEED_PACE
        )

    def start(self) -> None:
        if self._names is not None:
            self._names.catalog_listeners[self.dc.lower()] = self.catalog_changed
        self._started_at = self._clock.seconds()
        self.loop.start()
        self._baseline_due()

    def _baseline_due(self) -> None:
        """
        The first full read (what later ones are compared with) once the
        first fetches have quietened: with a gateway that just started
        (or a datacenter just asked for) every request is a first fetch, and
        reading and parsing every check of the datacenter (~700 KB for 3,000
        checks) at that moment would hold them all up.  Until then nothing
        is missed: the feed's own blocking query applies what is not passing
        (L{_on_node}), a catalog change reads at once, and that first read
        fetches every watch whose instances it does not account for.
        """
        self._baseline = None
        if self._present is not None or self._full_asked is not None or not self.running:
            return
        now = self._clock.seconds()
        quiet = now - self._gate.urgent_at if self._gate is not None else BASELINE_QUIET
        if quiet < BASELINE_QUIET and now - self._started_at < BASELINE_LATEST:
            self._baseline = self._clock.callLater(BASELINE_QUIET - quiet, self._baseline_due)
            return
        self.catalog_changed()

    def stop(self) -> None:
        if self._baseline is not None and self._baseline.active():
            self._baseline.cancel()
        self._baseline = None
        if self._names is not None:
            self._names.catalog_listeners.pop(self.dc.lower(), None)
        if self._full_asked is not None:
            self._full_asked.cancel()
        self._outage.forget(self._full_name)
        self.loop.stop()

    @property
    def running(self) -> bool:
        return self.loop.running

    def lag(self) -> float:
        """
        Seconds from the feed's last answer until every fetch it caused had
        its answer (still counting while one has not), plus how far behind
        the leader that answer was (X-Consul-LastContact): how old a change
        can be when routing sees it.
        """
        if self._cycle_started is None:
            return 0.0
        now = self._clock.seconds()
        started = self._cycle_started
        done = [
            (w.last_success if w.last_success is not None and w.last_success >= started else now) - started
            for w in self._cycle
            if w.running
        ]
        return max(done, default=0.0) + self._client.last_contact.get(self.dc, 0.0)

    def catalog_changed(self) -> None:
        """
        The datacenter's services changed (or the feed starts): read every
        check once more, at most one such read at a time.
        """
        if self._full_asked is not None:
            self._full_again = True
            return
        # Ahead of every paced query (one at a time per datacenter, and
        # coalesced: bounded like first fetches): one read takes what went
        # away out of every watch at once and finds what to fetch, so it must
        # not queue behind another datacenter's thousands of fetches.
        asked = self._client.check_states(self.dc, urgent=True)
        self._full_asked = asked.addCallbacks(self._full_answer, self._full_failed)
        self._full_asked.addCallback(self._full_done)

    def _full_failed(self, failure: Failure) -> None:
        # Read again as soon as Consul answers anything (or the outage's
        # once-a-second retry), not in a loop meanwhile: until a read lands,
        # nothing compares what went away, and no catalog change may come
        # to ask for one.
        if not failure.check(CancelledError):
            self._outage.failed(self._full_name, describe(failure), getattr(failure.value, "status", None),
                                self.catalog_changed)

    def _full_done(self, _: object) -> None:
        self._full_asked = None
        if self._full_again and self.running:
            self._full_again = False
            self.catalog_changed()

    def _full_answer(self, answer: Indexed) -> None:
        self._outage.succeeded(self._full_name)
        states: CheckStates = answer.value
        self.full_answers += 1
        on_node_before, self._services_on_node = self._services_on_node, states.services_on_node()
        present_before, self._present = self._present, present(states)
        changed = set()
        if present_before is not None:
            changed = self._screen_gone(*gone(present_before, self._present), on_node_before)
        else:
            changed = self._unaccounted(self._present)
        full = fingerprints(states, self._services_on_node)
        before, self._full = self._full, full
        changed |= {
            w for w in self._watches()
            if (before is not None and before.get(w.service.lower()) != full.get(w.service.lower()))
            or (w.snapshot is not None and full.get(w.service.lower(), (0, 0))[1] > w.index)
        }
        # A read started before the feed's last answer may be older than it:
        # what is not passing then comes from the feed alone.
        if answer.index >= self.loop.index:
            changed |= self._not_passing_now(states.not_passing())
        self._refresh(changed)

    def _unaccounted(self, read: Present) -> Set[Watcher]:
        """
        The watches with an instance that has no check in C{read}, the first
        full read: deregistered before it, maybe (or one without checks):
        fetched once, Consul says which.
        """
        pairs = read[0]
        return {
            w for w in self._watches() if w.snapshot is not None and any(
                (i.node, i.id) not in pairs.get(w.service.lower(), ())
                for i in w.snapshot.registered or w.snapshot.instances + w.snapshot.warning
            )
        }

    def _on_node(self, states: CheckStates) -> Mapping[str, Iterable[str]]:
        """
        Which services each node of C{states} has: from the last full read,
        or, before the first, every watched one for a node with checks of
        its own (its instances of any of them must stop serving at once).
        """
        if self._present is not None or not states.per_node:
            return self._services_on_node
        names = {w.service.lower() for w in self._watches()}
        return {node: names for node in states.per_node}

    def _query(self, index: int, urgent: bool) -> Deferred[Indexed]:
        # Prompt: at most FEED_PACE a second, and every change waits for it.
        return self._client.check_states(
            self.dc, index, self._wait, urgent=urgent, filter=NOT_PASSING, prompt=True
        )

    def _answered(self, answer: Indexed) -> None:
        self._refresh(self._not_passing_now(answer.value))

    def screen(self, watcher: Watcher, answer: HealthAnswer) -> HealthAnswer:
        """
        C{answer} for C{watcher} without what this feed last saw not passing,
        nor, when it was asked before the full read that found them gone,
        the instances that read found gone.
        """
        answer = screen(answer, self._bad, watcher.service)
        found = self._gone.get(watcher)
        if found is None:
            return answer
        if watcher.answer_fetch > found.fetches:
            # Asked after that read: Consul's own word on them, whatever it is.
            del self._gone[watcher]
            return answer
        return without(answer, found.pairs, found.nodes)

    def _screens(self, watcher: Watcher) -> None:
        if watcher.screen is None:
            watcher.screen = lambda answer, watcher=watcher: self.screen(watcher, answer)

    def _screen_gone(
        self, pairs: Mapping[str, Set[Tuple[str, str]]], nodes: Set[str], on_node_before: Mapping[str, Set[str]]
    ) -> Set[Watcher]:
        """
        The instances of C{pairs} (per service) and on C{nodes} stop
        serving now; the watches that had them are returned, to fetch (which
        confirms it, or brings back one Consul has again).
        """
        watches = list(self._watches())
        live = set(watches)
        self._gone = {w: found for w, found in self._gone.items() if w in live}
        marked: Set[Watcher] = set()
        if not pairs and not nodes:
            return marked
        for watcher in watches:
            name = watcher.service.lower()
            held = watcher.snapshot
            on = {i.node for i in held.registered + held.instances + held.warning} if held is not None else set()
            mine = pairs.get(name, set())
            theirs = {n for n in nodes if n in on or name in on_node_before.get(n, ())}
            if not mine and not theirs:
                continue
            self._screens(watcher)
            found = self._gone.setdefault(watcher, _Gone(watcher.fetches, set(), set()))
            found.fetches = watcher.fetches
            found.pairs |= mine
            found.nodes |= theirs
            watcher.rescreen()
            marked.add(watcher)
        return marked

    def _not_passing_now(self, states: CheckStates) -> Set[Watcher]:
        """
        Take C{states} as what is not passing now: the watches it changes
        stop serving what no longer passes at once; those that may have
        got better are returned, to fetch.
        """
        now = fingerprints(states, self._on_node(states))
        before, self._not_passing = self._not_passing, now
        bad_before, self._bad = self._bad, states
        fetch = set()
        for watcher in self._watches():
            self._screens(watcher)
            if before.get(watcher.service.lower()) != now.get(watcher.service.lower()):
                watcher.rescreen()
                if not only_worse(bad_before, states, watcher.service):
                    fetch.add(watcher)
        return fetch

    def _refresh(self, changed: Set[Watcher]) -> None:
        self._cycle_started = self._clock.seconds()
        self._cycle = tuple(changed)
        self.refetches += len(changed)
        for watcher in changed:
            watcher.refresh(changed=True)
