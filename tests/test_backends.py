"""
Tests for the loopback test backends in L{tests.support.backends}.

These run over real loopback sockets with twisted.web's L{Agent} on a
persistent L{HTTPConnectionPool}, the same client machinery restygate uses
upstream, so what they prove about keep-alive and framing carries over to the
end-to-end tests that put restygate in front of these backends.
"""

from __future__ import annotations

import hashlib
import json
from io import BytesIO
from typing import Any, TypeVar, Union

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseFailed,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from tests.support.backends import (
    COOKIES,
    Backend,
    HalfResponseBackend,
    ResettingBackend,
    closed_port,
    ipv6_available,
    pattern_bytes,
    pattern_sha256,
    raw_exchange,
)


_Server = TypeVar("_Server", bound=Union[Backend, ResettingBackend, HalfResponseBackend])


def _split_head(raw: bytes) -> tuple[list[bytes], bytes]:
    """Split a raw response into its head lines and everything after them."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), rest


def _header(lines: list[bytes], name: bytes) -> list[bytes]:
    """Values of header C{name} among raw head lines (case-insensitive)."""
    wanted = name.lower()
    values: list[bytes] = []
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == wanted:
            values.append(value.strip())
    return values


def _dechunk(body: bytes) -> bytes:
    """Decode a chunked body (no extensions, no trailers)."""
    out: list[bytes] = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return b"".join(out)
        out.append(body[:size])
        body = body[size + 2 :]


class BackendTests(TestCase):
    """L{Backend} over real loopback sockets."""

    def setUp(self) -> None:
        self.backend = self.start(Backend("alpha"))
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        # Cleanups run last-in first-out: the pool closes its cached
        # connections before the backend stops.
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)

    def start(self, server: _Server, interface: str = "127.0.0.1") -> _Server:
        server.listen(reactor, interface=interface)
        self.addCleanup(server.stop)
        return server

    async def fetch(
        self,
        path: str,
        method: bytes = b"GET",
        headers: Headers | None = None,
        body: bytes | None = None,
        url: str | None = None,
    ) -> tuple[IResponse, bytes]:
        producer = None if body is None else FileBodyProducer(BytesIO(body))
        target = url if url is not None else self.backend.url(path)
        response = await self.agent.request(method, target.encode(), headers, producer)
        return response, await readBody(response)

    async def fetch_json(self, path: str, **kwargs: Any) -> Any:
        response, body = await self.fetch(path, **kwargs)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        return json.loads(body)

    async def test_echo(self) -> None:
        """
        The default route echoes the request as received: raw URI with the
        query untouched, header lines in order with repeats, body hash.
        """
        headers = Headers({b"X-Multi": [b"one", b"two"], b"X-Other": [b"3"]})
        body = b"hello backend"
        document = await self.fetch_json(
            "/any/path%20x?b=2&a=1&a=%2F&empty=",
            method=b"POST",
            headers=headers,
            body=body,
        )
        self.assertEqual(document["backend"], "alpha")
        self.assertEqual(document["method"], "POST")
        self.assertEqual(document["uri"], "/any/path%20x?b=2&a=1&a=%2F&empty=")
        self.assertEqual(document["path"], "/any/path%20x")
        self.assertEqual(document["query"], "b=2&a=1&a=%2F&empty=")
        self.assertEqual(document["version"], "HTTP/1.1")
        self.assertEqual(document["body_length"], len(body))
        self.assertEqual(document["body_sha256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(document["connection"], 1)
        names = [name.lower() for name, _ in document["headers"]]
        self.assertIn("host", names)
        multi = [v for k, v in document["headers"] if k.lower() == "x-multi"]
        self.assertEqual(multi, ["one", "two"])

        [record] = self.backend.requests_seen
        self.assertEqual(record.method, b"POST")
        self.assertEqual(record.uri, b"/any/path%20x?b=2&a=1&a=%2F&empty=")
        self.assertEqual(record.query, b"b=2&a=1&a=%2F&empty=")
        self.assertEqual(record.header_values(b"X-MULTI"), [b"one", b"two"])
        self.assertEqual(record.header_values(b"host"), [self.backend.address.encode()])
        self.assertEqual(
            [[k.decode(), v.decode()] for k, v in record.headers], document["headers"]
        )
        self.assertEqual(record.body_length, len(body))

    async def test_keep_alive(self) -> None:
        """
        Sequential requests through a persistent pool share one connection,
        and the backend numbers every request with it.
        """
        for _ in range(3):
            await self.fetch("/")
        self.assertEqual(self.backend.connections_made, 1)
        self.assertEqual(self.backend.open_connections, 1)
        self.assertEqual([r.connection for r in self.backend.requests_seen], [1, 1, 1])

    async def test_stop_closes_open_connections(self) -> None:
        """L{Backend.stop} also drops idle keep-alive connections."""
        await self.fetch("/")
        self.assertEqual(self.backend.open_connections, 1)
        await self.backend.stop()
        self.assertEqual(self.backend.open_connections, 0)

    async def test_big(self) -> None:
        """/big streams the pattern with a Content-Length."""
        size = 1_000_003
        response, body = await self.fetch(f"/big?size={size}&chunk=65536")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, size)
        self.assertEqual(len(body), size)
        self.assertEqual(hashlib.sha256(body).hexdigest(), pattern_sha256(size))

    async def test_big_chunked(self) -> None:
        """/big with chunked=1 has no Content-Length; the bytes are the same."""
        size = 300_000
        response, body = await self.fetch(f"/big?size={size}&chunk=7000&chunked=1")
        self.assertEqual(response.length, UNKNOWN_LENGTH)
        self.assertEqual(hashlib.sha256(body).hexdigest(), pattern_sha256(size))

        raw = await raw_exchange(
            reactor,
            self.backend.host,
            self.backend.port,
            b"GET /big?size=20000&chunk=3000&chunked=1 HTTP/1.1\r\n"
            b"Host: x\r\nConnection: close\r\n\r\n",
        )
        lines, rest = _split_head(raw)
        self.assertEqual(_header(lines, b"transfer-encoding"), [b"chunked"])
        self.assertEqual(_header(lines, b"content-length"), [])
        self.assertEqual(_dechunk(rest), pattern_bytes(0, 20000))

    async def test_head_big(self) -> None:
        """HEAD /big answers the GET's Content-Length and no body."""
        raw = await raw_exchange(
            reactor,
            self.backend.host,
            self.backend.port,
            b"HEAD /big?size=123456 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        lines, rest = _split_head(raw)
        self.assertEqual(lines[0], b"HTTP/1.1 200 OK")
        self.assertEqual(_header(lines, b"content-length"), [b"123456"])
        self.assertEqual(rest, b"")

    async def test_upload(self) -> None:
        """/upload reports the length and hash of a body larger than 64 KiB."""
        body = pattern_bytes(5, 200_000)
        document = await self.fetch_json("/upload", method=b"PUT", body=body)
        self.assertEqual(
            document,
            {
                "backend": "alpha",
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            },
        )

    async def test_cookies(self) -> None:
        """/cookies sends every Set-Cookie as its own header line."""
        response, _ = await self.fetch("/cookies")
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), list(COOKIES))

    async def test_status(self) -> None:
        """/status/<code> answers that code, with a JSON body except for 204."""
        response, body = await self.fetch("/status/404")
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body), {"backend": "alpha", "status": 404})
        response, body = await self.fetch("/status/503")
        self.assertEqual(response.code, 503)
        response, body = await self.fetch("/status/204")
        self.assertEqual((response.code, body), (204, b""))
        # The keep-alive connection survived all of them.
        self.assertEqual(self.backend.connections_made, 1)

    async def test_bad_parameters(self) -> None:
        """Malformed route parameters get a 400, not a traceback."""
        for path in ("/status/99", "/status/abc", "/big?size=-1", "/slow?delay=x"):
            response, body = await self.fetch(path)
            self.assertEqual(response.code, 400, path)
            self.assertIn("error", json.loads(body))

    async def test_headers(self) -> None:
        """/headers?set= adds response headers, repeats included."""
        response, _ = await self.fetch("/headers?set=X-A:1&set=X-A:2&set=X-B:%20b%20")
        self.assertEqual(response.headers.getRawHeaders(b"x-a"), [b"1", b"2"])
        self.assertEqual(response.headers.getRawHeaders(b"x-b"), [b"b"])

    async def test_slow(self) -> None:
        """/slow answers after the delay."""
        started = reactor.seconds()
        document = await self.fetch_json("/slow?delay=0.2")
        self.assertGreaterEqual(reactor.seconds() - started, 0.19)
        self.assertEqual(document["path"], "/slow")

    async def test_slow_client_gone(self) -> None:
        """
        Stopping the backend under a pending /slow cancels its timer (trial
        would report the leftover delayed call) and fails the client.
        """
        pending = Deferred.fromCoroutine(self.fetch("/slow?delay=30"))
        await self.wait_for_requests(1)
        await self.backend.stop()
        await self.assertFailure(pending, ResponseFailed)

    async def test_hang(self) -> None:
        """/hang never answers; stop() still ends it."""
        pending = Deferred.fromCoroutine(self.fetch("/hang"))
        await self.wait_for_requests(1)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(pending.called)
        await self.backend.stop()
        await self.assertFailure(pending, ResponseFailed)

    async def test_drip(self) -> None:
        """/drip sends the headers at once and the body piece by piece."""
        started = reactor.seconds()
        response = await self.agent.request(
            b"GET", self.backend.url("/drip?size=6&chunk=2&delay=0.05").encode()
        )
        headers_at = reactor.seconds() - started
        body = await readBody(response)
        body_at = reactor.seconds() - started
        self.assertEqual(body, pattern_bytes(0, 6))
        self.assertEqual(response.length, 6)
        self.assertLess(headers_at, 0.05)
        self.assertGreaterEqual(body_at, 0.14)

    async def wait_for_requests(self, count: int) -> None:
        """Poll until the backend has recorded C{count} requests."""
        for _ in range(200):
            if len(self.backend.requests_seen) >= count:
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail(f"backend saw {len(self.backend.requests_seen)} requests")

    async def test_resetting_backend(self) -> None:
        """A L{ResettingBackend} fails the request and counts the attempt."""
        resetting = self.start(ResettingBackend())
        failure = await self.assertFailure(
            Deferred.fromCoroutine(self.fetch("/", url=resetting.url("/"))),
            ResponseFailed,
        )
        self.assertIsInstance(failure, ResponseFailed)
        self.assertEqual(resetting.connections_made, 1)

    async def test_half_response_backend(self) -> None:
        """
        A L{HalfResponseBackend} promises 1000 bytes, sends 10 and closes:
        Agent reports the loss; on the wire the ten pattern bytes are there.
        """
        half = self.start(HalfResponseBackend())
        await self.assertFailure(
            Deferred.fromCoroutine(self.fetch("/", url=half.url("/"))), ResponseFailed
        )
        raw = await raw_exchange(
            reactor, half.host, half.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        lines, rest = _split_head(raw)
        self.assertEqual(_header(lines, b"content-length"), [b"1000"])
        self.assertEqual(rest, pattern_bytes(0, 10))
        self.assertEqual(half.connections_made, 2)
        self.assertEqual(len(half.request_heads), 2)

    async def test_closed_port(self) -> None:
        """A port from L{closed_port} refuses connections."""
        url = f"http://127.0.0.1:{closed_port()}/"
        await self.assertFailure(
            Deferred.fromCoroutine(self.fetch("/", url=url)), ConnectError
        )

    async def test_ipv6(self) -> None:
        """A backend listens on ::1 and is addressed as [::1]:port."""
        if not ipv6_available():
            raise SkipTest("cannot bind ::1 on this host (no IPv6 loopback)")
        six = self.start(Backend("six"), interface="::1")
        self.assertEqual(six.host, "::1")
        self.assertEqual(six.address, f"[::1]:{six.port}")
        document = await self.fetch_json("/v6", url=six.url("/v6"))
        self.assertEqual(document["backend"], "six")
        self.assertEqual(six.requests_seen[0].path, b"/v6")


class PatternTests(TestCase):
    """The body pattern helpers agree with each other at any offset."""

    def test_pieces_join(self) -> None:
        whole = pattern_bytes(0, 200_000)
        self.assertEqual(len(whole), 200_000)
        pieces = b"".join(pattern_bytes(o, 777) for o in range(0, 200_000, 777))
        self.assertEqual(pieces[:200_000], whole)
        self.assertEqual(pattern_bytes(123_456, 70_000), whole[123_456:193_456])

    def test_sha256(self) -> None:
        for size in (0, 1, 250, 251, 65_536, 65_537, 200_003):
            self.assertEqual(
                pattern_sha256(size), hashlib.sha256(pattern_bytes(0, size)).hexdigest()
            )
