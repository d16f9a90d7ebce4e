"""
The HTTP/1.1 wire to the Consul agent (L{restygate.discovery.consul.wire}),
over real loopback sockets: answers read whole (with a length or in chunks),
connections kept and reused up to the idle limit, closed when idle too long,
when they say anything while idle or when their query is cancelled, and a
query whose kept connection the agent closed asked once more on a new one.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from restygate.discovery.consul.wire import IDLE_TIMEOUT, AgentConnectionLost, AgentPool, agent_endpoint
from restygate.testing.consul import ConsulServer
from tests.support.harness import eventually


class _Scripted(Protocol):
    """
    Answers each request with the next of the factory's replies; a reply
    of C{None} closes the connection instead.
    """

    def connectionMade(self) -> None:
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.factory.requests.append(data)
        if not data.endswith(b"\r\n\r\n"):
            return
        reply = self.factory.replies.pop(0)
        if reply is None:
            self.transport.loseConnection()
        else:
            self.transport.write(reply)


class _ScriptedAgent(Factory):
    protocol = _Scripted

    def __init__(self, replies: List[Any]) -> None:
        self.replies = replies
        self.requests: List[bytes] = []
        self.connections: List[_Scripted] = []


_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Consul-Index: 7\r\n\r\n[]"


class AgentPoolTests(TestCase):
    async def scripted(self, replies: List[Any], idle_limit: int = 4, clock: Any = reactor) -> Any:
        agent = _ScriptedAgent(replies)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(agent)
        self.addCleanup(port.stopListening)
        pool = AgentPool(clock, agent_endpoint(reactor, "http", "127.0.0.1", port.getHost().port), "agent", idle_limit)
        self.addCleanup(self._close, pool, agent)
        return agent, pool

    async def _close(self, pool: AgentPool, agent: _ScriptedAgent) -> None:
        await pool.close()
        for connection in agent.connections:
            connection.transport.abortConnection()

    async def test_answers_from_the_test_server_on_kept_connections(self) -> None:
        consul = ConsulServer(reactor, jitter=False)
        port = consul.listen(reactor)
        self.addCleanup(port.stopListening)
        self.addCleanup(consul.disconnect_all)
        consul.register_service("dc1", "n1", "127.0.0.1", "web", 8080, service_id="web-1")
        host, _, number = consul.address.rpartition(":")
        pool = AgentPool(reactor, agent_endpoint(reactor, "http", host, int(number)), consul.address, 4)
        self.addCleanup(pool.close)
        first = await pool.get(b"/v1/health/service/web?dc=dc1", b"Accept: application/json\r\n")
        self.assertEqual(first.status, 200)
        self.assertIn(b'"web-1"', first.body)
        self.assertEqual(first.headers[b"x-consul-index"], str(consul.index).encode())
        self.assertEqual(pool.idle, 1)
        missing = await pool.get(b"/v1/health/service/web?dc=nowhere", b"")
        self.assertEqual(missing.status, 500)
        self.assertIn(b"No path to datacenter", missing.body)
        self.assertEqual(consul.connections.peak, 1)

    async def test_new_connections_log_nothing(self) -> None:
        events: List[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        agent, pool = await self.scripted([_OK, _OK])
        await gatherResults([pool.get(b"/", b""), pool.get(b"/", b"")])
        self.assertEqual(len(agent.connections), 2)
        self.assertEqual([e for e in events if e.get("log_namespace", "").startswith("restygate.")], [])

    async def test_an_agent_named_by_host_name(self) -> None:
        """
        An agent named by a host name (not an address) is reached through
        name resolution; the Host header names it as given.
        """
        agent = _ScriptedAgent([_OK])
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(agent)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        pool = AgentPool(reactor, agent_endpoint(reactor, "http", "localhost", number), f"localhost:{number}", 4)
        self.addCleanup(self._close, pool, agent)
        self.assertEqual((await pool.get(b"/v1/status/leader", b"")).status, 200)
        self.assertIn(f"Host: localhost:{number}\r\n".encode(), agent.requests[0])

    async def test_a_chunked_answer_is_read_whole(self) -> None:
        agent, pool = await self.scripted([
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n",
        ])
        answer = await pool.get(b"/v1/catalog/datacenters", b"")
        self.assertEqual((answer.status, answer.body), (200, b"[1,2]"))
        self.assertEqual(agent.requests, [b"GET /v1/catalog/datacenters HTTP/1.1\r\nHost: agent\r\n\r\n"])

    async def test_idle_connections_kept_up_to_the_limit(self) -> None:
        agent, pool = await self.scripted([_OK] * 6, idle_limit=2)
        await gatherResults([pool.get(b"/", b"") for _ in range(3)])
        self.assertEqual(len(agent.connections), 3)
        self.assertEqual(pool.idle, 2)
        await gatherResults([pool.get(b"/", b"") for _ in range(2)])
        self.assertEqual(len(agent.connections), 3)

    async def test_a_connection_closed_by_the_agent_answers_nothing_more(self) -> None:
        agent, pool = await self.scripted([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", _OK])
        await pool.get(b"/", b"")
        self.assertEqual(pool.idle, 0)
        await pool.get(b"/", b"")
        self.assertEqual(len(agent.connections), 2)

    async def test_a_kept_connection_the_agent_closed_is_replaced_once(self) -> None:
        agent, pool = await self.scripted([_OK, None, _OK, None, None])
        await pool.get(b"/", b"")
        # The agent closes the kept connection as the next query arrives on it:
        # asked again on a new connection, which answers.
        self.assertEqual((await pool.get(b"/", b"")).status, 200)
        self.assertEqual(len(agent.connections), 2)
        # A new connection closed before answering is not asked again.
        await self.assertFailure(pool.get(b"/", b""), AgentConnectionLost)

    async def test_bytes_while_idle_close_the_connection(self) -> None:
        agent, pool = await self.scripted([_OK, _OK])
        await pool.get(b"/", b"")
        agent.connections[0].transport.write(b"HTTP/1.1 200 OK\r\n")
        await eventually(lambda: pool.idle == 0)
        await pool.get(b"/", b"")
        self.assertEqual(len(agent.connections), 2)

    async def test_bytes_after_the_answer_close_the_connection(self) -> None:
        stray = b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\nX-Consul-Index: 1\r\n\r\noops"
        for after in (b"HTTP/1.1 200 OK\r\n", stray):
            agent, pool = await self.scripted([_OK + after, _OK])
            answer = await pool.get(b"/", b"")
            self.assertEqual((answer.status, answer.body, answer.headers[b"x-consul-index"]), (200, b"[]", b"7"))
            self.assertEqual(pool.idle, 0)
            await pool.get(b"/", b"")
            self.assertEqual(len(agent.connections), 2)

    async def test_a_cancelled_query_aborts_its_connection(self) -> None:
        agent, pool = await self.scripted([])
        agent.replies.append(b"HTTP/1.1 200 OK\r\n")  # a head that never ends
        query = pool.get(b"/", b"")
        await eventually(lambda: bool(agent.requests))
        query.cancel()
        await self.assertFailure(query, CancelledError)
        await eventually(lambda: not agent.connections[0].transport.connected)
        self.assertEqual(pool.idle, 0)

    async def test_an_idle_connection_is_closed_after_the_idle_timeout(self) -> None:
        clock = Clock()
        agent, pool = await self.scripted([_OK], clock=clock)
        await pool.get(b"/", b"")
        self.assertEqual(pool.idle, 1)
        clock.advance(IDLE_TIMEOUT)
        await eventually(lambda: pool.idle == 0)
        await deferLater(reactor, 0, lambda: None)
        self.assertFalse(agent.connections[0].transport.connected)

    async def test_close_waits_for_the_idle_connections(self) -> None:
        agent, pool = await self.scripted([_OK])
        await pool.get(b"/", b"")
        closing: Deferred[None] = pool.close()
        await closing
        self.assertEqual(pool.idle, 0)
        await eventually(lambda: not agent.connections[0].transport.connected)
