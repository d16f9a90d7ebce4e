"""
TLS on every side of the gateway, over real loopback sockets with
certificates made at test time: clients reaching an C{ssl:} listener,
upstream instances that speak HTTPS (verified against C{upstream-ca}, for a
C{tls_server_name}, or not at all with C{upstream-tls-insecure}), and a
Consul agent behind https:// checked against C{consul-ca}.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, List, Mapping, Optional, Sequence

import treq
from treq.client import HTTPClient
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.ssl import Certificate
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from restygate.config import ConfigError, build
from restygate.discovery.model import Instance
from restygate.upstream.pool import UpstreamTLSError, tls_server_name, uses_tls
from restygate.daemon.workers.child import adopted_endpoint
from tests.support.backends import Backend
from tests.support.certificates import Issued, endpoint_files, issue, make_ca
from restygate.testing.consul import ConsulServer
from tests.support.harness import GatewayRig, captured_log, reactor


def temp_dir(case: TestCase) -> str:
    directory = case.mktemp()
    os.makedirs(directory)
    return directory


class TLSBackend(Backend):
    """
    A test backend that speaks HTTPS with the given certificate.
    """

    def __init__(self, name: str, certificate: Issued) -> None:
        super().__init__(name)
        self._options = certificate.server_options()

    def _build_factory(self, reactor: Any) -> Any:
        return TLSMemoryBIOFactory(self._options, False, super()._build_factory(reactor))


class TLSConsul(ConsulServer):
    """
    The Consul test server behind TLS, as an agent's HTTPS port serves it.
    """

    def __init__(self, certificate: Issued) -> None:
        super().__init__(reactor, jitter=False)
        self._options = certificate.server_options()
        self._tls_port: Optional[IListeningPort] = None

    def listen(
        self, reactor: Any, port: int = 0, interface: str = "127.0.0.1", *, access_log: bool = False
    ) -> IListeningPort:
        listening: IListeningPort = reactor.listenSSL(
            port, self.site(access_log), self._options, interface=interface
        )
        self._tls_port = listening
        return listening

    @property
    def address(self) -> str:
        assert self._tls_port is not None
        host = self._tls_port.getHost()
        assert isinstance(host, IPv4Address)
        return f"https://{host.host}:{host.port}"


class _PlainRefusal(Protocol):
    """
    A plain HTTP server's answer to bytes it cannot parse.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.transport.loseConnection()


def _echo(body: bytes) -> Any:
    return json.loads(body)


def _header(echo: Any, name: str) -> List[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


class ClientSideTests(TestCase):
    """
    Clients reach the gateway over TLS through an C{ssl:} listener.
    """

    async def test_https_listener(self) -> None:
        """
        A real HTTPS request through an C{ssl:} listener reaches the backend,
        which learns the client used https.
        """
        server = issue(None, ips=["127.0.0.1"])
        files = endpoint_files(server, temp_dir(self))
        rig = GatewayRig(self, listen=[f"ssl:0:interface=127.0.0.1:{files}"])
        backend = rig.backend()
        rig.register(backend)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        trust = BrowserLikePolicyForHTTPS(Certificate.loadPEM(server.cert_pem))
        client = HTTPClient(Agent(reactor, contextFactory=trust, pool=pool))
        response = await client.get(f"https://127.0.0.1:{rig.port}/dc1/web/secure?x=1")
        body = await treq.content(response)
        self.assertEqual(response.code, 200)
        echo = _echo(body)
        self.assertEqual(echo["uri"], "/secure?x=1")
        self.assertEqual(_header(echo, "X-Forwarded-Proto"), ["https"])


    async def test_https_on_an_inherited_socket(self) -> None:
        """
        A worker serves TLS on a socket its parent bound for an C{ssl:}
        listener, with the certificate the description names.
        """
        server = issue(None, ips=["127.0.0.1"])
        files = endpoint_files(server, temp_dir(self))
        bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(bound.close)
        bound.bind(("127.0.0.1", 0))
        bound.listen(16)
        bound.setblocking(False)
        port_number = bound.getsockname()[1]
        page = Resource()
        page.putChild(b"hello", Data(b"over tls", "text/plain"))
        endpoint = adopted_endpoint(reactor, f"ssl:{port_number}:interface=127.0.0.1:{files}", os.dup(bound.fileno()))
        port = await endpoint.listen(Site(page))
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        trust = BrowserLikePolicyForHTTPS(Certificate.loadPEM(server.cert_pem))
        client = HTTPClient(Agent(reactor, contextFactory=trust, pool=pool))
        response = await client.get(f"https://127.0.0.1:{port_number}/hello")
        self.assertEqual((response.code, await treq.content(response)), (200, b"over tls"))


class UpstreamTLSTests(TestCase):
    """
    Instances Consul marks as HTTPS are reached over verified TLS.
    """

    def setUp(self) -> None:
        self.directory = temp_dir(self)
        self.ca = make_ca()
        self.ca_file = self.ca.write(self.directory, "ca")

    def tls_backend(self, name: str = "secure", certificate: Optional[Issued] = None) -> TLSBackend:
        backend = TLSBackend(name, certificate or issue(self.ca, ips=["127.0.0.1"]))
        backend.listen(reactor)
        self.addCleanup(backend.stop)
        return backend

    def register(
        self,
        rig: GatewayRig,
        backend: Backend,
        service: str = "web",
        tags: Sequence[str] = ("https",),
        meta: Optional[Mapping[str, str]] = None,
    ) -> None:
        rig.consul.register_service(
            "dc1", f"node-{service}", "127.0.0.1", service, backend.port,
            service_id=f"{service}-{backend.name}", tags=tags, service_address="127.0.0.1", meta=meta,
        )

    async def test_verified_with_upstream_ca(self) -> None:
        """
        With the tag C{https} the instance is reached over TLS, its
        certificate checked against C{upstream-ca} for its IP address.
        """
        rig = GatewayRig(self, upstream_ca=self.ca_file)
        backend = self.tls_backend()
        self.register(rig, backend)
        for _ in range(3):
            response, body = await rig.get("/dc1/web/hello")
            self.assertEqual(response.code, 200)
            self.assertEqual(_echo(body)["uri"], "/hello")
        # Keep-alive works over TLS too.
        self.assertEqual(backend.connections_made, 1)

    async def test_meta_protocol(self) -> None:
        """
        C{Meta.protocol = "https"} marks an HTTPS instance as well as the tag.
        """
        rig = GatewayRig(self, upstream_ca=self.ca_file)
        self.register(rig, self.tls_backend(), tags=(), meta={"protocol": "https"})
        response, _ = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 200)

    async def test_tls_server_name(self) -> None:
        """
        C{Meta.tls_server_name} is the name checked (and sent as SNI), for a
        certificate that does not name the address at all.  The connection
        verified for that name is pooled apart from those to the same
        host:port checked for another name (here the address, which fails).
        """
        rig = GatewayRig(self, upstream_ca=self.ca_file)
        backend = self.tls_backend(certificate=issue(self.ca, ips=[], dns=["web.service.internal"]))
        self.register(rig, backend, service="named", meta={"tls_server_name": "web.service.internal"})
        self.register(rig, backend, service="unnamed")
        log = captured_log(self)
        named, _ = await rig.get("/dc1/named/")
        self.assertEqual(named.code, 200)
        unnamed, body = await rig.json("/dc1/unnamed/")
        self.assertEqual(unnamed.code, 502)
        self.assertTrue(
            any("certificate is not valid for '127.0.0.1'" in line for line in log), log
        )

    async def test_wrong_ca_is_502(self) -> None:
        """
        A certificate from a CA not trusted fails the request with a 502 and
        one clear log line, no traceback for the client.
        """
        other = make_ca("some other CA")
        rig = GatewayRig(self, upstream_ca=other.write(self.directory, "other"), retries=0)
        self.register(rig, self.tls_backend())
        log = captured_log(self)
        response, body = await rig.json("/dc1/web/")
        self.assertEqual(response.code, 502)
        self.assertEqual(body["status"], 502)
        self.assertNotIn("Traceback", json.dumps(body))
        failures = [line for line in log if "TLS handshake with the upstream failed" in line]
        self.assertEqual(len(failures), 1, log)
        self.assertIn("certificate verify failed", failures[0])
        self.assertIn("127.0.0.1", failures[0])

    async def test_plain_server_marked_https(self) -> None:
        """
        An instance marked HTTPS that answers in plain HTTP (as nginx answers
        a ClientHello on a plain port: 400 at once) fails with a line saying
        the handshake failed, not a vague "closed".
        """
        rig = GatewayRig(self, upstream_ca=self.ca_file, retries=0)
        factory = ServerFactory.forProtocol(_PlainRefusal)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        rig.consul.register_service(
            "dc1", "node-plain", "127.0.0.1", "web", port.getHost().port, tags=["https"],
            service_address="127.0.0.1",
        )
        log = captured_log(self)
        response, _ = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 502)
        failures = [line for line in log if "TLS handshake with the upstream failed" in line]
        self.assertEqual(len(failures), 1, log)

    async def test_platform_trust_by_default(self) -> None:
        """
        Without C{upstream-ca} the platform's store decides, and it does not
        know a private CA: verification is on by default.
        """
        rig = GatewayRig(self, retries=0)
        self.register(rig, self.tls_backend())
        response, _ = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 502)

    async def test_insecure(self) -> None:
        """
        C{upstream-tls-insecure} reaches an instance whose certificate nobody
        trusts, and says at start that verification is off.
        """
        log = captured_log(self)
        rig = GatewayRig(self, upstream_tls_insecure=True)
        self.assertTrue(any("certificates of HTTPS upstreams are NOT verified" in line for line in log), log)
        self.register(rig, self.tls_backend(certificate=issue(None, ips=["10.9.9.9"])))
        response, _ = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 200)

    async def test_plain_and_tls_connections_kept_apart(self) -> None:
        """
        One host:port reached as HTTPS (one service) and as plain HTTP
        (another): a pooled TLS connection never carries a request meant
        for plain HTTP, nor the other way round.
        """
        rig = GatewayRig(self, upstream_ca=self.ca_file, retries=0)
        backend = self.tls_backend()
        self.register(rig, backend, service="secure")
        self.register(rig, backend, service="plain", tags=())
        secure, _ = await rig.get("/dc1/secure/")
        self.assertEqual(secure.code, 200)
        # Sent in clear text to a TLS port: the backend cannot answer it.
        plain, _ = await rig.get("/dc1/plain/")
        self.assertEqual(plain.code, 502)
        secure, _ = await rig.get("/dc1/secure/")
        self.assertEqual(secure.code, 200)
        self.assertEqual(len(backend.requests_seen), 2)

    async def test_plain_instance_unchanged(self) -> None:
        """
        An instance without the marks is still plain HTTP, even with TLS
        settings given.
        """
        rig = GatewayRig(self, upstream_ca=self.ca_file)
        rig.register(rig.backend())
        response, body = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 200)


class ConsulTLSTests(TestCase):
    """
    An https:// Consul agent is checked against C{consul-ca}.
    """

    def setUp(self) -> None:
        self.directory = temp_dir(self)
        self.ca = make_ca()
        self.consul = TLSConsul(issue(self.ca, ips=["127.0.0.1"]))

    async def test_consul_over_tls(self) -> None:
        rig = GatewayRig(self, consul=self.consul, consul_ca=self.ca.write(self.directory, "ca"))
        self.assertTrue(rig.config.consul.base_url.startswith("https://"))
        rig.register(rig.backend())
        response, _ = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 200)
        self.assertTrue(self.consul.requests_for("/v1/health/service/web"))

    async def test_untrusted_consul(self) -> None:
        """
        An agent whose certificate does not chain to C{consul-ca} is not
        asked anything: discovery is unavailable.
        """
        other = make_ca("some other CA")
        rig = GatewayRig(
            self, consul=self.consul, consul_ca=other.write(self.directory, "other"), discovery_timeout=0.5,
        )
        rig.register(rig.backend())
        response, body = await rig.json("/dc1/web/")
        self.assertEqual(response.code, 503)
        self.assertEqual(body["error"], "service discovery unavailable")
        self.assertEqual(self.consul.requests_for("/v1/health/service"), [])


class InstanceTests(SynchronousTestCase):
    """
    Which instances are HTTPS and what name they must prove.
    """

    def test_plain(self) -> None:
        instance = Instance("10.0.0.1", 80, tags=("http", "v2"), meta=(("protocol", "http"),))
        self.assertFalse(uses_tls(instance))

    def test_tag(self) -> None:
        self.assertTrue(uses_tls(Instance("10.0.0.1", 443, tags=("https",))))

    def test_meta(self) -> None:
        self.assertTrue(uses_tls(Instance("10.0.0.1", 443, meta=(("protocol", "HTTPS"),))))

    def test_server_name(self) -> None:
        self.assertEqual(tls_server_name(Instance("10.0.0.1", 443)), "10.0.0.1")
        named = Instance("10.0.0.1", 443, meta=(("tls_server_name", "api.internal"),))
        self.assertEqual(tls_server_name(named), "api.internal")

    def test_error_message(self) -> None:
        """
        A TLS failure reads as a connection failure with its reason.
        """
        self.assertEqual(
            str(UpstreamTLSError(string="certificate verify failed")),
            "TLS handshake with the upstream failed: certificate verify failed.",
        )


class CABundleConfigTests(SynchronousTestCase):
    """
    C{upstream-ca} and C{consul-ca} name PEM bundles, read and checked when
    the config is built.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_bundle(self) -> None:
        one, two = make_ca("one"), make_ca("two")
        path = self.write("bundle.pem", b"# our CAs\n" + one.cert_pem + two.cert_pem)
        for key, field in (("upstream-ca", "upstream_ca"), ("consul-ca", "consul_ca")):
            bundle = getattr(build([{key: path}]), field)
            self.assertEqual(bundle.path, path)
            self.assertEqual(bundle.certificates, (one.cert_pem, two.cert_pem))
            self.assertNotIn("BEGIN", repr(bundle))

    def test_unset(self) -> None:
        config = build([{"upstream-ca": ""}])
        self.assertIsNone(config.upstream_ca)
        self.assertIsNone(config.consul_ca)
        self.assertFalse(config.upstream_tls_insecure)

    def test_missing_file(self) -> None:
        error = self.assertRaises(ConfigError, build, [{"upstream-ca": "/nonexistent/ca.pem"}])
        self.assertEqual(str(error), "upstream-ca: no such file '/nonexistent/ca.pem'")

    def test_not_pem(self) -> None:
        path = self.write("junk.pem", b"not a certificate\n")
        error = self.assertRaises(ConfigError, build, [{"consul-ca": path}])
        self.assertTrue(str(error).startswith(f"consul-ca: {path}: not a PEM certificate bundle"), str(error))
        self.assertNotIn("\n", str(error))

    def test_broken_certificate(self) -> None:
        pem = make_ca().cert_pem
        path = self.write("cut.pem", pem[:60] + pem[90:])
        error = self.assertRaises(ConfigError, build, [{"upstream-ca": path}])
        self.assertTrue(str(error).startswith("upstream-ca: "), str(error))
        self.assertNotIn("\n", str(error))

    def test_insecure_flag(self) -> None:
        self.assertTrue(build([{"upstream-tls-insecure": True}]).upstream_tls_insecure)
        error = self.assertRaises(ConfigError, build, [{"upstream-tls-insecure": "maybe"}])
        self.assertTrue(str(error).startswith("upstream-tls-insecure: "))
