"""
Tests for host routes (C{host-route = "{service}.{dc}.gw.example.com"}): a
matching Host names the service and datacenter and the whole path goes
upstream with no X-Forwarded-Prefix; other hosts keep path routing; the
port is ignored; a host route's hosts need no server-name; bad templates are
refused with one line.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from twisted.trial.unittest import SynchronousTestCase, TestCase

from restygate.config import ConfigError, build
from restygate.proxy.routing import RouteError, host_route, route_request
from tests.support.harness import GatewayRig

TEMPLATES = ("{service}.{dc}.gw.example.com", "{dc}.{service}.edge.example.net")


def _headers(echo: Dict[str, Any], name: str) -> List[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


class MatchingTests(SynchronousTestCase):
    def test_match(self) -> None:
        self.assertEqual(host_route(b"web.dc1.gw.example.com", TEMPLATES), ("dc1", "web"))
        self.assertEqual(host_route(b"WEB.DC1.gw.example.com:8443", TEMPLATES), ("dc1", "web"))
        self.assertEqual(host_route(b"web.dc1.gw.example.com.", TEMPLATES), ("dc1", "web"))

    def test_placeholders_are_whole_labels(self) -> None:
        self.assertEqual(host_route(b"dc2.api.edge.example.net", TEMPLATES), ("dc2", "api"))
        for host in [b"a.b.web.dc1.gw.example.com", b"web.gw.example.com", b"web.dc1.gw.example.org",
                     b"web.dc1xgw.example.com"]:
            self.assertIsNone(host_route(host, TEMPLATES), host)

    def test_route(self) -> None:
        route = route_request(b"/a/b?c=d", [b"web.dc1.gw.example.com"], ("only.example.com",), TEMPLATES)
        self.assertEqual((route.dc, route.service, route.target, route.prefix), ("dc1", "web", b"/a/b?c=d", ""))
        # Other hosts: the path routes, and server-name still applies.
        route = route_request(b"/dc2/api/x", [b"only.example.com"], ("only.example.com",), TEMPLATES)
        self.assertEqual((route.dc, route.service, route.target, route.prefix), ("dc2", "api", b"/x", "/dc2/api"))
        error = self.assertRaises(RouteError, route_request, b"/dc2/api/x", [b"evil.com"], ("only.example.com",),
                                  TEMPLATES)
        self.assertEqual(error.status, 404)

    def test_not_a_path(self) -> None:
        error = self.assertRaises(RouteError, route_request, b"*", [b"web.dc1.gw.example.com"], (), TEMPLATES)
        self.assertEqual(error.status, 400)

    def test_bad_templates(self) -> None:
        for template in ["{service}.gw.example.com", "{service}.{dc}.{dc}.example.com", "x{service}.{dc}.example.com",
                         "{service}.{dc}.exa mple.com", "{service}.{dc}..com", "{dc}-edge.{service}.example.net"]:
            error = self.assertRaises(ConfigError, build, [{"host-route": [template]}])
            self.assertTrue(str(error).startswith("host-route: "), str(error))
            self.assertNotIn("\n", str(error))
        config = build([{"host-route": ["{service}.{dc}.GW.example.com."]}])
        self.assertEqual(config.host_routes, ("{service}.{dc}.gw.example.com",))


class HostRouteTests(TestCase):
    async def rig(self, **config: Any) -> GatewayRig:
        rig = GatewayRig(self, host_route=list(TEMPLATES), **config)
        rig.register(rig.backend("web1"), service="web", dc="dc1")
        rig.register(rig.backend("api2"), service="api", dc="dc2")
        return rig

    async def test_whole_path_no_prefix(self) -> None:
        rig = await self.rig()
        response, body = await rig.get(
            "/dc2/api/x?y=1", headers={b"Host": [b"web.dc1.gw.example.com:8080"], b"X-Forwarded-Prefix": [b"/evil"]}
        )
        self.assertEqual(response.code, 200)
        echo = json.loads(body)
        self.assertEqual((echo["backend"], echo["uri"]), ("web1", "/dc2/api/x?y=1"))
        self.assertEqual(_headers(echo, "X-Forwarded-Prefix"), [])
        self.assertEqual(_headers(echo, "Host"), ["web.dc1.gw.example.com:8080"])

    async def test_other_hosts_route_by_path(self) -> None:
        rig = await self.rig()
        response, body = await rig.get("/dc2/api/x", headers={b"Host": [b"gateway.example.com"]})
        echo = json.loads(body)
        self.assertEqual((echo["backend"], echo["uri"]), ("api2", "/x"))
        self.assertEqual(_headers(echo, "X-Forwarded-Prefix"), ["/dc2/api"])

    async def test_unknown_service_by_host(self) -> None:
        rig = await self.rig()
        response, _ = await rig.get("/", headers={b"Host": [b"nope.dc1.gw.example.com"]})
        self.assertEqual(response.code, 404)

    async def test_with_server_name(self) -> None:
        """
        server-name restricts path routing to its names; the host routes'
        hosts are allowed without being listed.
        """
        rig = await self.rig(server_name=["gateway.example.com"])
        for host, code, backend in [
            (b"api.dc2.gw.example.com", 200, "api2"),
            (b"dc1.web.edge.example.net", 200, "web1"),
            (b"gateway.example.com", 200, "web1"),
            (b"other.example.com", 404, None),
        ]:
            response, body = await rig.get("/dc1/web/", headers={b"Host": [host]})
            self.assertEqual(response.code, code, host)
            if backend is not None:
                self.assertEqual(json.loads(body)["backend"], backend, host)
