"""
The lean data path owns the bytes: what reaches the client and the upstream
on the wire, over real loopback sockets (a scripted upstream where a test
needs an instance to say what no HTTP library would).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, List

import treq
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from restygate.proxy.resource import GatewayResource
from tests.support.backends import closed_port
from tests.support.harness import GatewayRig, RawClient, eventually, raw_connect, reactor, settle
from tests.support.wire import ScriptedUpstream

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _upstream(case: TestCase, rig: GatewayRig, answer: Callable[[bytes, bytes, int], bytes]) -> ScriptedUpstream:
    upstream = ScriptedUpstream(answer)
    port = upstream.listen(reactor)
    case.addCleanup(upstream.stop)
    rig.consul.register_service("dc1", "node-s", "127.0.0.1", "web", port, service_address="127.0.0.1")
    return upstream


async def _raw(rig: GatewayRig, data: bytes) -> RawClient:
    client = await raw_connect(rig.port)
    client.transport.write(data)
    await client.closed
    return client


def _head_lines(received: bytes) -> List[bytes]:
    return received.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


class ResponseFidelityTests(TestCase):
    async def test_headers_named_in_connection_are_dropped_and_case_kept(self) -> None:
        rig = GatewayRig(self)
        _upstream(self, rig, lambda h, b, n: (
            b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nx-lower-Case: 2\r\n"
            b"Content-Length: 2\r\n\r\nok"
        ))
        client = await _raw(rig, b"GET /dc1/web/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        lines = _head_lines(client.received)
        self.assertEqual(lines[0], b"HTTP/1.1 200 OK")
        self.assertIn(b"x-lower-Case: 2", lines)
        self.assertFalse([line for line in lines if line.lower().startswith(b"x-secret")], lines)

    async def test_nul_in_an_upstream_header_is_502_without_the_address(self) -> None:
        rig = GatewayRig(self, retries=0)
        upstream = _upstream(self, rig, lambda h, b, n: b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n")
        response, body = await rig.json("/dc1/web/")
        self.assertEqual((response.code, body["error"]), (502, "upstream sent an invalid response"))
        self.assertNotIn(str(upstream.port.getHost().port if upstream.port else ""), json.dumps(body))

    async def test_head_and_304_keep_content_length_and_the_connection(self) -> None:
        rig = GatewayRig(self)
        upstream = _upstream(self, rig, lambda h, b, n: (
            b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n" if h.startswith(b"HEAD")
            else b"HTTP/1.1 304 Not Modified\r\nContent-Length: 77\r\n\r\n"
        ))
        client = await raw_connect(rig.port)
        client.transport.write(b"HEAD /dc1/web/ HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: client.received.endswith(b"\r\n\r\n"))
        self.assertIn(b"Content-Length: 12345", client.received)
        client.transport.write(b"GET /dc1/web/ HTTP/1.1\r\nHost: x\r\nIf-None-Match: x\r\n\r\n")
        await eventually(lambda: b"304" in client.received)
        self.assertIn(b"Content-Length: 77", client.received.split(b"HTTP/1.1 304", 1)[1])
        client.transport.loseConnection()
        await client.closed
        self.assertEqual(upstream.connections, 1)

    async def test_early_hints_and_trailers(self) -> None:
        """
        A 103 is forwarded; trailers reach a client that sent TE: trailers
        and no other.
        """
        rig = GatewayRig(self)
        _upstream(self, rig, lambda h, b, n: (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Sum: 42\r\n\r\n"
        ))
        asked = await _raw(rig, b"GET /dc1/web/ HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        self.assertTrue(asked.received.startswith(b"HTTP/1.1 103 "), asked.received)
        self.assertIn(b"Link: </a.css>; rel=preload", asked.received)
        self.assertTrue(asked.received.endswith(b"2\r\nok\r\n0\r\nX-Sum: 42\r\n\r\n"), asked.received)
        plain = await _raw(rig, b"GET /dc1/web/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(plain.received.endswith(b"2\r\nok\r\n0\r\n\r\n"), plain.received)


class RequestFidelityTests(TestCase):
    async def test_empty_post_has_one_content_length(self) -> None:
        rig = GatewayRig(self)
        upstream = _upstream(self, rig, lambda h, b, n: OK)
        await _raw(rig, b"POST /dc1/web/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        [(head, _, _)] = upstream.requests
        self.assertEqual(head.lower().count(b"\r\ncontent-length:"), 1, head)

    async def test_host_must_be_one_and_valid(self) -> None:
        rig = GatewayRig(self, server_name=["public.example"])
        upstream = _upstream(self, rig, lambda h, b, n: OK)
        for hosts in ([b"public.example", b"evil.com"], [b"public.example:80@evil.com"], [b"a b"]):
            head = b"".join(b"Host: %s\r\n" % host for host in hosts)
            client = await _raw(rig, b"GET /dc1/web/ HTTP/1.1\r\n" + head + b"Connection: close\r\n\r\n")
            self.assertTrue(client.received.startswith(b"HTTP/1.1 400"), client.received)
            self.assertEqual(json.loads(client.received.split(b"\r\n\r\n", 1)[1])["status"], 400)
        self.assertEqual(upstream.requests, [])

    async def test_http10_keep_alive_and_pipelining(self) -> None:
        rig = GatewayRig(self)
        _upstream(self, rig, lambda h, b, n: b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + h.split(b" ")[1][-1:])
        client = await raw_connect(rig.port)
        client.transport.write(b"GET /dc1/web/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        await eventually(lambda: client.received.endswith(b"a"))
        self.assertIn(b"Connection: keep-alive", client.received)
        client.transport.write(
            b"GET /dc1/web/b HTTP/1.1\r\nHost: x\r\n\r\nGET /dc1/web/c HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /dc1/web/d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        await client.closed
        bodies = [part.split(b"\r\n\r\n", 1)[1][:1] for part in client.received.split(b"HTTP/1.1 200 OK")[1:]]
        self.assertEqual(bodies, [b"a", b"b", b"c", b"d"])


class UpstreamConnectionTests(TestCase):
    async def test_bytes_while_idle_close_the_connection(self) -> None:
        rig = GatewayRig(self)
        upstream = _upstream(self, rig, lambda h, b, n: OK)
        self.assertEqual((await rig.get("/dc1/web/"))[1], b"ok")
        stray: Any = upstream.open[0].transport
        stray.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        await eventually(lambda: not upstream.open)
        self.assertEqual((await rig.get("/dc1/web/"))[1], b"ok")
        self.assertEqual(upstream.connections, 2)

    async def test_no_retry_behind_the_engine(self) -> None:
        rig = GatewayRig(self, retries=0)
        upstream = _upstream(self, rig, lambda h, b, n: b"<close>")
        response, body = await rig.json("/dc1/web/")
        self.assertEqual((response.code, body["error"]), (502, "upstream closed the connection before answering"))
        self.assertEqual(len(upstream.requests), 1)

    async def test_pool_keeps_at_most_pool_size_idle(self) -> None:
        rig = GatewayRig(self, pool_size=1)
        rig.register(rig.backend())
        results = await _all([rig.get("/dc1/web/slow?delay=0.2") for _ in range(3)])
        self.assertEqual([r.code for r, _ in results], [200, 200, 200])
        await settle(0.05)
        self.assertEqual(rig.gateway.engine.upstream.idle_connections(), 1)

    async def test_refused_error_body_names_no_instance(self) -> None:
        rig = GatewayRig(self, retries=0)
        port = closed_port()
        rig.consul.register_service("dc1", "node-x", "127.0.0.1", "web", port, service_address="127.0.0.1")
        response, body = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 502)
        self.assertNotIn(b"127.0.0.1", body)
        self.assertNotIn(str(port).encode(), body)


class TwistedWebFaceTests(TestCase):
    async def test_gateway_resource_in_a_stock_site(self) -> None:
        """
        GatewayResource serves through the same engine when mounted in any
        twisted.web Site: routing, bodies and the gateway's own errors.
        """
        rig = GatewayRig(self)
        rig.register(rig.backend())
        site = Site(GatewayResource(rig.gateway.engine))
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}"
        payload = bytes(range(256)) * 400
        response = await rig.client.post(base + "/dc1/web/upload", data=payload)
        echo = json.loads(await treq.content(response))
        self.assertEqual((response.code, echo["body_length"]), (200, len(payload)))
        self.assertEqual(echo["body_sha256"], hashlib.sha256(payload).hexdigest())
        response = await rig.client.get(base + "/dc1/ghost/")
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(await treq.content(response))["error"], "unknown service")


async def _all(requests: List[Any]) -> List[Any]:
    return [await d for d in [ensureDeferred(r) for r in requests]]


class ForwardingRuleTests(TestCase):
    async def test_trusted_proxy_chain_is_extended(self) -> None:
        rig = GatewayRig(self, trusted_proxies=["127.0.0.0/8"])
        upstream = _upstream(self, rig, lambda h, b, n: OK)
        await _raw(rig, b"GET /dc1/web/ HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n"
                        b"X-Forwarded-For: 198.51.100.7, 10.1.1.1\r\nX-Forwarded-Proto: https\r\n"
                        b"Forwarded: for=198.51.100.7;proto=https\r\n\r\n")
        head = upstream.requests[0][0].split(b"\r\n")
        self.assertIn(b"X-Forwarded-For: 198.51.100.7, 10.1.1.1, 127.0.0.1", head)
        # 10.1.1.1 is not trusted here: it is the nearest address that is not a proxy of ours.
        self.assertIn(b"X-Real-IP: 10.1.1.1", head)
        self.assertIn(b"X-Forwarded-Proto: https, http", head)
        self.assertIn(b'Forwarded: for=198.51.100.7;proto=https, for=127.0.0.1;proto=http;host="gw.example"', head)

    async def test_location_and_cookie_path_rewritten(self) -> None:
        rig = GatewayRig(self, rewrite_cookie_path=True)
        answers = []

        def answer(head: bytes, body: bytes, n: int) -> bytes:
            port = upstream.port.getHost().port if upstream.port else 0
            location = answers.pop(0) % (b"%d" % port)
            return (b"HTTP/1.1 302 Found\r\nLocation: " + location +
                    b"\r\nSet-Cookie: s=1; Path=/app; HttpOnly\r\nContent-Length: 0\r\n\r\n")

        upstream = _upstream(self, rig, answer)
        cases = [
            (b"/login?next=/x%.0s", b"/dc1/web/login?next=/x"),
            (b"http://127.0.0.1:%s/a/b", b"http://gw.example:8080/dc1/web/a/b"),
            (b"https://elsewhere.example/%.0s", b"https://elsewhere.example/"),
            (b"relative%.0s", b"relative"),
        ]
        for sent, expected in cases:
            answers.append(sent)
            client = await _raw(rig, b"GET /dc1/web/ HTTP/1.1\r\nHost: gw.example:8080\r\nConnection: close\r\n\r\n")
            lines = _head_lines(client.received)
            self.assertIn(b"Location: " + expected, lines)
            self.assertIn(b"Set-Cookie: s=1; Path=/dc1/web/app; HttpOnly", lines)

    async def test_rewrite_location_can_be_turned_off(self) -> None:
        rig = GatewayRig(self, rewrite_location=False)
        _upstream(self, rig, lambda h, b, n: b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n")
        client = await _raw(rig, b"GET /dc1/web/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertIn(b"Location: /login", _head_lines(client.received))
