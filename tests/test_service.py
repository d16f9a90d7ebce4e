"""
Tests for L{restygate.front.listeners}: the accept queue listeners ask for,
a port that cannot be had, and endpoints that answer C{listen()} later.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from restygate.front.listeners import LISTEN_BACKLOG, Listener, with_backlog
from tests.support.harness import captured_log

LOOPBACK = "tcp:0:interface=127.0.0.1"


@implementer(IStreamServerEndpoint)
class LateEndpoint:
    """
    An endpoint that answers C{listen()} only when the test says so, as one
    resolving a name or waiting for a socket would.
    """

    def __init__(self) -> None:
        self.asked: List[IProtocolFactory] = []
        self.cancelled = False
        self.answer: Deferred[IListeningPort] = Deferred(self._cancel)

    def _cancel(self, answer: Deferred[IListeningPort]) -> None:
        self.cancelled = True

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        self.asked.append(protocolFactory)
        return self.answer


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


class LateListenTests(TestCase):
    def setUp(self) -> None:
        self.factory = Factory.forProtocol(Protocol)
        self.endpoint = LateEndpoint()
        self.listener = Listener(LOOPBACK, self.factory, reactor, self.endpoint)

    def start(self) -> None:
        # As twistd does: privileged start, then start.
        self.listener.privilegedStartService()
        self.listener.startService()

    async def test_port_kept_when_it_comes(self) -> None:
        """
        An endpoint answering later is asked once; its port, when it comes,
        is the listener's, and stopping the listener closes it.
        """
        self.start()
        self.assertEqual(self.endpoint.asked, [self.factory])
        self.assertIsNone(self.listener.listening())
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.factory)
        self.endpoint.answer.callback(port)
        self.assertIs(self.listener.listening(), port)
        number = port.getHost().port
        await self.listener.stopService()
        self.assertIsNone(self.listener.listening())
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", number)
        await self.assertFailure(connectProtocol(client, Protocol()), ConnectionRefusedError)

    def test_late_refusal_logged(self) -> None:
        """
        A refusal that comes later is one line in the log, naming the
        description, and leaves the listener unbound.
        """
        lines = captured_log(self)
        self.start()
        self.endpoint.answer.errback(OSError("Address already in use"))
        self.assertIsNone(self.listener.listening())
        self.assertIn(f"restygate: cannot listen on {LOOPBACK}: Address already in use", lines)

    def test_stop_while_waiting(self) -> None:
        """
        Stopping before the endpoint answered cancels the wait, quietly.
        """
        lines = captured_log(self)
        self.start()
        self.listener.stopService()
        self.assertTrue(self.endpoint.cancelled)
        self.assertEqual([line for line in lines if "cannot listen" in line], [])


class RefusedTests(TestCase):
    async def test_port_taken(self) -> None:
        """
        A port that cannot be had ends the start with one line naming it.
        """
        taken: Any = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(taken.stopListening)
        description = f"tcp:{taken.getHost().port}:interface=127.0.0.1"
        listener = Listener(description, Factory.forProtocol(Protocol), reactor)
        error = self.assertRaises(SystemExit, listener.privilegedStartService)
        self.assertTrue(str(error).startswith(f"restygate: cannot listen on {description}: "), str(error))
        self.assertIsNone(listener.listening())
