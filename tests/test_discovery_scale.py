"""
Discovery at scale, end to end over real sockets (a gateway in front of the
Consul test server): names Consul does not know start nothing, names match
case-insensitively in Consul's spelling, watches are capped (least recently
used dropped), connections to the agent are bounded and services past the
dedicated budget are kept fresh by their datacenter's change feed.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial.unittest import TestCase

from restygate.testing.consul import ConsulServer
from tests.support.harness import GatewayRig, captured_log, eventually

ADMIN = "tcp:0:interface=127.0.0.1"


def _discovery(rig: GatewayRig) -> Any:
    return rig.gateway.engine.discovery


class MadeUpNamesTests(TestCase):
    async def test_made_up_names_start_nothing(self) -> None:
        """
        Requests for services and datacenters Consul does not know answer
        404 at once: no watch, no health query, no metrics series, and the
        datacenter list is asked again at most once per interval.
        """
        rig = GatewayRig(self, admin=ADMIN)
        rig.register(rig.backend())
        self.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)
        listings_before = len(rig.consul.requests_for("/v1/catalog/datacenters"))
        rng = random.Random(7)
        for n in range(60):
            name = "".join(rng.choice("abcdefghij") for _ in range(12))
            response, _ = await rig.get(f"/dc1/{name}/")
            self.assertEqual(response.code, 404)
            response, _ = await rig.get(f"/dc-{name}/web/")
            self.assertEqual(response.code, 404)
        self.assertEqual([w for w in _discovery(rig).watchers], [("dc1", "web")])
        self.assertEqual({q.path for q in rig.consul.requests_for("/v1/health/")}, {"/v1/health/service/web"})
        # One refresh of the list for the first miss, then none within the interval.
        listings = rig.consul.requests_for("/v1/catalog/datacenters")
        self.assertLessEqual(len(listings) - listings_before, 1, [r.time for r in listings])
        _, metrics = await rig.admin("/metrics")
        self.assertNotIn(b"dc-", metrics)
        self.assertEqual(metrics.count(b'service="'), metrics.count(b'service="web"') + metrics.count(b'service=""'))

    async def test_case_variants_share_one_watch_in_consuls_spelling(self) -> None:
        rig = GatewayRig(self, admin=ADMIN)
        rig.register(rig.backend(), service="NgInX")
        for path in ["/dc1/nginx/", "/dc1/NGINX/", "/DC1/NgInX/", "/dc1/nGiNx/x"]:
            self.assertEqual((await rig.get(path))[0].code, 200, path)
        self.assertEqual(list(_discovery(rig).watchers), [("dc1", "NgInX")])
        self.assertEqual({q.path for q in rig.consul.requests_for("/v1/health/service/")}, {"/v1/health/service/NgInX"})
        _, metrics = await rig.admin("/metrics")
        self.assertIn(b'restygate_requests_total{code="2xx",dc="dc1",service="NgInX"} 4.0', metrics)

    async def test_a_service_registered_later_is_served(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend("a"))
        self.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)
        self.assertEqual((await rig.get("/dc1/api/"))[0].code, 404)
        rig.register(rig.backend("b"), service="api")
        # The names come from a blocking query: the new service shows within a round trip.
        await eventually(lambda: _discovery(rig).names.names_in("dc1") == 2)
        self.assertEqual((await rig.get("/dc1/api/"))[0].code, 200)


class EagerNamesTests(TestCase):
    async def test_the_nearest_datacenters_names_are_followed_from_the_start(self) -> None:
        """
        With consul-max-connections = 16, the service names of the first two
        datacenters Consul lists (an eighth of 16) are asked for before any
        request; a third datacenter's names only when it is first asked for.
        """
        consul = ConsulServer(reactor, jitter=False)
        for dc in ("dc1", "dc2", "dc3"):
            consul.add_datacenter(dc)
        rig = GatewayRig(self, consul=consul, consul_max_connections=16)

        def named() -> set:
            return {dict(r.args).get("dc") for r in consul.requests_for("/v1/catalog/services")}

        listing = await rig.client.get(f"http://{consul.address}/v1/catalog/datacenters")
        nearest, *farther = json.loads(await listing.content())
        await eventually(lambda: len(named()) == 2)
        self.assertEqual(named(), {nearest, farther[0]})
        rig.register(rig.backend(), dc=farther[1])
        self.assertEqual((await rig.get(f"/{farther[1]}/web/"))[0].code, 200)
        self.assertEqual(named(), {"dc1", "dc2", "dc3"})


class WatchCapTests(TestCase):
    async def test_least_recently_used_watch_is_dropped_and_logged_once(self) -> None:
        lines = captured_log(self)
        rig = GatewayRig(self, max_watched_services=3)
        for name in ["s0", "s1", "s2", "s3", "s4"]:
            rig.register(rig.backend(name), service=name)
        for name in ["s0", "s1", "s2", "s0", "s3", "s4"]:
            self.assertEqual((await rig.get(f"/dc1/{name}/"))[0].code, 200, name)
        self.assertEqual(sorted(s for _, s in _discovery(rig).watchers), ["s0", "s3", "s4"])
        self.assertEqual(_discovery(rig).evicted, 2)
        reports = [line for line in lines if "max-watched-services (3) reached" in line]
        self.assertEqual(len(reports), 1, reports)
        # A dropped service is watched again when asked for.
        self.assertEqual((await rig.get("/dc1/s1/"))[0].code, 200)
        self.assertIn("s1", [s for _, s in _discovery(rig).watchers])

    async def test_a_dedicated_watch_dropped_frees_its_place(self) -> None:
        # consul-max-connections = 4: one dedicated watch; the others fed, until the dedicated one goes.
        rig = GatewayRig(self, max_watched_services=2, consul_max_connections=4)
        for name in ["s0", "s1", "s2", "s3"]:
            rig.register(rig.backend(name), service=name)
        for name in ["s0", "s1", "s2", "s3"]:
            self.assertEqual((await rig.get(f"/dc1/{name}/"))[0].code, 200, name)
        # s0 (dedicated) was dropped when s2 came: s3, the next new one, holds the blocking query.
        self.assertEqual({s: w.blocking for (_, s), w in _discovery(rig).watchers.items()}, {"s2": False, "s3": True})


class ConnectionBudgetTests(TestCase):
    async def test_many_services_on_a_few_connections_stay_fresh(self) -> None:
        """
        With consul-max-connections = 24 (a dedicated budget of 6), 30
        services are served over at most 24 agent connections, and a health
        change of a service past the budget reaches routing through the
        change feed.
        """
        rig = GatewayRig(self, consul_max_connections=24)
        ids = [rig.register(rig.backend(f"b{n}"), service=f"svc{n}") for n in range(30)]
        for n in range(30):
            self.assertEqual((await rig.get(f"/dc1/svc{n}/"))[0].code, 200)
        discovery = _discovery(rig)
        self.assertEqual(sum(1 for w in discovery.watchers.values() if w.blocking), 6)
        self.assertIn("dc1", discovery.feeds)
        self.assertLessEqual(rig.consul.connections.peak, 24)
        rig.consul.set_check_status("dc1", ids[29], "critical")
        await eventually(lambda: rig.gateway_instances("dc1", "svc29") == 0)
        self.assertEqual((await rig.get("/dc1/svc29/"))[0].code, 503)
        rig.consul.set_check_status("dc1", ids[29], "passing")
        await eventually(lambda: rig.gateway_instances("dc1", "svc29") == 1)
        # Only the changed service was fetched again, not the other 23 the feed keeps.
        self.assertEqual(len(rig.consul.requests_for("/v1/health/service/svc28")), 1)
        # A new passing instance shows in no failing check: the catalog index brings a full read.
        reads = discovery.feeds["dc1"].full_answers
        rig.register(rig.backend("b29-2"), service="svc29", node="n-new")
        await eventually(lambda: rig.gateway_instances("dc1", "svc29") == 2)
        await eventually(lambda: discovery.feeds["dc1"].full_answers > reads)
        self.assertLessEqual(rig.consul.connections.peak, 24)


class VisibilityTests(TestCase):
    async def test_load_against_the_caps_on_metrics_and_status(self) -> None:
        rig = GatewayRig(self, admin=ADMIN, consul_max_connections=24, max_watched_services=50)
        for n in range(8):
            rig.register(rig.backend(f"b{n}"), service=f"svc{n}")
        for n in range(8):
            self.assertEqual((await rig.get(f"/dc1/svc{n}/"))[0].code, 200)
        self.assertEqual((await rig.get("/dc1/nope/"))[0].code, 404)
        await eventually(lambda: "dc1" in _discovery(rig).feeds and _discovery(rig).feeds["dc1"].loop.answers > 0)
        _, metrics = await rig.admin("/metrics")
        for line in [
            b"restygate_consul_max_connections 24.0",
            b"restygate_watches_max 50.0",
            b"restygate_watches 8.0",
            b"restygate_watches_dedicated 6.0",
            b"restygate_discovery_name_misses_total 1.0",
            b'restygate_consul_feed_lag_seconds{dc="dc1"}',
            b'restygate_consul_last_contact_seconds{dc="dc1"} 0.0',
        ]:
            self.assertIn(line, metrics)
        self.assertRegex(metrics, rb"restygate_consul_connections [1-9]")
        _, body = await rig.admin("/status?format=json")
        load = json.loads(body)["discovery"]["load"]
        self.assertEqual(
            (load["max_connections"], load["watches"], load["max_watches"], load["dedicated"], load["name_misses"]),
            (24, 8, 50, 6, 1),
        )
        self.assertEqual([f["dc"] for f in load["feeds"]], ["dc1"])
        self.assertLessEqual(load["peak_connections"], 24)
        _, page = await rig.admin("/status")
        self.assertIn(b"Consul connections in use", page)

    async def test_an_erring_watch_without_instances_has_series(self) -> None:
        lines = captured_log(self)
        rig = GatewayRig(self, admin=ADMIN)
        rig.register(rig.backend(), status="critical")
        self.assertEqual((await rig.get("/dc1/web/"))[0].code, 503)
        rig.consul.fail(500, "No cluster leader")
        rig.consul.spurious_wakeup("dc1", "web")
        await eventually(lambda: rig.watcher("dc1", "web").errors >= 2, timeout=5.0)
        _, metrics = await rig.admin("/metrics")
        self.assertRegex(metrics, rb'restygate_watch_errors\{dc="dc1",service="web"\} [1-9]')
        self.assertNotIn(b'restygate_instances{dc="dc1"', metrics)
        rig.consul.recover()
        await eventually(lambda: rig.watcher("dc1", "web").errors == 0, timeout=5.0)
        # The outage ends when every query has recovered: the service-names
        # query may retry after the watch does.
        await eventually(lambda: any("Consul answers again" in line for line in lines), timeout=5.0)
        # One line when the outage began and one when it ended, not one per retry.
        began = [line for line in lines if "Consul queries failing" in line]
        ended = [line for line in lines if "Consul answers again" in line]
        self.assertEqual((len(began), len(ended)), (1, 1), lines)


class EtiquetteTests(TestCase):
    async def test_reads_are_stale_by_default_and_consistent_when_asked(self) -> None:
        rig = GatewayRig(self, admin=ADMIN)
        rig.register(rig.backend())
        rig.consul.agent.last_contact_ms = 40
        self.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)
        reads = rig.consul.requests_for("/v1/health/") + rig.consul.requests_for("/v1/catalog/services")
        self.assertTrue(reads)
        self.assertTrue(all(q.arg("stale") is not None and q.arg("consistent") is None for q in reads))
        other = GatewayRig(self, consul_consistency="consistent")
        other.register(other.backend())
        self.assertEqual((await other.get("/dc1/web/"))[0].code, 200)
        self.assertTrue(all(q.arg("consistent") is not None for q in other.consul.requests_for("/v1/health/")))

    async def test_the_agents_connection_cap_is_recognised(self) -> None:
        """
        An agent capped below restygate's own budget (a misconfiguration)
        answers 429: recognised and logged as the connection limit, once per
        outage, and the requests that needed those answers get a 503, never
        a hang.
        """
        lines = captured_log(self)
        consul = ConsulServer(reactor, jitter=False, max_conns_per_client=2)
        rig = GatewayRig(self, consul=consul, consul_max_connections=16, discovery_timeout=2)
        for n in range(8):
            rig.register(rig.backend(f"b{n}"), service=f"svc{n}")
        answers = await gatherResults([ensureDeferred(rig.get(f"/dc1/svc{n}/")) for n in range(8)])
        self.assertTrue(set(r[0].code for r in answers) <= {200, 503}, [r[0].code for r in answers])
        self.assertGreater(consul.connections.refused, 0)
        limited = [line for line in lines if "connection limit reached: the agent refuses more" in line]
        began = [line for line in lines if line.startswith("Consul queries failing")]
        self.assertEqual((len(limited), len(began)), (1, 1), lines)
