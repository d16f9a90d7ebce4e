"""
End-to-end tests of the routing contract and proxying: real Consul API test
server, real backends, restygate's real service, loopback sockets.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, List

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers

from tests.support.backends import ResettingBackend, closed_port, ipv6_available, pattern_sha256
from tests.support.harness import GatewayRig, captured_log, eventually, raw_connect, reactor, settle


def _echo(body: bytes) -> Any:
    return json.loads(body)


def _header(echo: Any, name: str) -> List[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


class RoutingTests(TestCase):
    """
    /<dc>/<service>/<rest> reaches <rest> on a passing instance, intact.
    """

    async def test_path_and_query_forwarded_byte_for_byte(self) -> None:
        rig = GatewayRig(self)
        backend = rig.backend("a")
        rig.register(backend)
        response, body = await rig.get("/dc1/web/hello/w%C3%B6rld?x=1&y=%20z&&k")
        self.assertEqual(response.code, 200)
        self.assertEqual(backend.requests_seen[-1].uri, b"/hello/w%C3%B6rld?x=1&y=%20z&&k")
        self.assertEqual(_echo(body)["backend"], "a")

    async def test_service_root(self) -> None:
        rig = GatewayRig(self)
        backend = rig.backend()
        rig.register(backend)
        for path, upstream in [("/dc1/web", b"/"), ("/dc1/web/", b"/"), ("/dc1/web?q=1", b"/?q=1")]:
            response, _ = await rig.get(path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(backend.requests_seen[-1].uri, upstream)

    async def test_method_and_body_intact(self) -> None:
        rig = GatewayRig(self)
        backend = rig.backend()
        rig.register(backend)
        payload = b"x" * 5000 + b"\x00\xff"
        for method in ["POST", "PUT", "PATCH", "DELETE"]:
            response, body = await rig.request(method, "/dc1/web/thing", data=payload)
            self.assertEqual(response.code, 200)
            echo = _echo(body)
            self.assertEqual(echo["method"], method)
            self.assertEqual(echo["body_length"], len(payload))
            self.assertEqual(echo["body_sha256"], hashlib.sha256(payload).hexdigest())

    async def test_round_robin(self) -> None:
        rig = GatewayRig(self)
        backends = [rig.backend(name) for name in "abc"]
        for backend in backends:
            rig.register(backend)
        seen = []
        for _ in range(6):
            _, body = await rig.get("/dc1/web/")
            seen.append(_echo(body)["backend"])
        self.assertEqual(sorted(seen), ["a", "a", "b", "b", "c", "c"])
        self.assertEqual(seen[:3], seen[3:])

    async def test_two_datacenters(self) -> None:
        rig = GatewayRig(self)
        east, west = rig.backend("east"), rig.backend("west")
        rig.register(east, dc="dc1")
        rig.register(west, dc="dc2")
        _, one = await rig.get("/dc1/web/")
        _, two = await rig.get("/dc2/web/")
        self.assertEqual((_echo(one)["backend"], _echo(two)["backend"]), ("east", "west"))

    async def test_unknown_datacenter_is_404(self) -> None:
        rig = GatewayRig(self)
        response, body = await rig.json("/nowhere/web/x")
        self.assertEqual(response.code, 404)
        self.assertEqual(body, {"error": "unknown datacenter", "status": 404, "datacenter": "nowhere"})

    async def test_unknown_service_is_404_and_watches_nothing(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend())
        response, body = await rig.json("/dc1/ghost/x")
        self.assertEqual(response.code, 404)
        self.assertEqual(body, {"error": "unknown service", "status": 404, "datacenter": "dc1", "service": "ghost"})
        self.assertEqual(rig.consul.requests_for("/v1/health/service/"), [])
        self.assertEqual(rig.gateway.engine.discovery.watchers, {})

    async def test_service_without_passing_instance_is_503_with_retry_after(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend(), status="critical")
        response, body = await rig.json("/dc1/web/x")
        self.assertEqual(response.code, 503)
        self.assertEqual(body["datacenter"], "dc1")
        self.assertEqual(body["service"], "web")
        self.assertEqual(body["status"], 503)
        self.assertTrue(response.headers.getRawHeaders(b"Retry-After"))

    async def test_no_passing_instance_is_503(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend(), status="critical")
        response, body = await rig.json("/dc1/web/")
        self.assertEqual((response.code, body["error"]), (503, "no passing instance"))

    async def test_too_short_paths_are_404(self) -> None:
        rig = GatewayRig(self)
        for path in ["/", "/dc1", "/dc1/"]:
            response, body = await rig.json(path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(body["status"], 404)

    async def test_bad_names_are_400_and_never_reach_consul(self) -> None:
        rig = GatewayRig(self)
        bad = ["/dc1/we%2Fb/", "/dc1/we%3Fb/", "/dc1/a%26b/", "/dc%001/web/", "/../web/", "/dc1/w..b/",
               "/dc1/w%20b/", "/d%C3%A9/web/"]
        for path in bad:
            response, body = await rig.json(path)
            self.assertEqual(response.code, 400, path)
            self.assertEqual(body["status"], 400)
        self.assertEqual(rig.consul.requests_for("/v1/health/service"), [])

    async def test_node_address_fallback(self) -> None:
        rig = GatewayRig(self)
        backend = rig.backend()
        rig.consul.register_service("dc1", "n1", "127.0.0.1", "web", backend.port, service_address="")
        response, _ = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 200)
        self.assertEqual(len(backend.requests_seen), 1)

    async def test_ipv6_instance(self) -> None:
        if not ipv6_available():
            from twisted.trial.unittest import SkipTest

            raise SkipTest("this machine cannot bind ::1")
        rig = GatewayRig(self)
        backend = rig.backend("six", interface="::1")
        rig.register(backend)
        response, body = await rig.get("/dc1/web/v6")
        self.assertEqual(response.code, 200)
        self.assertEqual(_echo(body)["backend"], "six")

    async def test_tag_filter_is_server_side(self) -> None:
        rig = GatewayRig(self, tag=["v2", "blue"])
        old, new = rig.backend("old"), rig.backend("new")
        rig.register(old, tags=["v1", "blue"])
        rig.register(new, tags=["v2", "blue"])
        for _ in range(4):
            _, body = await rig.get("/dc1/web/")
            self.assertEqual(_echo(body)["backend"], "new")
        queries = rig.consul.requests_for("/v1/health/service/web")
        self.assertTrue(queries)
        for query in queries:
            self.assertEqual([v for k, v in query.args if k == "tag"], ["v2", "blue"])
            # Health is sorted client-side (include-warning, panic mode).
            self.assertNotIn("passing", [k for k, _ in query.args])

    async def test_server_names(self) -> None:
        rig = GatewayRig(self, server_name=["api.example.com", "*.svc.example.com"])
        rig.register(rig.backend())
        for host, code in [
            (b"api.example.com", 200),
            (b"API.Example.com:8080", 200),
            (b"x.svc.example.com", 200),
            (b"svc.example.com", 404),
            (b"evil.com", 404),
        ]:
            response, _ = await rig.get("/dc1/web/", headers={b"Host": [host]})
            self.assertEqual(response.code, code, host)


class ForwardingTests(TestCase):
    """
    Headers both ways, status and bodies relayed untouched.
    """

    async def test_request_headers(self) -> None:
        rig = GatewayRig(self)
        backend = rig.backend()
        rig.register(backend)
        headers = Headers({
            b"Host": [b"gw.example.com"],
            b"X-Forwarded-For": [b"203.0.113.9"],
            b"X-Forwarded-Host": [b"spoofed"],
            b"X-Forwarded-Proto": [b"https"],
            b"Forwarded": [b"for=203.0.113.9;proto=https"],
            b"Connection": [b"X-Secret, keep-alive"],
            b"X-Secret": [b"hop"],
            b"Keep-Alive": [b"timeout=5"],
            b"Proxy-Authorization": [b"Basic Zm9vOmJhcg=="],
            b"Proxy-Connection": [b"keep-alive"],
            b"TE": [b"trailers"],
            b"X-Custom": [b"one", b"two"],
        })
        _, body = await rig.get("/dc1/web/h", headers=headers)
        echo = _echo(body)
        self.assertEqual(_header(echo, "Host"), ["gw.example.com"])
        # The client is not a trusted proxy: its forwarding claims are replaced.
        self.assertEqual(_header(echo, "X-Forwarded-For"), ["127.0.0.1"])
        self.assertEqual(_header(echo, "X-Real-IP"), ["127.0.0.1"])
        self.assertEqual(_header(echo, "X-Forwarded-Host"), ["gw.example.com"])
        self.assertEqual(_header(echo, "X-Forwarded-Proto"), ["http"])
        self.assertEqual(_header(echo, "Forwarded"), ['for=127.0.0.1;proto=http;host="gw.example.com"'])
        self.assertEqual(_header(echo, "X-Forwarded-Prefix"), ["/dc1/web"])
        self.assertEqual(_header(echo, "X-Custom"), ["one", "two"])
        for hop in ["X-Secret", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "TE"]:
            self.assertEqual(_header(echo, hop), [], hop)

    async def test_upstream_errors_are_relayed_untouched(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend("a"))
        for code in [404, 500, 201, 302]:
            response, body = await rig.get(f"/dc1/web/status/{code}", allow_redirects=False)
            self.assertEqual(response.code, code)
            self.assertEqual(json.loads(body)["status"], code)

    async def test_multi_valued_response_headers(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend())
        response, _ = await rig.get("/dc1/web/cookies")
        self.assertEqual(len(response.headers.getRawHeaders(b"Set-Cookie")), 3)

    async def test_hop_by_hop_response_headers_stripped(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend())
        response, _ = await rig.get("/dc1/web/headers?set=Keep-Alive:timeout%3D5&set=X-Kept:yes&set=Upgrade:h2c")
        self.assertEqual(response.headers.getRawHeaders(b"X-Kept"), [b"yes"])
        self.assertIsNone(response.headers.getRawHeaders(b"Keep-Alive"))
        self.assertIsNone(response.headers.getRawHeaders(b"Upgrade"))

    async def test_head_keeps_content_length(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend())
        response, body = await rig.request("HEAD", "/dc1/web/big?size=12345")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Length"), [b"12345"])
        self.assertEqual(body, b"")

    async def test_content_length_framing_kept(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend())
        client = await raw_connect(rig.port)
        client.transport.write(b"GET /dc1/web/big?size=1000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await client.closed
        head, _, body = client.received.partition(b"\r\n\r\n")
        self.assertIn(b"\r\nContent-Length: 1000", head)
        self.assertNotIn(b"Transfer-Encoding", head)
        self.assertEqual(len(body), 1000)

    async def test_keep_alive_reuses_one_upstream_connection(self) -> None:
        rig = GatewayRig(self)
        backend = rig.backend()
        rig.register(backend)
        for _ in range(5):
            response, _ = await rig.get("/dc1/web/")
            self.assertEqual(response.code, 200)
        self.assertEqual(backend.connections_made, 1)
        self.assertEqual({r.connection for r in backend.requests_seen}, {1})


class StreamingTests(TestCase):
    """
    Bodies stream both ways; nothing waits for a whole body.
    """

    async def test_large_download(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend())
        size = 32 * 1024 * 1024
        response = await rig.client.get(rig.url(f"/dc1/web/big?size={size}"))
        digest = hashlib.sha256()
        count = 0

        def collect(data: bytes) -> None:
            nonlocal count
            count += len(data)
            digest.update(data)

        import treq

        await treq.collect(response, collect)
        self.assertEqual(count, size)
        self.assertEqual(digest.hexdigest(), pattern_sha256(size))

    async def test_large_chunked_upload(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend())
        payload = bytes(range(256)) * (64 * 1024)  # 16 MiB
        producer = FileBodyProducer(_Unsized(payload))
        response, body = await rig.request("POST", "/dc1/web/upload", data=producer)
        self.assertEqual(response.code, 200)
        echo = json.loads(body)
        self.assertEqual(echo["body_length"], len(payload))
        self.assertEqual(echo["body_sha256"], hashlib.sha256(payload).hexdigest())

    async def test_upload_starts_upstream_before_the_body_ends(self) -> None:
        rig = GatewayRig(self)
        backend = rig.backend()
        rig.register(backend)
        await rig.get("/dc1/web/warm")  # the watcher now has a snapshot
        client = await raw_connect(rig.port)
        client.transport.write(
            b"POST /dc1/web/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345"
        )
        # The upstream request is under way while half the body is missing.
        await eventually(lambda: len(backend.requests_seen) == 1 and backend.connections_made >= 1
                         and backend.open_connections >= 1)
        client.transport.write(b"67890")
        await eventually(lambda: b"body_sha256" in client.received)
        self.assertIn(hashlib.sha256(b"1234567890").hexdigest().encode(), client.received)
        client.transport.loseConnection()
        await client.closed

    async def test_hand_made_chunked_request(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend())
        client = await raw_connect(rig.port)
        client.transport.write(
            b"POST /dc1/web/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await client.closed
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200"))
        self.assertIn(hashlib.sha256(b"hello world").hexdigest().encode(), client.received)

    async def test_expect_100_continue(self) -> None:
        rig = GatewayRig(self)
        backend = rig.backend()
        rig.register(backend)
        client = await raw_connect(rig.port)
        client.transport.write(
            b"PUT /dc1/web/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        await eventually(lambda: b"100 Continue" in client.received)
        client.transport.write(b"data")
        await client.closed
        final = client.received.split(b"\r\n\r\n", 1)[1]
        self.assertTrue(final.startswith(b"HTTP/1.1 200"), client.received)
        self.assertIn(hashlib.sha256(b"data").hexdigest().encode(), final)
        self.assertEqual(backend.requests_seen[-1].header_values(b"Expect"), [])


class _Unsized:
    """
    A file whose size treq cannot learn, so the upload goes out chunked.
    """

    def __init__(self, data: bytes) -> None:
        import io

        self._file = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._file.read(n)

    def close(self) -> None:
        self._file.close()


class UpstreamFailureTests(TestCase):
    async def test_refused_is_502(self) -> None:
        rig = GatewayRig(self)
        rig.consul.register_service("dc1", "n", "127.0.0.1", "web", closed_port())
        response, body = await rig.json("/dc1/web/")
        self.assertEqual((response.code, body["error"]), (502, "upstream unreachable"))

    async def test_reset_before_response_is_502(self) -> None:
        rig = GatewayRig(self)
        resetting = ResettingBackend("reset")
        resetting.listen(reactor)
        self.addCleanup(resetting.stop)
        rig.consul.register_service("dc1", "n", "127.0.0.1", "web", resetting.port)
        response, body = await rig.json("/dc1/web/")
        self.assertEqual(response.code, 502)
        self.assertEqual(body["status"], 502)
        self.assertNotIn("Traceback", json.dumps(body))

    async def test_slow_upstream_is_504(self) -> None:
        rig = GatewayRig(self, upstream_timeout=0.3)
        rig.register(rig.backend())
        response, body = await rig.json("/dc1/web/slow?delay=3")
        self.assertEqual((response.code, body["error"]), (504, "upstream timed out"))


class DiscoveryTests(TestCase):
    """
    Consul drives routing: changes arrive by blocking queries, outages keep
    the last good view.
    """

    async def test_health_flip_while_traffic_flows(self) -> None:
        rig = GatewayRig(self)
        a, b = rig.backend("a"), rig.backend("b")
        rig.register(a)
        b_id = rig.register(b)
        codes = set()

        async def traffic(n: int) -> List[str]:
            names = []
            for _ in range(n):
                response, body = await rig.get("/dc1/web/")
                codes.add(response.code)
                names.append(_echo(body)["backend"])
            return names

        self.assertEqual(set(await traffic(4)), {"a", "b"})
        rig.consul.set_check_status("dc1", b_id, "critical")
        await eventually(lambda: rig.gateway_instances("dc1", "web") == 1)
        self.assertEqual(set(await traffic(6)), {"a"})
        rig.consul.set_check_status("dc1", b_id, "passing")
        await eventually(lambda: rig.gateway_instances("dc1", "web") == 2)
        self.assertEqual(set(await traffic(4)), {"a", "b"})
        self.assertEqual(codes, {200})

    async def test_blocking_queries_not_polling(self) -> None:
        rig = GatewayRig(self, consul_wait=0.5)
        rig.register(rig.backend())
        await rig.get("/dc1/web/")
        await settle(1.6)
        queries = rig.consul.requests_for("/v1/health/service/web")
        # One immediate query, then about one per wait period: not a hot loop.
        self.assertGreaterEqual(len(queries), 2)
        self.assertLessEqual(len(queries), 6)
        self.assertTrue(all(q.arg("index") for q in queries[1:]))
        self.assertTrue(all(q.arg("wait") for q in queries[1:]))

    async def test_concurrent_first_requests_share_one_query(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend())
        rig.consul.stall()
        pending = [ensureDeferred(rig.get("/dc1/web/")) for _ in range(10)]
        await eventually(lambda: rig.consul.stalled_count >= 1)
        await settle(0.05)
        rig.consul.unstall()
        results = [await d for d in pending]
        self.assertEqual({r.code for r, _ in results}, {200})
        first = [q for q in rig.consul.requests_for("/v1/health/service/web") if not q.arg("index")]
        self.assertEqual(len(first), 1)

    async def test_consul_down_keeps_serving_last_good_view(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend())
        self.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)
        rig.consul.fail(500, "No cluster leader")
        rig.consul.spurious_wakeup("dc1", "web")
        await eventually(lambda: rig.watcher("dc1", "web").errors >= 1)
        for _ in range(3):
            self.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)
        rig.consul.recover()

    async def test_consul_unreachable_on_first_request_is_503(self) -> None:
        rig = GatewayRig(self)
        rig.consul.fail(500, "No cluster leader")
        response, body = await rig.json("/dc1/web/")
        self.assertEqual(response.code, 503)
        self.assertEqual(body["error"], "service discovery unavailable")

    async def test_index_reset_is_followed(self) -> None:
        rig = GatewayRig(self)
        a = rig.backend("a")
        rig.register(a)
        await rig.get("/dc1/web/")
        before = rig.watcher("dc1", "web").index
        # The watch's blocking query must be parked first: one that reaches
        # Consul after the reset asks for an index above Consul's and waits
        # its whole wait (Consul's protocol; the answer then resets it).
        await eventually(lambda: any(q.arg("index") for q in rig.consul.requests_for("/v1/health/service/web")))
        rig.consul.reset_index(1)
        await eventually(lambda: rig.watcher("dc1", "web").index < before)
        b = rig.backend("b")
        rig.register(b)
        await eventually(lambda: rig.gateway_instances("dc1", "web") == 2)

    async def test_acl_token_sent_and_never_shown(self) -> None:
        from restygate.testing.consul import ConsulServer

        lines = captured_log(self)
        consul = ConsulServer(reactor, jitter=False, acl_token="s3cr3t-t0ken")
        rig = GatewayRig(self, consul=consul, consul_token="s3cr3t-t0ken", admin="tcp:0:interface=127.0.0.1")
        rig.register(rig.backend())
        response, body = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 200)
        queries = rig.consul.requests_for("/v1/health/service/web")
        self.assertEqual({q.headers.get("x-consul-token") for q in queries}, {"s3cr3t-t0ken"})
        self.assertFalse(any("token" in k for q in queries for k, _ in q.args))
        shown = [(await rig.get("/nowhere/web/"))[1]]
        # Consul now refuses the token: the errors this causes are logged.
        rig.consul.acl_tokens = frozenset(["another"])
        rig.consul.spurious_wakeup("dc1", "web")
        await eventually(lambda: rig.watcher("dc1", "web").errors >= 1)
        shown.append((await rig.get("/dc1/ghost/"))[1])
        for path in ["/metrics", "/status", "/status?format=json"]:
            shown.append((await rig.admin(path))[1])
        self.assertTrue(any("ACL not found" in line for line in lines))
        for text in [*shown, *(line.encode() for line in lines), repr(rig.config).encode()]:
            self.assertNotIn(b"s3cr3t", text)
