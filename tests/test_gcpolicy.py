"""
L{restygate.daemon.gcpolicy}: what survives a full collection is frozen (so
later full collections walk only what is new), garbage never is, and a
thaw on the clock frees what died while frozen.  The real collector of this
process, on a L{Clock}.
"""

from __future__ import annotations

import gc
import os
import tempfile
import weakref
from typing import Any, List, Optional

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from restygate.daemon.gcpolicy import SUPPORTED, THAW_INTERVAL, YOUNG_THRESHOLD, CollectionPolicy
from restygate.daemon.tap import Options, makeService


class _Node:
    """A tracked container that can take part in a reference cycle."""

    def __init__(self) -> None:
        self.other: Optional[_Node] = None


def _cycle() -> _Node:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return a


def _seen_by_collector(obj: object) -> bool:
    # gc.get_objects() lists the generations a collection walks, never the frozen ones.
    return any(o is obj for o in gc.get_objects())


class CollectionPolicyTests(TestCase):
    skip = None if SUPPORTED else "this interpreter has no gc.freeze (PyPy): the policy does nothing there"

    def started(self) -> CollectionPolicy:
        policy = CollectionPolicy(Clock())
        policy.startService()
        self.addCleanup(lambda: policy.running and policy.stopService())
        return policy

    def test_startup_objects_are_frozen(self) -> None:
        """
        Starting collects once and freezes what survived: this test's own
        objects are out of the collector's walks from then on.
        """
        kept = _cycle()
        self.started()
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertFalse(_seen_by_collector(kept))

    def test_survivors_of_a_full_collection_are_frozen_and_garbage_is_not(self) -> None:
        """
        A full collection frees the cycles nobody holds and freezes the
        objects still held, made since the last one.
        """
        self.started()
        kept = _cycle()
        dropped = weakref.ref(_cycle())
        self.assertTrue(_seen_by_collector(kept))
        self.assertIsNotNone(dropped())
        gc.collect()
        self.assertIsNone(dropped())
        self.assertFalse(_seen_by_collector(kept))

    def test_young_collections_freeze_nothing(self) -> None:
        """
        Only a full collection proves that everything left is reachable.
        """
        self.started()
        frozen = gc.get_freeze_count()
        kept = _cycle()
        gc.collect(1)
        self.assertEqual(gc.get_freeze_count(), frozen)
        self.assertTrue(_seen_by_collector(kept))

    def test_a_thaw_frees_what_died_frozen(self) -> None:
        """
        A cycle frozen while held and let go afterwards survives full
        collections (it is out of their sight) until the thaw, every
        C{thaw_interval} seconds on the clock, which frees it and freezes
        the survivors again.
        """
        clock = Clock()
        policy = CollectionPolicy(clock, thaw_interval=THAW_INTERVAL)
        policy.startService()
        self.addCleanup(policy.stopService)
        holder: List[Any] = [_cycle()]
        gc.collect()
        died = weakref.ref(holder.pop())
        gc.collect()
        self.assertIsNotNone(died())
        clock.advance(THAW_INTERVAL - 1)
        self.assertIsNotNone(died())
        self.assertEqual(policy.thaws, 0)
        kept = _cycle()
        clock.advance(1)
        self.assertIsNone(died())
        self.assertEqual(policy.thaws, 1)
        self.assertFalse(_seen_by_collector(kept))
        clock.advance(THAW_INTERVAL)
        self.assertEqual(policy.thaws, 2)

    def test_young_collections_come_less_often(self) -> None:
        before = gc.get_threshold()
        policy = self.started()
        self.assertEqual(gc.get_threshold(), (YOUNG_THRESHOLD, *before[1:]))
        policy.stopService()
        self.assertEqual(gc.get_threshold(), before)

    def test_stopping_gives_the_collector_back(self) -> None:
        """
        Once stopped, nothing is frozen and full collections freeze nothing.
        """
        policy = self.started()
        policy.stopService()
        self.assertEqual(gc.get_freeze_count(), 0)
        kept = _cycle()
        gc.collect()
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertTrue(_seen_by_collector(kept))
        policy.thaw()
        self.assertEqual(policy.thaws, 0)


class WiringTests(TestCase):
    """
    Every process runs the policy: a single-process gateway and the daemon
    of workers (each worker adds its own in its main).
    """

    def catalog(self) -> str:
        fd, path = tempfile.mkstemp(suffix=".toml")
        with os.fdopen(fd, "w") as f:
            f.write('[dc1]\nweb = [{ address = "127.0.0.1", port = 8000 }]\n')
        self.addCleanup(os.unlink, path)
        return path

    def policies(self, *argv: str) -> int:
        options = Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--catalog", self.catalog(), *argv])
        return sum(1 for child in makeService(options) if isinstance(child, CollectionPolicy))  # type: ignore[attr-defined]

    def test_single_process(self) -> None:
        self.assertEqual(self.policies(), 1)

    def test_daemon_of_workers(self) -> None:
        self.assertEqual(self.policies("--workers", "2"), 1)
