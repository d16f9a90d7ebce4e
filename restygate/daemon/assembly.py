"""
Assembles a running gateway from a L{Config}: discovery, balancer, upstream
pool, the engine, the lean HTTP/1.1 front and its listeners, as one
L{MultiService}.

Children stop in reverse order of addition, so the listeners (added last)
stop accepting before the pools and watchers they depend on go away.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger

from restygate import __version__
from restygate.compiled import data_path
from restygate.ops.accesslog import AccessLog
from restygate.ops.admin import Admin
from restygate.ops.views import IDiscoveryView, IListenerView, Inspected
from restygate.discovery.catalog import StaticCatalog
from restygate.config import Config
from restygate.discovery.consul.client import ConsulClient
from restygate.discovery.consul.coordinates import NearestDatacenters
from restygate.proxy.engine import Engine
from restygate.discovery.consul.assemble import consul_discovery
from restygate.discovery.consul.source import ConsulDiscovery
from restygate.discovery.remote import RemoteDiscovery
from restygate.daemon.reload import Reconfigurable, Reloader
from restygate.front.listeners import Listener
from restygate.front.front import GatewayFront
from restygate.upstream.pool import Upstream

__all__ = ["make_gateway", "Gateway"]

log = Logger()


class _Closing(Service):
    """
    Closes a pool's idle connections when the gateway stops.
    """

    def __init__(self, close: Any) -> None:
        self._close = close

    def stopService(self) -> Deferred[None]:
        super().stopService()
        result: Deferred[None] = self._close()
        return result


class _Announce(Service):
    def __init__(self, config: Config) -> None:
        self._config = config

    def startService(self) -> None:
        super().startService()
        source = (
            f"static catalog {self._config.catalog}"
            if self._config.catalog
            else f"Consul at {self._config.consul.base_url}"
        )
        log.info(
            "restygate {version} ({data_path} data path) listening on {listen}, discovery from {source}",
            version=__version__, data_path=data_path(), listen=", ".join(self._config.listen), source=source,
        )


class Gateway(MultiService):
    """
    A running gateway: its parts stay reachable for the admin side and tests.

    Stopping is graceful and ordered: stop accepting, let in-flight requests
    finish (up to the drain timeout), and only then close pools and watchers
    those requests may still need.
    """

    engine: Engine
    front: GatewayFront
    listeners: List[Listener]
    access_log: AccessLog
    admin_listener: Optional[Listener]
    # The parts that keep values from the config, told of a new one on reload.
    reconfigurable: List[Reconfigurable]

    @property
    def config(self) -> Config:
        return self.engine.config

    def reconfigure(self, config: Config) -> None:
        """
        Put a validated C{config} in force: requests read it from the
        engine from now on, and every part caching a value takes the new one.
        """
        self.engine.config = config
        for part in self.reconfigurable:
            part.reconfigure(config)

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for listener in self.listeners:
            await listener.stopService()
        in_flight = self.front.in_flight()
        if in_flight:
            log.info("draining {n} in-flight request(s)", n=in_flight)
        await self.front.drain(self.engine.config.drain_timeout)
        await super().stopService()


def make_gateway(
    config: Config,
    reactor: Any = None,
    load: Optional[Callable[[], Config]] = None,
    endpoints: Optional[Sequence[IStreamServerEndpoint]] = None,
    discovery: Optional[Union[StaticCatalog, ConsulDiscovery, RemoteDiscovery]] = None,
) -> Gateway:
    """
    The whole gateway for C{config}, ready to start.

    @param load: builds the config again from its sources, for a reload
        (SIGHUP); without it a reload has nothing to re-read.
    @param endpoints: where to listen for each of C{config.listen}, when
        not simply there (a worker adopts its parent's sockets).
    @param discovery: where instances come from, when not from C{config}
        (a worker routes with its parent's view).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    root = Gateway()
    _Announce(config).setServiceParent(root)
    # Added early so it stops late: the drained requests' lines get written.
    root.access_log = AccessLog(config, reactor)
    root.access_log.setServiceParent(root)
    consul: Optional[ConsulClient] = None
    if discovery is None and config.catalog:
        discovery = StaticCatalog(config.catalog, reactor, config.tags, table=dict(config.services))
    elif discovery is None:
        discovery, consul = consul_discovery(config, reactor)
        _Closing(consul.close).setServiceParent(root)
    discovery.setServiceParent(root)
    upstream = Upstream(reactor, config)
    _Closing(upstream.close).setServiceParent(root)
    nearest = NearestDatacenters(consul.coordinates, reactor) if consul is not None else None
    engine = Engine(discovery, upstream, reactor, config, observers=[root.access_log], nearest=nearest)
    _Closing(engine.deadlines.close).setServiceParent(root)
    front = GatewayFront(engine, reactor, timeout=config.body_idle_timeout)
    root.engine = engine
    root.front = front
    where: Sequence[Optional[IStreamServerEndpoint]] = endpoints or [None] * len(config.listen)
    root.listeners = [
        Listener(description, front, reactor, endpoint) for description, endpoint in zip(config.listen, where)
    ]
    for listener in root.listeners:
        listener.setServiceParent(root)
    root.admin_listener = None
    if config.admin:
        admin = Admin(_inspected(root, discovery, upstream), reactor, ping=consul.ping if consul is not None else None)
        engine.observers.append(admin.metrics.observe)
        admin.setServiceParent(root)
        root.admin_listener = Listener(config.admin, admin.site, reactor)
        root.admin_listener.setServiceParent(root)
    root.reconfigurable = [discovery, upstream, root.access_log, front, engine.policies]
    # Last, so it stops first: no reload into a gateway going away.
    Reloader(root, load or (lambda: config), reactor).setServiceParent(root)
    return root


def _inspected(gateway: Gateway, discovery: IDiscoveryView, upstream: Upstream) -> Inspected:
    """
    What the admin side of C{gateway} shows.
    """

    def listeners() -> List[Tuple[str, IListenerView]]:
        roles: List[Tuple[str, IListenerView]] = [("public", listener) for listener in gateway.listeners]
        if gateway.admin_listener is not None:
            roles.append(("admin", gateway.admin_listener))
        return roles

    return Inspected(
        discovery=discovery,
        outliers=gateway.engine.outliers,
        pool=upstream,
        config=lambda: gateway.config,
        listeners=listeners,
        tunnels=lambda: gateway.engine.tunnels,
        routing=gateway.engine.policies,
    )
