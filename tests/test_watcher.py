"""
Tests for L{restygate.discovery.consul.watch}: the blocking-query loop for one
(datacenter, service), driven by a L{Clock} and a scripted health source
whose answers each test gives by hand.
"""

from __future__ import annotations

import random
from typing import List

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from restygate.discovery.consul.client import ConsulError, HealthAnswer
from restygate.discovery.model import DiscoveryUnavailable, Instance, Snapshot, UnknownDatacenter
from restygate.discovery.consul.watch import Watcher
from restygate.pacing import Backoff, TokenBucket
from tests.support.scripted import Query, ScriptedSource

A = Instance("10.0.0.1", 8000, id="a")
B = Instance("10.0.0.2", 8000, id="b")
C = Instance("2001:db8::3", 8000, id="c")


def next_delay(clock: Clock) -> float:
    """
    The delay of the one call of the watch's own the clock has pending (not
    its outage's once-a-second retry, L{tests.test_outage}).
    """
    calls = [c for c in clock.getDelayedCalls() if getattr(c.func, "__name__", "") != "_ask_one"]
    assert len(calls) == 1, calls
    return calls[0].getTime() - clock.seconds()


class _WatcherTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.source = ScriptedSource()
        self.unknown: List[Watcher] = []
        self.watcher = self.make_watcher()

    def make_watcher(self, seed: int = 7, **kwargs: object) -> Watcher:
        watcher = Watcher(
            "dc1",
            "web",
            self.source,
            self.clock,
            tags=("prod",),
            wait=30.0,
            rng=random.Random(seed),
            **kwargs,  # type: ignore[arg-type]
        )
        self.addCleanup(watcher.stop)
        return watcher

    def answer_and_continue(self, index: int, *instances: Instance) -> Query:
        """
        Answer the pending query, let the loop run its zero-delay step, and
        return the next query.
        """
        before = len(self.source.queries)
        self.source.last.answer(index, *instances)
        self.clock.advance(0)
        self.assertEqual(len(self.source.queries), before + 1)
        return self.source.last


class QueryLoopTests(_WatcherTestCase):
    def test_not_started(self) -> None:
        """
        Nothing is asked before C{start}, and waiting then fails at once.
        """
        self.assertEqual(self.source.queries, [])
        self.failureResultOf(self.watcher.first_snapshot(5), DiscoveryUnavailable)

    def test_first_query(self) -> None:
        """
        The first query is non-blocking (index 0) with the watcher's tags and
        wait.
        """
        self.watcher.start()
        self.assertEqual(len(self.source.queries), 1)
        query = self.source.last
        self.assertEqual(
            (query.dc, query.service, query.tags, query.index, query.wait),
            ("dc1", "web", ("prod",), 0, 30.0),
        )

    def test_start_twice(self) -> None:
        self.watcher.start()
        self.watcher.start()
        self.assertEqual(len(self.source.queries), 1)

    def test_first_answer(self) -> None:
        """
        The first answer fills the snapshot and fires the waiters with it.
        """
        self.watcher.start()
        waiting = self.watcher.first_snapshot(5)
        self.assertNoResult(waiting)
        self.source.last.answer(10, A, B)
        snapshot = self.successResultOf(waiting)
        self.assertEqual(snapshot, Snapshot("dc1", "web", (A, B), 10))
        self.assertIs(self.watcher.snapshot, snapshot)
        self.assertEqual(self.watcher.last_success, 0.0)
        self.assertIsNone(self.watcher.last_error)

    def test_waiters_share_one_query(self) -> None:
        self.watcher.start()
        waiting = [self.watcher.first_snapshot(5) for _ in range(3)]
        self.assertEqual(len(self.source.queries), 1)
        self.source.last.answer(3, A)
        results = [self.successResultOf(d) for d in waiting]
        self.assertIs(results[0], results[1])
        self.assertIs(results[0], results[2])
        self.assertEqual(len(self.source.queries), 1)

    def test_first_snapshot_when_known(self) -> None:
        """
        Once there is a snapshot, waiting for one returns it at once.
        """
        self.watcher.start()
        self.source.last.answer(3, A)
        self.assertIs(self.successResultOf(self.watcher.first_snapshot(5)), self.watcher.snapshot)

    def test_empty_answer_is_a_snapshot(self) -> None:
        """
        No passing instance is an answer, not an error.
        """
        self.watcher.start()
        waiting = self.watcher.first_snapshot(5)
        self.source.last.answer(3)
        self.assertEqual(self.successResultOf(waiting).instances, ())

    def test_next_query_carries_index(self) -> None:
        self.watcher.start()
        query = self.answer_and_continue(10, A)
        self.assertEqual((query.index, query.wait, query.tags), (10, 30.0, ("prod",)))
        query = self.answer_and_continue(12, A)
        self.assertEqual(query.index, 12)
        self.assertEqual(self.watcher.index, 12)

    def test_same_index_kept(self) -> None:
        """
        A blocking query that ran out its wait answers with the same index;
        the next one blocks on it again.
        """
        self.watcher.start()
        self.answer_and_continue(10, A)
        self.clock.advance(30)
        self.assertEqual(self.answer_and_continue(10, A).index, 10)

    def test_index_backwards_resets(self) -> None:
        """
        An index that goes backwards (a snapshot restore) makes the next
        query non-blocking; the one after blocks on the new index.
        """
        self.watcher.start()
        self.answer_and_continue(10, A)
        query = self.answer_and_continue(7, A, B)
        self.assertEqual(query.index, 0)
        self.assertEqual(self.watcher.snapshot, Snapshot("dc1", "web", (A, B), 0))
        self.assertEqual(self.answer_and_continue(7, A, B).index, 7)

    def test_index_zero_treated_as_one(self) -> None:
        """
        Consul never sends index 0; if an agent does, the watch blocks on 1
        instead of polling.
        """
        self.watcher.start()
        self.assertEqual(self.answer_and_continue(0, A).index, 1)
        # Still 0: neither "backwards" nor a non-blocking query.
        self.assertEqual(self.answer_and_continue(0, A).index, 1)
        self.assertEqual(self.answer_and_continue(0, A).index, 1)

    def test_negative_index_treated_as_one(self) -> None:
        self.watcher.start()
        self.assertEqual(self.answer_and_continue(-5, A).index, 1)
        self.assertEqual(self.answer_and_continue(-5, A).index, 1)

    def test_zero_after_real_index_resets(self) -> None:
        """
        Index 0 after a real index is going backwards: reset, then block on 1.
        """
        self.watcher.start()
        self.answer_and_continue(10, A)
        self.assertEqual(self.answer_and_continue(0, A).index, 0)
        self.assertEqual(self.answer_and_continue(0, A).index, 1)

    def test_spurious_wakeup_keeps_snapshot(self) -> None:
        """
        A bigger index with the same members keeps the very same snapshot
        object; a real change replaces it.
        """
        self.watcher.start()
        self.answer_and_continue(10, A, B)
        first = self.watcher.snapshot
        self.answer_and_continue(11, A, B)
        self.assertIs(self.watcher.snapshot, first)
        self.assertEqual(self.watcher.index, 11)
        self.answer_and_continue(12, A, C)
        changed = self.watcher.snapshot
        self.assertIsNot(changed, first)
        self.assertEqual(changed, Snapshot("dc1", "web", (A, C), 12))
        # The old snapshot was not changed in place.
        self.assertEqual(first, Snapshot("dc1", "web", (A, B), 10))

    def test_tag_only_change_is_a_change(self) -> None:
        self.watcher.start()
        self.answer_and_continue(10, A)
        first = self.watcher.snapshot
        retagged = Instance(A.address, A.port, tags=("canary",), id=A.id)
        self.answer_and_continue(11, retagged)
        self.assertIsNot(self.watcher.snapshot, first)
        assert self.watcher.snapshot is not None
        self.assertEqual(self.watcher.snapshot.instances, (retagged,))

    def test_slow_answers_not_delayed(self) -> None:
        """
        Answers that took a blocking query's time are followed by the next
        query at once, however many there are.
        """
        self.watcher.start()
        for index in range(1, 20):
            self.clock.advance(30)
            query = self.answer_and_continue(index, A)
            self.assertEqual(query.index, index)


class RateLimitTests(_WatcherTestCase):
    def test_fast_answers_rate_limited(self) -> None:
        """
        After a small burst, answers that come back at once make the loop wait
        instead of spinning.
        """
        self.watcher.start()
        burst = 0
        while True:
            self.source.last.answer(burst + 1, A)
            burst += 1
            self.clock.advance(0)
            if self.source.last.deferred.called:
                break
            self.assertLess(burst, 10, "never rate-limited")
        self.assertGreaterEqual(burst, 2)
        delay = next_delay(self.clock)
        self.assertGreater(delay, 0)
        self.clock.advance(delay / 2)
        self.assertTrue(self.source.last.deferred.called)
        self.clock.advance(delay / 2)
        self.assertFalse(self.source.last.deferred.called)
        # Still answering at once: it settles to a steady, bounded rate.
        starts = []
        for index in range(20, 40):
            self.source.last.answer(index, A)
            delay = next_delay(self.clock)
            self.assertGreater(delay, 0)
            self.clock.advance(delay)
            starts.append(self.clock.seconds())
        self.assertGreaterEqual(starts[-1] - starts[0], 19 * 0.1)

    def test_bucket_refills(self) -> None:
        bucket = TokenBucket(rate=2.0, burst=3.0)
        self.assertEqual([bucket.delay(0.0) for _ in range(3)], [0.0, 0.0, 0.0])
        self.assertEqual(bucket.delay(0.0), 0.5)
        self.assertEqual(bucket.delay(0.5), 0.5)
        # A quiet while fills it back up to the burst, not beyond.
        self.assertEqual([bucket.delay(100.0) for _ in range(3)], [0.0, 0.0, 0.0])
        self.assertGreater(bucket.delay(100.0), 0.0)


class BackoffTests(_WatcherTestCase):
    def fail_repeatedly(self, watcher: Watcher, times: int) -> List[float]:
        """
        Fail every query C{times} times; the delays before each retry.
        """
        delays = []
        for _ in range(times):
            self.source.last.fail(ConsulError("Consul answered 500: No cluster leader", 500))
            delay = next_delay(self.clock)
            delays.append(delay)
            before = len(self.source.queries)
            self.clock.advance(delay)
            self.assertEqual(len(self.source.queries), before + 1)
        return delays

    def test_delays_grow_to_a_cap(self) -> None:
        self.watcher.start()
        delays = self.fail_repeatedly(self.watcher, 14)
        self.assertEqual(self.watcher.errors, 14)
        for earlier, later in zip(delays[:6], delays[1:7]):
            self.assertGreater(later, earlier)
        self.assertGreater(delays[6], 10 * delays[0])
        for delay in delays:
            self.assertGreater(delay, 0)
            self.assertLessEqual(delay, 30.0)
        # Capped, not stuck at its floor.
        self.assertGreaterEqual(min(delays[-4:]), 15.0)

    def test_jitter(self) -> None:
        """
        Watchers with different random sources do not retry in lockstep.
        """
        self.watcher.start()
        first = self.fail_repeatedly(self.watcher, 8)
        self.watcher.stop()
        other = self.make_watcher(seed=8)
        other.start()
        second = self.fail_repeatedly(other, 8)
        self.assertNotEqual(first, second)
        self.assertEqual(len(set(first) & set(second)), 0)

    def test_snapshot_served_during_errors(self) -> None:
        self.watcher.start()
        waiting = self.watcher.first_snapshot(5)
        self.source.last.answer(10, A, B)
        snapshot = self.successResultOf(waiting)
        self.clock.advance(0)
        self.fail_repeatedly(self.watcher, 5)
        self.assertIs(self.watcher.snapshot, snapshot)
        self.assertIs(self.successResultOf(self.watcher.first_snapshot(5)), snapshot)
        self.assertEqual(self.watcher.last_error, "Consul answered 500: No cluster leader")
        self.assertEqual(self.watcher.last_success, 0.0)

    def test_asked_afresh_after_errors(self) -> None:
        """
        After a failure the watch asks without an index: Consul may be back
        from a snapshot restore with a lower one. The snapshot serves meanwhile.
        """
        self.watcher.start()
        self.answer_and_continue(10, A)
        self.fail_repeatedly(self.watcher, 3)
        self.assertEqual(self.source.last.index, 0)
        self.assertEqual(self.watcher.snapshot.instances if self.watcher.snapshot else None, (A,))

    def test_recovery_resets_backoff(self) -> None:
        self.watcher.start()
        delays = self.fail_repeatedly(self.watcher, 6)
        self.assertGreater(delays[-1], 8.0)
        self.answer_and_continue(10, A)
        self.assertEqual(self.watcher.errors, 0)
        self.assertIsNone(self.watcher.last_error)
        self.source.last.fail(ConsulError("Consul answered 500: No cluster leader", 500))
        self.assertLessEqual(next_delay(self.clock), delays[0] * 2)
        self.assertLessEqual(next_delay(self.clock), 0.5)

    def test_timeouts_and_other_errors_retried(self) -> None:
        """
        Any failure of the source, not only Consul's, is retried.
        """
        self.watcher.start()
        self.source.last.fail(CancelledError())
        self.assertEqual(self.watcher.last_error, "timed out")
        self.clock.advance(next_delay(self.clock))
        self.source.last.fail(ConnectionRefusedError("refused"))
        self.assertEqual(self.watcher.last_error, "ConnectionRefusedError: refused")
        self.clock.advance(next_delay(self.clock))
        self.assertEqual(len(self.source.pending()), 1)

    def test_backoff_bounds(self) -> None:
        """
        Each delay is between half and all of a doubling ceiling, capped.
        """
        backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
        ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
        for ceiling in ceilings:
            delay = backoff.next()
            self.assertGreaterEqual(delay, ceiling / 2)
            self.assertLessEqual(delay, ceiling)
        self.assertEqual(backoff.failures, len(ceilings))
        backoff.reset()
        self.assertEqual(backoff.failures, 0)
        self.assertLessEqual(backoff.next(), 1.0)

    def test_backoff_many_failures(self) -> None:
        """
        A very long outage neither overflows nor passes the cap.
        """
        backoff = Backoff(base=0.5, cap=30.0, rng=random.Random(1))
        for _ in range(5000):
            delay = backoff.next()
        self.assertLessEqual(delay, 30.0)
        self.assertGreaterEqual(delay, 15.0)


class FailureBeforeSnapshotTests(_WatcherTestCase):
    def test_first_snapshot_times_out(self) -> None:
        self.watcher.start()
        waiting = self.watcher.first_snapshot(5)
        self.clock.advance(4.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.1)
        failure = self.failureResultOf(waiting, DiscoveryUnavailable)
        self.assertIn("dc1/web", str(failure.value))
        # The query goes on, and its answer still lands.
        self.assertEqual(len(self.source.pending()), 1)
        self.source.last.answer(3, A)
        self.assertEqual(self.watcher.snapshot, Snapshot("dc1", "web", (A,), 3))

    def test_timeout_leaves_no_timer(self) -> None:
        """
        A waiter that got its snapshot leaves no timeout behind.
        """
        self.watcher.start()
        waiting = self.watcher.first_snapshot(5)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.source.last.answer(3, A)
        self.successResultOf(waiting)
        self.assertTrue(all(call.getTime() == 0 for call in self.clock.getDelayedCalls()))

    def test_caller_cancels_waiter(self) -> None:
        """
        A waiter its caller gave up on is dropped; the others still get the
        snapshot.
        """
        self.watcher.start()
        gone = self.watcher.first_snapshot(5)
        staying = self.watcher.first_snapshot(5)
        gone.cancel()
        self.failureResultOf(gone, DiscoveryUnavailable)
        self.source.last.answer(3, A)
        self.assertEqual(self.successResultOf(staying).instances, (A,))

    def test_error_fails_waiters(self) -> None:
        self.watcher.start()
        waiting = [self.watcher.first_snapshot(5), self.watcher.first_snapshot(5)]
        self.source.last.fail(ConsulError("Consul answered 403: ACL not found", 403))
        for d in waiting:
            failure = self.failureResultOf(d, DiscoveryUnavailable)
            self.assertIn("ACL not found", str(failure.value))
        # And it retries.
        self.clock.advance(next_delay(self.clock))
        self.assertEqual(len(self.source.pending()), 1)
        later = self.watcher.first_snapshot(5)
        self.source.last.answer(3, A)
        self.assertEqual(self.successResultOf(later).instances, (A,))

    def test_unknown_datacenter_stops(self) -> None:
        """
        With an owner to tell, "no path to datacenter" before any snapshot
        fails the waiters with L{UnknownDatacenter}, tells the owner, and
        ends the loop.
        """
        watcher = self.make_watcher(on_unknown_datacenter=self.unknown.append)
        watcher.start()
        waiting = watcher.first_snapshot(5)
        self.source.last.fail(UnknownDatacenter("dc1"))
        failure = self.failureResultOf(waiting, UnknownDatacenter)
        self.assertEqual(failure.value.dc, "dc1")
        self.assertEqual(self.unknown, [watcher])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertEqual(len(self.source.queries), 1)
        self.failureResultOf(watcher.first_snapshot(5), DiscoveryUnavailable)

    def test_unknown_datacenter_without_owner(self) -> None:
        """
        With nobody to tell, each waiter still learns the datacenter is
        unknown.
        """
        self.watcher.start()
        waiting = self.watcher.first_snapshot(5)
        self.source.last.fail(UnknownDatacenter("dc1"))
        self.failureResultOf(waiting, UnknownDatacenter)

    def test_unknown_datacenter_after_snapshot(self) -> None:
        """
        Once the datacenter answered, losing the path to it is an outage:
        the snapshot keeps serving and the loop retries.
        """
        watcher = self.make_watcher(on_unknown_datacenter=self.unknown.append)
        watcher.start()
        self.source.last.answer(3, A)
        snapshot = watcher.snapshot
        self.clock.advance(0)
        self.source.last.fail(UnknownDatacenter("dc1"))
        self.assertEqual(self.unknown, [])
        self.assertIs(watcher.snapshot, snapshot)
        self.assertIs(self.successResultOf(watcher.first_snapshot(5)), snapshot)
        self.clock.advance(next_delay(self.clock))
        self.assertEqual(len(self.source.pending()), 1)

    def test_handler_bug_does_not_end_loop(self) -> None:
        """
        An answer that breaks the handler is logged and retried like an
        error, so the loop never ends for good.
        """
        self.watcher.start()
        self.source.last.deferred.callback(HealthAnswer(None, (A,)))  # type: ignore[arg-type]
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.clock.advance(next_delay(self.clock))
        self.source.last.answer(3, A)
        self.assertEqual(self.watcher.snapshot, Snapshot("dc1", "web", (A,), 3))


class StopTests(_WatcherTestCase):
    def test_stop_cancels_query(self) -> None:
        self.watcher.start()
        waiting = self.watcher.first_snapshot(5)
        query = self.source.last
        self.watcher.stop()
        self.assertTrue(query.cancelled)
        self.failureResultOf(waiting, DiscoveryUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertEqual(len(self.source.queries), 1)

    def test_stop_during_backoff(self) -> None:
        self.watcher.start()
        self.source.last.fail(ConsulError("Consul answered 500: No cluster leader", 500))
        # Its backoff, and the outage's once-a-second retry of a failing query.
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.watcher.stop()
        self.assertFalse(self.source.last.cancelled)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertEqual(len(self.source.queries), 1)

    def test_stop_during_rate_limit(self) -> None:
        self.watcher.start()
        for index in range(1, 10):
            self.source.last.answer(index, A)
            if next_delay(self.clock) > 0:
                break
            self.clock.advance(0)
        self.assertGreater(next_delay(self.clock), 0)
        self.watcher.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_keeps_snapshot(self) -> None:
        self.watcher.start()
        self.source.last.answer(3, A)
        snapshot = self.watcher.snapshot
        self.watcher.stop()
        self.assertIs(self.watcher.snapshot, snapshot)

    def test_restart(self) -> None:
        self.watcher.start()
        self.answer_and_continue(3, A)
        self.watcher.stop()
        self.watcher.start()
        self.assertEqual(len(self.source.pending()), 1)
        self.assertEqual(self.source.last.index, 3)

    def test_first_snapshot_not_running(self) -> None:
        self.watcher.start()
        self.watcher.stop()
        self.failureResultOf(self.watcher.first_snapshot(5), DiscoveryUnavailable)
