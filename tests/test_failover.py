"""
Tests for datacenter failover: off by default; an ordered list, with
failover-limit; "nearest" by the network coordinates the Consul test server
serves at /v1/coordinate/datacenters (Consul's body and distance formula);
the X-Restygate-Datacenter header on every proxied answer; the original
X-Forwarded-Prefix upstream; the access log and restygate_failovers_total.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

import treq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from restygate.config import build
from restygate.discovery.catalog import StaticCatalog
from restygate.discovery.consul.answers import Coordinate, parse_coordinates
from restygate.discovery.consul.coordinates import NearestDatacenters, by_distance, distance
from restygate.proxy.failover import find
from restygate.proxy.parts import EngineParts
from restygate.proxy.routing import parse_target
from restygate.upstream.outliers import Outliers
from restygate.upstream.pool import Upstream
from tests.support.harness import GatewayRig, captured_log

ADMIN = "tcp:0:interface=127.0.0.1"


def _point(*vec: float, height: float = 0.0, adjustment: float = 0.0) -> Coordinate:
    return Coordinate(tuple(vec) + (0.0,) * (8 - len(vec)), height, adjustment)


def _headers(echo: Dict[str, Any], name: str) -> List[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


class DistanceTests(SynchronousTestCase):
    def test_consul_formula(self) -> None:
        """
        |a - b| + both heights, + both adjustments when that stays positive.
        """
        self.assertAlmostEqual(distance(_point(0.003, 0.004), _point()), 0.005)
        self.assertAlmostEqual(distance(_point(0.003, 0.004, height=0.001), _point(height=0.002)), 0.008)
        self.assertAlmostEqual(
            distance(_point(0.003, 0.004, adjustment=0.001), _point(adjustment=0.001)), 0.007
        )
        # A negative adjusted distance falls back to the raw one.
        self.assertAlmostEqual(distance(_point(0.003, 0.004, adjustment=-0.01), _point()), 0.005)

    def test_median_over_server_pairs(self) -> None:
        coordinates = {
            "dc1": (_point(), _point(0.001)),
            "dc2": (_point(0.050), _point(0.052), _point(0.500)),
            "dc3": (_point(0.020),),
            "dc4": (),
        }
        self.assertEqual(by_distance(coordinates, "dc1"), ["dc3", "dc2"])
        self.assertEqual(by_distance(coordinates, "DC2"), ["dc3", "dc1"])
        self.assertEqual(by_distance(coordinates, "dc4"), [])

    def test_parse(self) -> None:
        body = json.dumps([
            {"Datacenter": "dc1", "AreaID": "WAN", "Coordinates": [
                {"Node": "s1", "Coord": {"Adjustment": 0.5, "Error": 1.5, "Height": 0.25, "Vec": [1, 2, 3, 4, 5, 6, 7, 8]}},
                {"Node": "s2", "Coord": {"Vec": "nonsense"}},
            ]},
            {"Datacenter": "dc2", "Coordinates": None},
            "junk",
        ]).encode()
        self.assertEqual(parse_coordinates(body), {"dc1": (Coordinate((1, 2, 3, 4, 5, 6, 7, 8), 0.25, 0.5),)})

    def test_fetched_when_needed_and_stale(self) -> None:
        clock = Clock()
        asked: List[int] = []

        def fetch() -> Deferred[Dict[str, Any]]:
            asked.append(1)
            return succeed({"dc1": (_point(),), "dc2": (_point(0.01),)})

        nearest = NearestDatacenters(fetch, clock, refresh=60)
        self.assertEqual(asked, [])
        self.assertEqual(self.successResultOf(nearest("dc1")), ["dc2"])
        clock.advance(59)
        self.assertEqual(self.successResultOf(nearest("dc2")), ["dc1"])
        self.assertEqual(len(asked), 1)
        clock.advance(2)
        self.successResultOf(nearest("dc1"))
        self.assertEqual(len(asked), 2)


class FailoverTests(TestCase):
    def rig(self, **config: Any) -> GatewayRig:
        rig = GatewayRig(self, **config)
        rig.register(rig.backend("dc1-down"), dc="dc1", status="critical")
        rig.register(rig.backend("dc2-down"), dc="dc2", status="critical")
        rig.register(rig.backend("dc3-up"), dc="dc3")
        rig.register(rig.backend("dc4-up"), dc="dc4")
        return rig

    async def test_off_by_default(self) -> None:
        rig = self.rig()
        response, _ = await rig.get("/dc1/web/x")
        self.assertEqual(response.code, 503)

    async def test_first_with_an_instance(self) -> None:
        rig = self.rig(failover=["dc2", "dc3", "dc4"], admin=ADMIN)
        lines = captured_log(self)
        response, body = await rig.get("/dc1/web/x?y=1")
        self.assertEqual(response.code, 200)
        echo = json.loads(body)
        self.assertEqual((echo["backend"], echo["uri"]), ("dc3-up", "/x?y=1"))
        self.assertEqual(_headers(echo, "X-Forwarded-Prefix"), ["/dc1/web"])
        self.assertEqual(response.headers.getRawHeaders(b"X-Restygate-Datacenter"), [b"dc3"])
        self.assertTrue([line for line in lines if " dc1>dc3 web " in line], lines)
        _, metrics = await rig.admin("/metrics")
        self.assertIn(b'restygate_failovers_total{dc="dc1",service="web",to="dc3"} 1.0', metrics)

    async def test_own_datacenter_first_and_header_always(self) -> None:
        rig = self.rig(failover=["dc4"])
        response, body = await rig.get("/dc3/web/")
        self.assertEqual((json.loads(body)["backend"], response.headers.getRawHeaders(b"X-Restygate-Datacenter")),
                         ("dc3-up", [b"dc3"]))

    async def test_limit(self) -> None:
        rig = self.rig(failover=["dc2", "dc3"], failover_limit=1)
        response, body = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body)["error"], "no passing instance")

    async def test_unknown_datacenters_passed_over(self) -> None:
        rig = self.rig(failover=["nowhere", "dc4"])
        response, body = await rig.get("/dc1/web/")
        self.assertEqual(json.loads(body)["backend"], "dc4-up")

    async def test_per_service(self) -> None:
        rig = self.rig(services={"web": {"failover": ["dc4"]}})
        rig.register(rig.backend("api-down"), service="api", dc="dc1", status="critical")
        rig.register(rig.backend("api-up"), service="api", dc="dc4")
        response, body = await rig.get("/dc1/web/")
        self.assertEqual(json.loads(body)["backend"], "dc4-up")
        response, _ = await rig.get("/dc1/api/")
        self.assertEqual(response.code, 503)


class NearestTests(TestCase):
    async def nearest_served(self, dc3: float, dc4: float) -> str:
        rig = GatewayRig(self, failover="nearest")
        rig.register(rig.backend("dc1-down"), dc="dc1", status="critical")
        rig.register(rig.backend("dc3-up"), dc="dc3")
        rig.register(rig.backend("dc4-up"), dc="dc4")
        rig.consul.set_coordinates("dc1", {"s1": [0.0] * 8, "s2": [0.002] + [0.0] * 7})
        rig.consul.set_coordinates("dc3", {"s1": [dc3] + [0.0] * 7})
        rig.consul.set_coordinates("dc4", {"s1": [0.0, dc4] + [0.0] * 6})
        response, body = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 200)
        name: str = json.loads(body)["backend"]
        return name

    async def test_nearest_by_coordinates(self) -> None:
        self.assertEqual(await self.nearest_served(dc3=0.080, dc4=0.010), "dc4-up")

    async def test_other_way_round(self) -> None:
        self.assertEqual(await self.nearest_served(dc3=0.010, dc4=0.080), "dc3-up")

    async def test_served_as_consul_does(self) -> None:
        """
        The test server's body: every datacenter, its servers' coordinates;
        a server nobody placed is at the origin with Consul's minimum height.
        """
        rig = GatewayRig(self)
        rig.consul.add_datacenter("dc2")
        rig.consul.set_coordinates("dc2", {"a": [0.5] * 8})
        response = await rig.client.get(f"{rig.consul.url}/v1/coordinate/datacenters")
        body = json.loads(await treq.content(response))
        self.assertEqual(body, [
            {"Datacenter": "dc1", "AreaID": "WAN", "Coordinates": [
                {"Node": "dc1-server", "Coord": {"Adjustment": 0.0, "Error": 1.5, "Height": 1e-5, "Vec": [0.0] * 8}}]},
            {"Datacenter": "dc2", "AreaID": "WAN", "Coordinates": [
                {"Node": "a", "Coord": {"Adjustment": 0.0, "Error": 1.5, "Height": 1e-5, "Vec": [0.5] * 8}}]},
        ])


class AllEjectedTests(SynchronousTestCase):
    """
    A datacenter whose every usable instance is ejected counts as having
    none.  (The gateway's outlier detection never ejects more than half of
    a service, so this takes detection allowed to eject them all.)
    """

    def test_fails_over(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write('[dc1]\nweb = [{ address = "10.0.0.1", port = 80 }]\n[dc2]\nweb = [{ address = "10.0.0.2", port = 80 }]\n')
        clock = Clock()
        catalog = StaticCatalog(path, clock)
        catalog.startService()
        self.addCleanup(catalog.stopService)
        config = build([{"failover": ["dc2"]}])
        parts = EngineParts(catalog, Upstream(clock, config), clock, config)
        parts.outliers = outliers = Outliers(clock, threshold=1, max_fraction=1.0)
        route = parse_target(b"/dc1/web/x")
        found = self.successResultOf(find(parts, route, parts.policies.policy("dc1", "web")))
        self.assertEqual(found.route.dc, "dc1")
        [instance] = found.choice.instances
        self.assertTrue(outliers.failed("dc1", "web", instance, found.choice.instances))
        found = self.successResultOf(find(parts, route, parts.policies.policy("dc1", "web")))
        self.assertEqual((found.route.dc, found.route.prefix, found.choice.instances[0].address),
                         ("dc2", "/dc1/web", "10.0.0.2"))

