"""
End-to-end test rig: a Consul API test server, real backends and restygate's
real gateway service, all listening on loopback, plus an HTTP client.

Tests drive Consul through the test server's register/health knobs and talk
to the gateway over real sockets, so what they check is what a user gets.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Dict, Iterable, List, Optional, Tuple

import treq
from treq.client import HTTPClient
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IResponse
from zope.interface import provider

from restygate.daemon.load import load
from restygate.daemon.assembly import Gateway, make_gateway
from tests.support.backends import Backend
from restygate.testing.consul import ConsulServer

reactor: Any = _reactor


class RawClient(Protocol):
    """
    A bare TCP client for what an HTTP library will not send: crafted
    request lines, Expect: 100-continue, hand-made chunked bodies.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


async def raw_connect(port: int) -> RawClient:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client: RawClient = await connectProtocol(endpoint, RawClient())
    return client


class GatewayRig:
    """
    One gateway in front of a Consul test server; everything it starts is
    stopped by the test case's cleanups.
    """

    def __init__(
        self,
        case: TestCase,
        consul: Optional[ConsulServer] = None,
        config_file: Optional[str] = None,
        **config: Any,
    ) -> None:
        self.case = case
        self.consul = consul or ConsulServer(reactor, jitter=False)
        self._consul_port: IListeningPort = self.consul.listen(reactor)
        case.addCleanup(self._stop_consul)
        settings: Dict[str, Any] = {
            "consul": self.consul.address,
            "listen": ["tcp:0:interface=127.0.0.1"],
            "consul-wait": 30,
            # Off unless a test asks (admin="tcp:0:interface=127.0.0.1"):
            # the default fixed port would clash between rigs.
            "admin": "none",
        }
        settings.update({key.replace("_", "-"): value for key, value in config.items()})
        # Built as `twistd restygate --config FILE` would, the settings in the
        # place of the command line; a reload builds it again the same way.
        options = dict(settings, config=config_file)
        self.config = load(options, {})
        self.gateway: Gateway = make_gateway(self.config, reactor, load=partial(load, options, {}))
        self.gateway.startService()
        case.addCleanup(self.gateway.stopService)
        port = self.gateway.listeners[0].port
        assert port is not None
        self.port: int = port.getHost().port
        admin = self.gateway.admin_listener
        self.admin_port: Optional[int] = (
            admin.port.getHost().port if admin is not None and admin.port is not None else None
        )
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.client = HTTPClient(Agent(reactor, pool=self.pool))
        case.addCleanup(self.pool.closeCachedConnections)

    def _stop_consul(self) -> Deferred[Any]:
        self.consul.disconnect_all()
        stopped: Deferred[Any] = Deferred.fromCoroutine(_stop_port(self._consul_port))
        return stopped

    def watcher(self, dc: str, service: str) -> Any:
        discovery: Any = self.gateway.engine.discovery
        return discovery.watchers[(dc, service)]

    def gateway_instances(self, dc: str, service: str) -> int:
        snapshot = self.watcher(dc, service).snapshot
        return -1 if snapshot is None else len(snapshot.instances)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def backend(self, name: str = "backend", interface: str = "127.0.0.1") -> Backend:
        backend = Backend(name)
        backend.listen(reactor, interface=interface)
        self.case.addCleanup(backend.stop)
        return backend

    def register(
        self,
        backend: Any,
        service: str = "web",
        dc: str = "dc1",
        tags: Iterable[str] = (),
        status: str = "passing",
        node: Optional[str] = None,
    ) -> str:
        if dc not in self.consul.datacenters:
            self.consul.add_datacenter(dc)
        return self.consul.register_service(
            dc,
            node or f"node-{backend.name}",
            backend.host,
            service,
            backend.port,
            service_id=f"{service}-{backend.name}",
            tags=tuple(tags),
            service_address=backend.host,
            status=status,
        )

    async def get(self, path: str, **kwargs: Any) -> Tuple[IResponse, bytes]:
        return await self.request("GET", path, **kwargs)

    async def request(self, method: str, path: str, **kwargs: Any) -> Tuple[IResponse, bytes]:
        response: IResponse = await self.client.request(method, self.url(path), **kwargs)
        body: bytes = await treq.content(response)
        return response, body

    async def admin(self, path: str, **kwargs: Any) -> Tuple[IResponse, bytes]:
        """
        GET C{path} from the admin listener (the rig needs C{admin=...}).
        """
        assert self.admin_port is not None, "start the rig with admin='tcp:0:interface=127.0.0.1'"
        response: IResponse = await self.client.get(f"http://127.0.0.1:{self.admin_port}{path}", **kwargs)
        body: bytes = await treq.content(response)
        return response, body

    async def json(self, path: str, **kwargs: Any) -> Tuple[IResponse, Any]:
        response, body = await self.get(path, **kwargs)
        return response, json.loads(body)


async def _stop_port(port: IListeningPort) -> None:
    await port.stopListening()


async def settle(seconds: float = 0.0) -> None:
    """
    Let the reactor turn (for events that need a round trip on loopback).
    """
    await deferLater(reactor, seconds, lambda: None)


async def eventually(check: Any, timeout: float = 3.0, step: float = 0.01) -> None:
    """
    Poll C{check()} until it returns true; fail the test after C{timeout}.
    Used only where the outcome depends on another process-like party
    (a Consul answer, a socket closing), never to time the gateway.
    """
    waited = 0.0
    while not check():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        await settle(step)
        waited += step


def captured_log(case: TestCase) -> List[str]:
    """
    The text of every log event from now to the end of the test.
    """
    lines: List[str] = []

    @provider(ILogObserver)
    def observe(event: Dict[str, Any]) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines
