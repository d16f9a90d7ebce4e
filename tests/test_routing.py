"""
Tests for L{restygate.proxy.routing}: the request-target contract and the Host
header check.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from restygate.proxy.routing import Route, RouteError, host_matches, parse_target, split_host

_ALLOWED_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class ParseTargetTests(SynchronousTestCase):
    def assertRouteError(self, uri: bytes, status: int) -> RouteError:
        error: RouteError = self.assertRaises(RouteError, parse_target, uri)
        self.assertEqual(error.status, status, uri)
        self.assertEqual(str(error), error.message)
        return error

    def test_service_root(self) -> None:
        """
        C{/dc/svc} goes to C{/}.
        """
        self.assertEqual(parse_target(b"/dc1/web"), Route("dc1", "web", b"/"))

    def test_service_root_slash(self) -> None:
        self.assertEqual(parse_target(b"/dc1/web/"), Route("dc1", "web", b"/"))

    def test_path_and_query_byte_for_byte(self) -> None:
        self.assertEqual(parse_target(b"/dc/svc/a/b?x=1&y"), Route("dc", "svc", b"/a/b?x=1&y"))

    def test_query_without_path(self) -> None:
        self.assertEqual(parse_target(b"/dc/svc?q=1"), Route("dc", "svc", b"/?q=1"))

    def test_rest_untouched(self) -> None:
        """
        The rest of the path is not decoded, normalised or merged.
        """
        for rest in [
            b"/a%2Fb",
            b"//double//slash/",
            b"/./../x",
            b"/%00?%26=%3F",
            b"/caf%C3%A9",
            b"/\xff",
            b"/a?b?c#d",
            b"/?",
        ]:
            self.assertEqual(parse_target(b"/dc/svc" + rest).target, rest)

    def test_prefix(self) -> None:
        self.assertEqual(parse_target(b"/eu-west.1/my_svc/x").prefix, "/eu-west.1/my_svc")

    def test_names_are_str(self) -> None:
        route = parse_target(b"/DC-1/Web.v2_x/")
        self.assertEqual((route.dc, route.service), ("DC-1", "Web.v2_x"))

    def test_longest_names(self) -> None:
        name = b"a" * 255
        self.assertEqual(parse_target(b"/" + name + b"/" + name).service, "a" * 255)
        self.assertRouteError(b"/" + name + b"a/svc", 400)

    def test_not_routed(self) -> None:
        """
        Fewer than two names: 404.
        """
        for uri in [b"/", b"/dc", b"/dc/", b"//svc", b"//", b"/?dc/svc", b"/dc?/svc", b"/dc//x"]:
            self.assertRouteError(uri, 404)

    def test_not_origin_form(self) -> None:
        """
        Absolute-form, authority-form and asterisk-form targets: 400.
        """
        for uri in [b"http://evil/", b"http://evil/dc/svc", b"*", b"example.com:443", b"", b"dc/svc"]:
            self.assertRouteError(uri, 400)

    def test_bad_names(self) -> None:
        """
        Encoded separators, NUL, dot-dot, spaces and non-ASCII are refused
        in either name, before any decoding could turn them into something
        else.
        """
        for bad in [
            b"a%2Fb",
            b"a%2fb",
            b"%2F",
            b"a%3Fb",
            b"a%26b",
            b"a%00",
            b"%2E%2E",
            b"..",
            b"a..b",
            b"...",
            b"a b",
            b"a%20b",
            b"\xc3\xa9",
            b"caf%C3%A9",
            b"a\x00b",
            b"a;b",
            b"a:b",
            b"a@b",
            b"a+b",
            b"a\\b",
            b"a\tb",
        ]:
            self.assertRouteError(b"/" + bad + b"/svc/x", 400)
            self.assertRouteError(b"/dc/" + bad + b"/x", 400)
            self.assertRouteError(b"/dc/" + bad, 400)

    def test_error_message_names_kind(self) -> None:
        self.assertIn("datacenter", self.assertRouteError(b"/a%2F/svc", 400).message)
        self.assertIn("service", self.assertRouteError(b"/dc/a%2F", 400).message)


# Bytes a name segment may be built from: allowed characters and the ones
# that must never get through (separators, escapes, controls, non-ASCII).
_segment_bytes = st.sampled_from(
    [bytes([b]) for b in b"aZ09_.-"] + [b"%", b"%2F", b"%3F", b"%26", b"%00", b" ", b"\x00", b"\xff", b"#", b";", b":", b"?"]
)
_segments = st.lists(_segment_bytes, max_size=8).map(b"".join)
_targets = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda dc, svc, rest, query: b"/" + dc + b"/" + svc + rest + query,
        _segments,
        _segments,
        st.one_of(st.just(b""), st.just(b"/"), st.binary(max_size=20).map(lambda b: b"/" + b)),
        st.one_of(st.just(b""), st.binary(max_size=10).map(lambda b: b"?" + b)),
    ),
)


class ParseTargetPropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(_targets)
    def test_accepted_names_are_clean(self, uri: bytes) -> None:
        """
        A route, or a 400/404: every accepted name has only Consul's name
        characters and no C{..}.
        """
        try:
            route = parse_target(uri)
        except RouteError as e:
            self.assertIn(e.status, (400, 404))
            return
        for name in (route.dc, route.service):
            self.assertTrue(_ALLOWED_NAME.fullmatch(name), name)
            self.assertNotIn("..", name)

    @settings(max_examples=150, deadline=None)
    @given(_targets)
    def test_target_reassembles(self, uri: bytes) -> None:
        """
        The target starts with C{/}, and prefix + target is the input (but
        for the C{/} added when the input stops at the service name).
        """
        try:
            route = parse_target(uri)
        except RouteError:
            return
        self.assertTrue(route.target.startswith(b"/"), route.target)
        prefix = route.prefix.encode("ascii")
        if uri.startswith(prefix + b"/"):
            self.assertEqual(prefix + route.target, uri)
        else:
            # "/dc/svc" or "/dc/svc?query"
            self.assertEqual(prefix + route.target[1:], uri)
            self.assertTrue(route.target == b"/" or route.target.startswith(b"/?"), route.target)

    @settings(max_examples=100, deadline=None)
    @given(
        st.from_regex(rb"\A[A-Za-z0-9_\-]{1,20}\Z"),
        st.from_regex(rb"\A[A-Za-z0-9_\-]{1,20}\Z"),
        st.binary(max_size=30),
    )
    def test_good_names_always_route(self, dc: bytes, service: bytes, rest: bytes) -> None:
        route = parse_target(b"/" + dc + b"/" + service + b"/" + rest)
        self.assertEqual((route.dc, route.service), (dc.decode(), service.decode()))
        self.assertEqual(route.target, b"/" + rest)


class SplitHostTests(SynchronousTestCase):
    def test_forms(self) -> None:
        for host, expected in [
            (b"Example.COM", b"example.com"),
            (b"example.com:8080", b"example.com"),
            (b"example.com.", b"example.com"),
            (b"example.com.:80", b"example.com"),
            (b" example.com ", b"example.com"),
            (b"[::1]:8080", b"[::1]"),
            (b"[::1]", b"[::1]"),
            (b"[2001:DB8::1]:443", b"[2001:db8::1]"),
            (b"127.0.0.1:80", b"127.0.0.1"),
        ]:
            self.assertEqual(split_host(host), expected, host)


class HostMatchesTests(SynchronousTestCase):
    NAMES = ("gateway.example.com", "*.example.com", "localhost", "[::1]")

    def test_exact(self) -> None:
        self.assertTrue(host_matches(b"gateway.example.com", ("gateway.example.com",)))

    def test_port_ignored(self) -> None:
        self.assertTrue(host_matches(b"localhost:8080", self.NAMES))

    def test_case_ignored(self) -> None:
        self.assertTrue(host_matches(b"LocalHost", self.NAMES))

    def test_trailing_dot(self) -> None:
        self.assertTrue(host_matches(b"localhost.", self.NAMES))
        self.assertTrue(host_matches(b"localhost.:8080", self.NAMES))

    def test_ipv6_literal(self) -> None:
        """
        The port after a bracketed IPv6 literal is dropped, not a piece of the
        address.
        """
        self.assertTrue(host_matches(b"[::1]:8080", self.NAMES))
        self.assertTrue(host_matches(b"[::1]", self.NAMES))
        self.assertFalse(host_matches(b"[::1]:8080", ("localhost",)))
        self.assertFalse(host_matches(b"[::2]:8080", self.NAMES))

    def test_wildcard_subdomains(self) -> None:
        names = ("*.example.com",)
        self.assertTrue(host_matches(b"a.example.com", names))
        self.assertTrue(host_matches(b"a.b.example.com", names))
        self.assertTrue(host_matches(b"A.Example.Com.:443", names))

    def test_wildcard_not_itself(self) -> None:
        names = ("*.example.com",)
        self.assertFalse(host_matches(b"example.com", names))
        self.assertFalse(host_matches(b".example.com", names))
        self.assertFalse(host_matches(b"badexample.com", names))
        self.assertFalse(host_matches(b"a.example.com.evil", names))
        self.assertFalse(host_matches(b"example.com.a", names))

    def test_other_names(self) -> None:
        for host in [b"evil.com", b"gateway.example.co", b"xgateway.example.com.evil", b"", b"local"]:
            self.assertFalse(host_matches(host, ("gateway.example.com", "localhost")), host)

    def test_no_names(self) -> None:
        self.assertFalse(host_matches(b"localhost", ()))

    def test_non_ascii_host(self) -> None:
        self.assertFalse(host_matches(b"\xffexample.com", ("*.example.com", "example.com")))
