"""
The upstream side: one L{HTTPConnectionPool} of HTTP/1.1 keep-alive
connections to service instances, and requests sent over it.

A request goes straight to a pooled connection, as Twisted's C{Agent} does
inside, without the agent around it: the target is already in origin form
and the instance already chosen, so parsing a URL back out of them, once per
request, was a tenth of the gateway's time.  Nor is it treq's
C{HTTPClient}: a proxy must not keep a cookie jar shared by every client,
decode content encodings or follow redirects.  Connections go only to the address and port of an
L{Instance} that discovery handed us; the endpoint is built from that
instance, never from anything the client sent.

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

from dataclasses import dataclass
from typing import Any, Hashable, Optional, Tuple

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from restygate._compat import IOpenSSLTrustRoot, QuietClientFactory, Request, idle_connections
from restygate.config import Config
from restygate.discovery.model import Instance
from restygate.ops.views import IPoolView
from restygate.tls import client_creator, openssl_reason, trust_root

__all__ = ["Upstream", "UpstreamTLSError", "uses_tls", "tls_server_name"]

log = Logger()

# Idle pooled connections are dropped before typical upstream keep-alive
# timeouts (nginx 75 s, many app servers less) close them under us.
IDLE_CONNECTION_TIMEOUT = 30


class UpstreamTLSError(ConnectError):
    """
    The TLS handshake with an upstream failed: the request never reached it.
    """

    # ConnectError's messages start with this.
    MESSAGE = "TLS handshake with the upstream failed"


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


@implementer(IStreamClientEndpoint)
class _InstanceEndpoint:
    """
    Connects to one instance, over TLS when it speaks HTTPS; made per
    request, with the settings in force for it.
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
        # The pool names each connection's factory with this.
        return f"<upstream {self.scheme.decode()}://{self._instance.netloc}>"


class _InstancePool(HTTPConnectionPool):
    _factory = QuietClientFactory


def _tls_failed(failure: Failure, endpoint: _InstanceEndpoint) -> Failure:
    """
    A failed handshake (a certificate not trusted or not for this name, a
    peer that does not speak TLS) reaches the HTTP client as a response that
    never came.  Say what it was, as the connection failure it is: the
    request never reached the upstream's application.
    """
    if not failure.check(ResponseFailed, RequestTransmissionFailed):
        return failure
    for reason in getattr(failure.value, "reasons", []):
        if reason.check(VerificationError):
            raise UpstreamTLSError(string=f"certificate is not valid for {endpoint.server_name!r}")
        if reason.check(SSL.Error):
            reason_text = openssl_reason(reason.value)
            raise UpstreamTLSError(string=f"{reason_text} (expecting {endpoint.server_name!r})")
    return failure


@implementer(IPoolView)
class Upstream:
    """
    Sends requests to instances over the shared keep-alive pool.
    """

    _settings: _Settings

    def __init__(self, reactor: Any, config: Config) -> None:
        self._reactor = reactor
        self.pool = _InstancePool(reactor, persistent=True)
        self.pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
        self._insecure = False
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """
        Take C{config}'s pool size, connect timeout and upstream TLS trust.
        A smaller pool size applies as idle connections expire.
        """
        self.pool.maxPersistentPerHost = config.pool_size
        if config.upstream_tls_insecure and not self._insecure:
            log.warn(
                "upstream-tls-insecure is set: certificates of HTTPS upstreams are NOT verified, "
                "anyone on the network path can impersonate them"
            )
        self._insecure = config.upstream_tls_insecure
        trust = None if self._insecure else trust_root(config.upstream_ca)
        self._settings = _Settings(config.connect_timeout, trust)

    def request(
        self,
        instance: Instance,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Optional[IBodyProducer],
    ) -> Deferred[IResponse]:
        """
        Send C{method target} to C{instance}; C{target} is the origin-form
        path and query for the upstream.
        """
        endpoint = _InstanceEndpoint(self._reactor, instance, self._settings)
        if not headers.hasHeader(b"host"):
            # An HTTP/1.0 client may send none; HTTP/1.1 requires one.
            headers.setRawHeaders(b"host", [instance.netloc.encode("ascii")])
        # Keyed by the endpoint's key, not (scheme, host, port): TLS
        # connections to one address checked for different names differ.
        connecting: Deferred[Any] = self.pool.getConnection(endpoint.pool_key, endpoint)
        result: Deferred[IResponse] = connecting.addCallback(
            lambda connection: connection.request(Request(method, target, headers, body, True))
        )
        if endpoint.server_name is not None:
            result.addErrback(_tls_failed, endpoint)
        return result

    def idle_connections(self) -> int:
        return idle_connections(self.pool)

    def close(self) -> Deferred[None]:
        result: Deferred[None] = self.pool.closeCachedConnections()
        return result
