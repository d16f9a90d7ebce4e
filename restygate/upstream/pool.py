"""
The upstream side: a pool of HTTP/1.1 keep-alive connections per instance,
speaking restygate's own client protocol (L{restygate.upstream.client}).

It is a pool of its own with C{HTTPConnectionPool}'s knob, not
C{HTTPConnectionPool} itself: that pool is built around Twisted's
C{HTTP11ClientProtocol} (its private states, a Deferred chain per request,
its own retry of requests it thinks safe), and plugging another protocol in
means imitating those private states.  What restygate needs from a pool is
small: per instance key, a stack of idle connections, at most C{pool-size}
of them kept (C{maxPersistentPerHost}'s meaning: more may be open at once,
only that many wait idle), idle ones closed after
L{IDLE_CONNECTION_TIMEOUT}, and nothing retried behind the proxy's back.  A
connection that receives bytes while idle, or that a response left in
doubt, closes itself and never comes back here.

Connections go only to the address and port of an L{Instance} that
discovery handed us; the endpoint is built from that instance, never from
anything the client sent.

An instance is reached over HTTPS when Consul says it speaks it: a tag
C{https}, or C{Meta.protocol = "https"}.  Its certificate must then be valid
for C{Meta.tls_server_name} if the instance has one, else for its address
(an IP address must be among the certificate's IP SANs), and chain to the
C{upstream-ca} bundle or, without one, to the platform's trust store; only
C{upstream-tls-insecure} turns the check off.  Pooled connections are keyed
by scheme, address, port and that name, so a plain and a TLS connection to
one host:port, or TLS connections checked for different names, never stand
in for each other.

C{connect-timeout} bounds the TCP connect; the TLS handshake that follows
counts against C{upstream-timeout}, as the wait for the response does.

The settings (connect timeout, pool size, TLS trust) are replaced whole by
L{Upstream.reconfigure}: requests in flight and pooled connections keep what
they were made with, new connections get the new settings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Hashable, List, Optional, Tuple

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure as TwistedFailure
from zope.interface import classImplements

from restygate._compat import IOpenSSLTrustRoot
from restygate.config import Config
from restygate.discovery.model import Instance
from restygate.ops.views import IPoolView
from restygate.proxy.failure import Failed, Failure
from restygate.tls import client_creator, trust_root
from restygate.upstream.client import UpstreamConnection, UpstreamTLSError

__all__ = ["Upstream", "UpstreamTLSError", "uses_tls", "tls_server_name"]

log = Logger()

# Idle pooled connections are dropped before typical upstream keep-alive
# timeouts (nginx 75 s, many app servers less) close them under us.
IDLE_CONNECTION_TIMEOUT = 30

Key = Tuple[Hashable, ...]

# Endpoints kept for instances seen lately (building one per request was
# measurable); the cache is dropped whole when this many are kept.
_ENDPOINTS_KEPT = 4096


def uses_tls(instance: Instance) -> bool:
    """
    Whether Consul says this instance speaks HTTPS: tag C{https}, or
    C{Meta.protocol = "https"}.
    """
    return "https" in instance.tags or dict(instance.meta).get("protocol", "").lower() == "https"


def tls_server_name(instance: Instance) -> str:
    """
    The name an HTTPS instance's certificate must be valid for.
    """
    return dict(instance.meta).get("tls_server_name") or instance.address


@dataclass(frozen=True)
class _Settings:
    connect_timeout: float
    # None: upstream-tls-insecure, certificates are not checked.
    trust: Optional[IOpenSSLTrustRoot]


class _InstanceEndpoint:
    """
    Connects to one instance, over TLS when it speaks HTTPS, with the
    settings in force when it was made.
    """

    def __init__(self, reactor: Any, instance: Instance, settings: _Settings) -> None:
        self._reactor = reactor
        self._instance = instance
        self._settings = settings
        self.server_name = tls_server_name(instance) if uses_tls(instance) else None
        self.scheme = b"http" if self.server_name is None else b"https"
        self.pool_key: Tuple[Hashable, ...] = (
            self.scheme, instance.address, instance.port, self.server_name,
        )

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        endpoint = self._tcp()
        if self.server_name is not None:
            endpoint = wrapClientTLS(client_creator(self.server_name, self._settings.trust), endpoint)
        result: Deferred[IProtocol] = endpoint.connect(protocolFactory)
        return result

    def _tcp(self) -> IStreamClientEndpoint:
        # IP literals skip name resolution (a thread-pool round trip per new
        # connection otherwise).
        host, port, timeout = self._instance.address, self._instance.port, self._settings.connect_timeout
        if isIPAddress(host):
            return TCP4ClientEndpoint(self._reactor, host, port, timeout=timeout)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(self._reactor, host, port, timeout=timeout)
        return HostnameEndpoint(self._reactor, host, port, timeout=timeout)

    def __repr__(self) -> str:
        return f"<upstream {self.scheme.decode()}://{self._instance.netloc}>"


class _ConnectionFactory(Factory):
    """
    Builds the one connection an endpoint's connect makes.
    """

    noisy = False

    def __init__(self, upstream: Upstream, key: Key, tls_name: Optional[str]) -> None:
        self._upstream = upstream
        self._key = key
        self._tls_name = tls_name

    def buildProtocol(self, addr: Optional[IAddress]) -> UpstreamConnection:
        connection = UpstreamConnection(self._key, self._upstream._idle, self._upstream._lost)
        connection.tls_name = self._tls_name
        return connection


def _connect_failed(failure: TwistedFailure) -> UpstreamConnection:
    if failure.check(Failed):
        failure.raiseException()
    if failure.check(TimeoutError):
        raise Failed(Failure.CONNECT_TIMEOUT, f"connect timed out: {failure.getErrorMessage()}")
    if failure.check(ConnectionRefusedError):
        raise Failed(Failure.CONNECT_REFUSED, f"connection refused: {failure.getErrorMessage()}")
    failure.trap(Exception)
    raise Failed(Failure.CONNECT_REFUSED, f"cannot connect: {failure.getErrorMessage()}")


class Upstream:
    """
    Connections to instances: a kept idle one when there is one, else a new one.

    @ivar max_idle: idle connections kept per instance (C{pool-size}).
    """

    _settings: _Settings

    def __init__(self, reactor: Any, config: Config) -> None:
        self._reactor = reactor
        self._idle_by_key: Dict[Key, List[Tuple[float, UpstreamConnection]]] = {}
        self._sweep: Optional[IDelayedCall] = None
        self._insecure = False
        self.max_idle = config.pool_size
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """
        Take C{config}'s pool size, connect timeout and upstream TLS trust.
        A smaller pool size applies as idle connections expire.
        """
        self.max_idle = config.pool_size
        if config.upstream_tls_insecure and not self._insecure:
            log.warn(
                "upstream-tls-insecure is set: certificates of HTTPS upstreams are NOT verified, "
                "anyone on the network path can impersonate them"
            )
        self._insecure = config.upstream_tls_insecure
        trust = None if self._insecure else trust_root(config.upstream_ca)
        self._settings = _Settings(config.connect_timeout, trust)
        # Endpoints carry the settings: new ones from now on.
        self._endpoints: Dict[Instance, _InstanceEndpoint] = {}

    def take_idle(self, instance: Instance, connect_timeout: Optional[float] = None) -> Optional[UpstreamConnection]:
        """
        A kept connection to C{instance}, if there is one: the usual case,
        without a Deferred.
        """
        # The kept endpoint found in line: this runs for every request.
        endpoint = self._endpoints.get(instance) if connect_timeout in (None, self._settings.connect_timeout) else None
        idle = self._idle_by_key.get((endpoint or self._endpoint(instance, connect_timeout)).pool_key)
        while idle:
            _, connection = idle.pop()
            if connection.connected:
                return connection
        return None

    def acquire(self, instance: Instance, connect_timeout: Optional[float] = None) -> Deferred[UpstreamConnection]:
        """
        A connection to C{instance} that is ready for a request; fails with
        L{Failed} when none can be made.  C{connect_timeout}, when given, is
        the service's own, in place of the global one.
        """
        kept = self.take_idle(instance, connect_timeout)
        if kept is not None:
            return succeed(kept)
        endpoint = self._endpoint(instance, connect_timeout)
        connecting: Deferred[Any] = endpoint.connect(
            _ConnectionFactory(self, endpoint.pool_key, endpoint.server_name)
        )
        result: Deferred[UpstreamConnection] = connecting.addErrback(_connect_failed)
        return result

    def _endpoint(self, instance: Instance, connect_timeout: Optional[float]) -> _InstanceEndpoint:
        settings = self._settings
        if connect_timeout is not None and connect_timeout != settings.connect_timeout:
            # A service's own connect timeout: an endpoint of its own, not kept.
            endpoint = _InstanceEndpoint(self._reactor, instance, replace(settings, connect_timeout=connect_timeout))
        else:
            kept = self._endpoints.get(instance)
            if kept is None:
                if len(self._endpoints) >= _ENDPOINTS_KEPT:
                    self._endpoints.clear()
                kept = self._endpoints[instance] = _InstanceEndpoint(self._reactor, instance, settings)
            endpoint = kept
        return endpoint

    def idle_connections(self) -> int:
        """Idle keep-alive connections, ready for reuse."""
        return sum(len(idle) for idle in self._idle_by_key.values())

    def _idle(self, connection: UpstreamConnection) -> None:
        idle = self._idle_by_key.get(connection.key)
        if idle is None:
            idle = self._idle_by_key[connection.key] = []
        if len(idle) >= self.max_idle:
            transport: Any = connection.transport
            transport.loseConnection()
            return
        idle.append((self._reactor.seconds(), connection))
        if self._sweep is None:
            self._sweep = self._reactor.callLater(IDLE_CONNECTION_TIMEOUT, self._expire)

    def _lost(self, connection: UpstreamConnection) -> None:
        idle = self._idle_by_key.get(connection.key)
        if idle:
            kept = [entry for entry in idle if entry[1] is not connection]
            if kept:
                self._idle_by_key[connection.key] = kept
            else:
                del self._idle_by_key[connection.key]

    def _expire(self) -> None:
        # One timer for the whole pool rather than one per idle connection:
        # going idle and busy again must cost nothing on the request path.
        self._sweep = None
        oldest = self._reactor.seconds() - IDLE_CONNECTION_TIMEOUT
        for idle in list(self._idle_by_key.values()):
            for since, connection in [entry for entry in idle if entry[0] <= oldest]:
                transport: Any = connection.transport
                transport.loseConnection()
        if self.idle_connections():
            self._sweep = self._reactor.callLater(IDLE_CONNECTION_TIMEOUT / 2, self._expire)

    def close(self) -> Deferred[None]:
        """Close every idle connection (the gateway is stopping)."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        for idle in list(self._idle_by_key.values()):
            for _, connection in list(idle):
                transport: Any = connection.transport
                transport.loseConnection()
        self._idle_by_key.clear()
        return succeed(None)


# Declared here, not with @implementer: a class decorator would keep mypyc
# (setup.py) from compiling the classes as native ones.
classImplements(_InstanceEndpoint, IStreamClientEndpoint)
classImplements(Upstream, IPoolView)
