"""
The lean reactor (L{restygate._compat.lean_reactor}): a plain read reaches
its selectable without Twisted's per-event log context, and every other
outcome is Twisted's own -- a selectable that raises is logged under its log
prefix and disconnected, a peer that closes ends the connection -- over a
real socket pair, one reactor turn at a time.
"""

from __future__ import annotations

import socket
from typing import Any, List, Optional

from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from restygate._compat import lean_reactor


class _Reader(FileDescriptor):
    """Reads one end of a socket pair, as a connection would."""

    def __init__(self, reactor: Any, sock: socket.socket, broken: bool = False) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.broken = broken
        self.got: List[bytes] = []
        self.lost: List[Failure] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "lean-reader"

    def doRead(self) -> Optional[BaseException]:
        data = self.sock.recv(65536)
        if self.broken:
            raise ValueError("a broken reader")
        if not data:
            return main.CONNECTION_DONE
        self.got.append(data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        super().connectionLost(reason)


class LeanReactorTests(SynchronousTestCase):
    def setUp(self) -> None:
        reactor = lean_reactor()
        if reactor is None:
            self.skipTest("no epoll on this platform: restygate runs Twisted's default reactor")
        self.reactor = reactor
        self.addCleanup(reactor.waker.connectionLost, None)
        self.ours, self.peer = socket.socketpair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)
        self.ours.setblocking(False)

    def _reader(self, broken: bool = False) -> _Reader:
        reader = _Reader(self.reactor, self.ours, broken)
        self.reactor.addReader(reader)
        self.addCleanup(self.reactor.removeAll)
        return reader

    def test_plain_read(self) -> None:
        reader = self._reader()
        self.peer.sendall(b"GET / HTTP/1.1\r\n\r\n")
        self.reactor.doPoll(1.0)
        self.assertEqual(reader.got, [b"GET / HTTP/1.1\r\n\r\n"])
        self.assertEqual(reader.lost, [])

    def test_exception_logged_and_disconnected(self) -> None:
        """
        As Twisted's own reactor does: the error is logged, with the
        selectable's log prefix as its system, and the selectable is
        disconnected with it.
        """
        events: List[Any] = []
        legacy_log.addObserver(events.append)
        self.addCleanup(legacy_log.removeObserver, events.append)
        reader = self._reader(broken=True)
        self.peer.sendall(b"x")
        self.reactor.doPoll(1.0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        errors = [event for event in events if event.get("isError")]
        self.assertEqual([event["system"] for event in errors], ["lean-reader"])
        self.assertEqual([lost.type for lost in reader.lost], [ValueError])
        self.assertNotIn(reader, self.reactor.getReaders())

    def test_peer_done(self) -> None:
        reader = self._reader()
        self.peer.sendall(b"last")
        self.peer.shutdown(socket.SHUT_WR)
        for _ in range(3):
            if reader.lost:
                break
            self.reactor.doPoll(1.0)
        self.assertEqual(reader.got, [b"last"])
        self.assertEqual([lost.type for lost in reader.lost], [ConnectionDone])
        self.assertNotIn(reader, self.reactor.getReaders())
