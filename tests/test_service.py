"""
Tests for L{restygate.daemon.assembly}'s listeners: the accept queue they ask for.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from restygate.front.listeners import LISTEN_BACKLOG, Listener, with_backlog


class BacklogTests(TestCase):
    def test_added(self) -> None:
        self.assertEqual(with_backlog("tcp:8080"), f"tcp:8080:backlog={LISTEN_BACKLOG}")
        self.assertEqual(
            with_backlog("ssl:443:privateKey=k.pem"), f"ssl:443:privateKey=k.pem:backlog={LISTEN_BACKLOG}"
        )
        self.assertEqual(with_backlog("unix:/run/rg.sock"), f"unix:/run/rg.sock:backlog={LISTEN_BACKLOG}")

    def test_own_kept(self) -> None:
        self.assertEqual(with_backlog("tcp:8080:backlog=7"), "tcp:8080:backlog=7")

    def test_other_kinds_untouched(self) -> None:
        self.assertEqual(with_backlog("systemd:domain=INET:index=0"), "systemd:domain=INET:index=0")

    def test_listener_queue(self) -> None:
        """
        A real listener asks the kernel for our queue length, or for the
        one its description names.
        """
        for description, expected in [
            ("tcp:0:interface=127.0.0.1", LISTEN_BACKLOG),
            ("tcp:0:interface=127.0.0.1:backlog=7", 7),
        ]:
            listener = Listener(description, Factory.forProtocol(Protocol), reactor)
            listener.startService()
            self.addCleanup(listener.stopService)
            self.assertEqual(listener.port.backlog, expected)  # type: ignore[union-attr]
