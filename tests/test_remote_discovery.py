"""
Tests for L{restygate.discovery.remote.RemoteDiscovery}, a worker's view of
the daemon's discovery, driven line by line as the daemon's hub would (the
whole channel runs end to end in test_workers_discovery).
"""

from __future__ import annotations

from dataclasses import replace
from typing import List

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from restygate.discovery.channel import decode_snapshot, encode_error, encode_snapshot
from restygate.discovery.model import DiscoveryUnavailable, Instance, Snapshot, UnknownService
from restygate.discovery.remote import RemoteDiscovery

A = Instance("10.0.0.1", 80, tags=("a",), meta=(("k", "v"),), id="a", node="n1")
B = Instance("10.0.0.2", 80, id="b")


class RemoteDiscoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sent: List[bytes] = []
        self.remote = RemoteDiscovery(self.sent.append, self.clock, timeout=5.0, report_interval=30.0)
        self.remote.startService()
        self.addCleanup(self.remote.stopService)

    def push(self, version: int, snapshot: Snapshot) -> None:
        self.assertTrue(self.remote.received(f"snap {encode_snapshot(version, snapshot)}".encode()))

    def test_view_pushed_versioned_and_served_from_memory(self) -> None:
        self.push(2, Snapshot("dc1", "Web", (A, B), 7))
        self.push(1, Snapshot("dc1", "Web", (B,), 5))  # older: ignored
        snapshot = self.successResultOf(self.remote.lookup("DC1", "web"))
        self.assertEqual((snapshot.dc, snapshot.service, snapshot.instances, snapshot.index), ("dc1", "Web", (A, B), 7))
        self.assertEqual(self.sent, [])
        self.assertTrue(self.remote.has_instances("dc1", "Web"))
        self.assertFalse(self.remote.has_instances("dc1", "WEB"))
        self.clock.advance(30)
        self.assertEqual(self.sent, [b"used dc1/Web/1\n"])
        self.assertTrue(self.remote.received(b'drop ["dc1", "Web"]'))
        self.assertEqual(self.remote.watched(), [])

    def test_a_miss_asks_the_daemon_once(self) -> None:
        first = self.remote.lookup("dc1", "web")
        second = self.remote.lookup("dc1", "WEB")
        self.assertEqual(self.sent, [b"want 1 dc1 web\n"])
        body = encode_snapshot(3, Snapshot("dc1", "Web", (A,), 9))
        self.remote.received(b'answer 1 {"snapshot": ' + body.encode() + b"}")
        self.assertEqual(self.successResultOf(first).instances, (A,))
        self.assertEqual(self.successResultOf(second).instances, (A,))
        unknown = self.remote.lookup("dc1", "ghost")
        self.remote.received(b"answer 2 " + encode_error(UnknownService("dc1", "ghost")).encode())
        self.assertEqual(self.failureResultOf(unknown, UnknownService).value.service, "ghost")

    def test_an_answer_naming_the_version_just_pushed(self) -> None:
        # The daemon pushes a new snapshot to every worker, then answers the asking one with its version.
        first = self.remote.lookup("dc1", "web")
        self.push(4, Snapshot("dc1", "Web", (B,), 11))
        self.assertEqual(self.successResultOf(first).instances, (B,))
        self.remote.received(b'answer 1 {"version":4}')
        self.assertEqual(self.successResultOf(self.remote.lookup("dc1", "web")).index, 11)
        # One whose snapshot never came (dropped meanwhile) fails rather than waits.
        missing = self.remote.lookup("dc1", "api")
        self.remote.received(b'answer 2 {"version":5}')
        self.failureResultOf(missing, DiscoveryUnavailable)

    def test_a_daemon_that_never_answers(self) -> None:
        d = self.remote.lookup("dc1", "web")
        self.clock.advance(6.5)
        self.failureResultOf(d, DiscoveryUnavailable)
        # The next lookup asks again.
        again = self.remote.lookup("dc1", "web")
        self.assertEqual(self.sent, [b"want 1 dc1 web\n", b"want 2 dc1 web\n"])
        self.clock.advance(6.5)
        self.failureResultOf(again, DiscoveryUnavailable)

    def test_ready_when_the_daemon_says_so(self) -> None:
        self.assertFalse(self.remote.answered())
        self.assertTrue(self.remote.received(b"ready"))
        self.assertTrue(self.remote.answered())
        self.assertFalse(self.remote.received(b"ping"))


class InstanceIdentityTests(SynchronousTestCase):
    """
    An instance is a key in several per-request tables; its hash is worked
    out once, and must agree with equality.
    """

    def test_equal_instances_hash_alike(self) -> None:
        a = Instance("10.0.0.1", 80, tags=("https",), meta=(("v", "2"),), id="a", node="n")
        b = Instance("10.0.0.1", 80, tags=("https",), meta=(("v", "2"),), id="a", node="n")
        self.assertEqual((a, hash(a)), (b, hash(b)))
        self.assertEqual({a: 1}[b], 1)

    def test_every_field_tells_instances_apart(self) -> None:
        a = Instance("10.0.0.1", 80, tags=("https",), meta=(("v", "2"),), id="a", node="n")
        changes = [
            {"address": "10.0.0.2"}, {"port": 81}, {"tags": ()}, {"meta": ()},
            {"id": "b"}, {"node": "m"}, {"weight": 2}, {"warning_weight": 0},
        ]
        table = {a: "a"}
        for change in changes:
            other = replace(a, **change)
            self.assertNotEqual(other, a, change)
            self.assertNotIn(other, table, change)


class ChannelFormatTests(SynchronousTestCase):
    """
    A snapshot crosses the channel whole: every field, and one object per
    instance however many of its tuples name it.
    """

    def test_round_trip(self) -> None:
        a = Instance("10.0.0.1", 80, tags=("https", "v2"), meta=(("zone", "a"), ("v", "2")), id="a", node="n1",
                     weight=3, warning_weight=0)
        b = Instance("fd00::2", 8080, id="b", node="n2")
        c = Instance("10.0.0.3", 80, id="c", node="n3")
        snapshot = Snapshot("dc1", "Web", (a,), 42, registered=(a, b, c), warning=(b,))
        version, back = decode_snapshot(encode_snapshot(9, snapshot))
        self.assertEqual((version, back), (9, snapshot))
        self.assertIs(back.instances[0], back.registered[0])
        self.assertIs(back.warning[0], back.registered[1])
        self.assertEqual(back.instances[0].netloc, "10.0.0.1:80")
        self.assertEqual(back.warning[0].netloc, "[fd00::2]:8080")

    def test_without_registered(self) -> None:
        a = Instance("10.0.0.1", 80, id="a")
        snapshot = Snapshot("dc1", "web", (a,), 1)
        self.assertEqual(decode_snapshot(encode_snapshot(1, snapshot)), (1, snapshot))
