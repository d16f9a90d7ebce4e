"""
The pure-Python HTTP/1.1 parsers (restygate.h1parse and h1request, what PyPy runs) against
llhttp through httptools (what CPython runs): fed the same bytes, in one
piece and split anywhere, both report the same events and refuse the same
inputs.  The front and upstream tests run on whichever the interpreter
picks; these hold the other to it.
"""

from __future__ import annotations

from typing import Any, List, Tuple, Type

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from restygate import h1parse, h1request

Outcome = Tuple[Any, ...]


class Recorder:
    """Every callback, in order; split url and body pieces joined."""

    def __init__(self, parser_type: Type[Any]) -> None:
        self.events: List[Tuple[Any, ...]] = []
        self.parser = parser_type(self)
        self.request = hasattr(self.parser, "get_method")

    def _add(self, kind: str, data: bytes) -> None:
        if self.events and self.events[-1][0] == kind:
            self.events[-1] = (kind, self.events[-1][1] + data)
        else:
            self.events.append((kind, data))

    def on_message_begin(self) -> None:
        self.events.append(("begin",))

    def on_url(self, url: bytes) -> None:
        self._add("url", url)

    def on_status(self, reason: bytes) -> None:
        self._add("status", reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.events.append(("header", name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        if self.request:
            self.events.append(("head", parser.get_method(), parser.get_http_version(),
                                parser.should_keep_alive(), parser.should_upgrade()))
        else:
            self.events.append(("head", parser.get_status_code(), parser.get_http_version(),
                                parser.should_keep_alive()))

    def on_body(self, data: bytes) -> None:
        self._add("body", data)

    def on_message_complete(self) -> None:
        self.events.append(("end",))


def run(parser_type: Type[Any], pieces: List[bytes]) -> Tuple[List[Tuple[Any, ...]], Outcome]:
    """
    The events and how the feed ended.  After a refusal the events of the
    head being parsed are left out: nothing acts on a head that never
    completes, and llhttp reports its parts at points of its own.
    """
    events, outcome = _run(parser_type, pieces)
    if outcome == ("refused",):
        while events and events[-1][0] in ("begin", "url", "status", "header"):
            events.pop()
    return events, outcome


def _run(parser_type: Type[Any], pieces: List[bytes]) -> Tuple[List[Tuple[Any, ...]], Outcome]:
    recorder = Recorder(parser_type)
    for index, piece in enumerate(pieces):
        try:
            recorder.parser.feed_data(piece)
        except httptools.HttpParserUpgrade as upgrade:
            return recorder.events, ("upgrade", piece[int(upgrade.args[0]):] + b"".join(pieces[index + 1:]))
        except httptools.HttpParserCallbackError as e:
            return recorder.events, ("callback error", type(e.__context__))
        except httptools.HttpParserError:
            return recorder.events, ("refused",)
    return recorder.events, ("fed",)


def split(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\r\n\r\nGET /a?b#c HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET  /  HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\n",
    b"GET / HTTP/1.1\r\nHost: \t x \t \r\nEmpty:\r\nSpaces:   \r\nA:b:c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: c\r\n\tB: c\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Folded: a\r\n  b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHo\x01st: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x80\xff\tb\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Bad: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Bad: a\nInjected: b\r\n\r\n",
    b"GET / HTTP/1.1\r\n: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nA\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\r\n",
    b"GET /a\x80b HTTP/1.1\r\n\r\n",
    b"GET /a\tb HTTP/1.1\r\n\r\n",
    b"GET /a\x7fb HTTP/1.1\r\n\r\n",
    b"GET /a?b\x80 HTTP/1.1\r\n\r\n",
    b"GET /a\"<>\\^`{|} HTTP/1.1\r\n\r\n",
    b"GET a HTTP/1.1\r\n\r\n",
    b"GET * HTTP/1.1\r\n\r\n",
    b"OPTIONS *a HTTP/1.1\r\n\r\n",
    b"GET ?a HTTP/1.1\r\n\r\n",
    b"GET http://h:80/p?q HTTP/1.1\r\n\r\n",
    b"GET HTtp://h HTTP/1.1\r\n\r\n",
    b"GET http:// HTTP/1.1\r\n\r\n",
    b"GET http:///x HTTP/1.1\r\n\r\n",
    b"GET http:/h HTTP/1.1\r\n\r\n",
    b"GET http:x HTTP/1.1\r\n\r\n",
    b"GET http HTTP/1.1\r\n\r\n",
    b"GET h2c://h/ HTTP/1.1\r\n\r\n",
    b"GET http://h#x HTTP/1.1\r\n\r\n",
    b"GET http://h^/ HTTP/1.1\r\n\r\n",
    b"GET http://x@y/p@q HTTP/1.1\r\n\r\n",
    b"GET http://h@@/ HTTP/1.1\r\n\r\n",
    b"GET http://[::1]:1/x HTTP/1.1\r\n\r\n",
    b"GET http://a_b-c~!$&'()*+,;=:%/ HTTP/1.1\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\n\r\nabc",
    b"CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"CONNECT u@h@x HTTP/1.1\r\n\r\n",
    b"CONNECT h:1#x HTTP/1.1\r\n\r\n",
    b"CONNECT h:1?x#y HTTP/1.1\r\n\r\n",
    b"FOO / HTTP/1.1\r\n\r\n",
    b"get / HTTP/1.1\r\n\r\n",
    b"GET\t/ HTTP/1.1\r\n\r\n",
    b"GETX / HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"M-SEARCH * HTTP/1.1\r\n\r\n",
    b"QUERY /q HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
    b"GET / HTTP/1.2\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.10\r\n\r\n",
    b"GET / http/1.1\r\n\r\n",
    b"GET /\r\nHost: x\r\n\r\n",
    b"GET /\n\r\n",
    b"GET / \r\n\r\n",
    b"GET \r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: Keep-Alive, foo\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alivex\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: foo,close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close2\r\n\r\n",
    b"GET / HTTP/1.1\r\nProxy-Connection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nrest",
    b"GET / HTTP/1.1\r\nConnection: UPGRADE\r\nupgrade: x\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: x upgrade\r\nUpgrade: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: ,upgrade ,\r\nUpgrade:\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close, upgrade\r\nUpgrade: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: w\r\nContent-Length: 3\r\n\r\nabcrest",
    b"POST / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: w\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length:  3 \t\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nContent-Length: 3 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\nabc",
    b"POST / HTTP/1.1\r\nContent-Length: 0003\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\nab",
    b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\nab",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nContent-Length: 3,3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0\r\nT: v\r\nU:\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"b\\\"c\";d=;e\r\nabc\r\n0;x\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"b\x80\tc\"\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"b\x01\"\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"b\"x\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a b\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a==\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0003\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nx\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: v\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT : v\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
]

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: keep-alive\r\n\r\nsmall:ok\n",
    b"\r\nHTTP/1.1 200 OK\r\n\r\nabc",
    b"HTTP/1.1 200\r\n\r\n",
    b"HTTP/1.1 200 \r\nA: b\r\n\r\n",
    b"HTTP/1.1 200  OK\r\n\r\n",
    b"HTTP/1.1 200 O\x01K\x80\tx\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"HTTP/1.1 099 OK\r\n\r\n",
    b"HTTP/1.1 999 OK\r\n\r\n",
    b"HTTP/2.0 200 OK\r\n\r\n",
    b"HTTP/1.2 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 204 No\r\nContent-Length: 5\r\n\r\nabcde",
    b"HTTP/1.1 101 S\r\n\r\nxyz",
    b"HTTP/1.1 101 S\r\nUpgrade: w\r\nConnection: upgrade\r\n\r\nxyz",
    b"HTTP/1.1 200 OK\r\nUpgrade: w\r\nConnection: upgrade\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 100 C\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 103 E\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: v\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcX",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 204 No\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Bad: a\rb\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nTrailer-A: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX",
    b"XTTP/1.1 200 OK\r\n\r\n",
]

HEADER_LINES = [
    b"Host: x", b"Content-Length: 3", b"Content-Length: 0", b"Content-Length: x", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip", b"Connection: close", b"Connection: keep-alive", b"Connection: upgrade",
    b"Upgrade: websocket", b"Expect: 100-continue", b"TE: trailers", b"X-A: \xff", b"X-A:\tb ", b" folded",
    b"X-A: a\x00b", b"X: a\rb", b"Bad Name: v", b"X-Empty:", b"Proxy-Connection: close",
]
BODIES = [b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"0\r\n\r\n", b"0\r\nT: v\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]


class AgreementTests(TestCase):
    def assertAgree(self, parser: str, data: bytes, cuts: List[int]) -> None:
        theirs = run(getattr(httptools, parser), [data])
        for pieces in ([data], split(data, cuts), [data[i:i + 1] for i in range(len(data))][:400] or [b""]):
            if len(pieces) == 400 and len(data) > 400:
                continue
            ours = run(getattr(h1request if parser == "HttpRequestParser" else h1parse, parser), pieces)
            expected = theirs if len(pieces) == 1 else run(getattr(httptools, parser), pieces)
            self.assertEqual(ours, expected, (data[:300], pieces[:5]))

    def test_requests(self) -> None:
        for data in REQUESTS:
            self.assertAgree("HttpRequestParser", data, [7, 20, 33])

    def test_responses(self) -> None:
        for data in RESPONSES:
            self.assertAgree("HttpResponseParser", data, [5, 17, 40])

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT", b"DELETE", b"PATCH", b"BREW"]),
        st.sampled_from([b"/", b"/a/b?c=d#e", b"*", b"http://h:1/p", b"h:443", b"/\x7f", b"x y"]),
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.x", b""]),
        st.lists(st.sampled_from(HEADER_LINES), max_size=4),
        st.sampled_from(BODIES),
        st.lists(st.integers(min_value=0, max_value=200), max_size=4),
    )
    def test_generated_requests(self, method: bytes, target: bytes, version: bytes, headers: List[bytes],
                                body: bytes, cuts: List[int]) -> None:
        line = b" ".join(part for part in (method, target, version) if part)
        data = line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
        self.assertAgree("HttpRequestParser", data, cuts)

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 101 Go",
                         b"HTTP/1.1 100 Continue", b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 500"]),
        st.lists(st.sampled_from(HEADER_LINES), max_size=4),
        st.sampled_from(BODIES),
        st.lists(st.integers(min_value=0, max_value=200), max_size=4),
    )
    def test_generated_responses(self, line: bytes, headers: List[bytes], body: bytes, cuts: List[int]) -> None:
        data = line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
        self.assertAgree("HttpResponseParser", data, cuts)

    def test_a_callback_error_is_the_context(self) -> None:
        class Failing(Recorder):
            def on_headers_complete(self) -> None:
                raise KeyError("stop")

        for parser_type in (httptools.HttpRequestParser, h1request.HttpRequestParser):
            recorder = Failing(parser_type)
            with self.assertRaises(httptools.HttpParserCallbackError) as raised:
                recorder.parser.feed_data(b"GET / HTTP/1.1\r\n\r\n")
            self.assertIsInstance(raised.exception.__context__, KeyError)


class StricterTests(TestCase):
    """Where llhttp is lenient in ways restygate never relied on."""

    def test_rtsp_ice_and_the_http2_preface_are_refused(self) -> None:
        for data in (b"DESCRIBE / RTSP/1.0\r\n\r\n", b"GET / ICE/1.0\r\n\r\n", b"PRI * HTTP/1.1\r\n\r\n",
                     b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
            self.assertEqual(run(h1request.HttpRequestParser, [data])[1], ("refused",), data)

    def test_a_line_that_never_ends_is_bounded(self) -> None:
        pieces = [b"HTTP/1.1 200 OK\r\nX: "] + [b"a" * 65536] * 17
        self.assertEqual(run(h1parse.HttpResponseParser, pieces), ([], ("refused",)))
        pieces = [b"GET"] + [b" " * 100] * 3
        self.assertEqual(run(h1request.HttpRequestParser, pieces), ([], ("refused",)))
