"""
Tests for L{restygate.ops.admin} and L{restygate.ops.status}: the admin listener's
status page, health and readiness endpoints, on a real gateway over loopback.
"""

from __future__ import annotations

import json

from typing import Tuple

from twisted.trial.unittest import TestCase
from twisted.web.iweb import IResponse

from restygate import __version__
from restygate.compiled import data_path
from restygate.config import ConfigError, build
from restygate.discovery.consul.client import ConsulClient, ConsulError
from restygate.testing.consul import ConsulServer
from tests.support.harness import GatewayRig, reactor, settle
from tests.support.markup import parse

ADMIN = "tcp:0:interface=127.0.0.1"
TOKEN = "s3cret-acl-token"
HOSTILE = '<script>alert("x")</script>'


class StatusTests(TestCase):
    async def test_json_lists_instances_never_the_token(self) -> None:
        """
        The JSON status has the version, listeners, the Consul address and
        each watched service's instances; the ACL token appears nowhere.
        """
        consul = ConsulServer(reactor, jitter=False, acl_token=TOKEN)
        rig = GatewayRig(self, consul=consul, consul_token=TOKEN, admin=ADMIN)
        backend = rig.backend()
        rig.register(backend, tags=["blue"])
        response, _ = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 200)
        for how in [{"params": {"format": "json"}}, {"headers": {"Accept": "application/json"}}]:
            response, body = await rig.admin("/status", **how)
            self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
            self.assertNotIn(TOKEN.encode(), body)
            status = json.loads(body)
            self.assertEqual(status["version"], __version__)
            self.assertEqual(status["data_path"], data_path())
            load = status["discovery"].pop("load")
            self.assertEqual(status["discovery"], {"kind": "consul", "address": consul.url})
            self.assertEqual((load["watches"], load["max_connections"]), (1, 64))
            self.assertEqual(
                [(l["role"], l["address"]) for l in status["listeners"]],
                [("public", f"127.0.0.1:{rig.port}"), ("admin", f"127.0.0.1:{rig.admin_port}")],
            )
            [web] = status["services"]
            self.assertEqual((web["dc"], web["service"], web["errors"]), ("dc1", "web", 0))
            self.assertEqual(web["index"], consul.service_index("dc1", "web"))
            self.assertLess(web["last_sync_age_seconds"], 5)
            [instance] = web["instances"]
            self.assertEqual(
                {k: instance[k] for k in ("address", "port", "tags", "ejected", "inflight")},
                {"address": "127.0.0.1", "port": backend.port, "tags": ["blue"], "ejected": False, "inflight": 0},
            )
        response, page = await rig.admin("/status")
        self.assertNotIn(TOKEN.encode(), page)

    async def test_html_escapes_and_nests(self) -> None:
        """
        The page parses with every element closed in order, and a tag value
        that looks like markup shows as text, not as an element.
        """
        rig = GatewayRig(self, admin=ADMIN)
        backend = rig.backend()
        rig.register(backend, tags=[HOSTILE])
        await rig.get("/dc1/web/")
        response, page = await rig.admin("/status")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        parsed = parse(page)
        self.assertEqual(parsed.errors, [])
        self.assertEqual(parsed.open, [])
        self.assertNotIn("script", parsed.tags)
        self.assertIn(HOSTILE, "".join(parsed.text))
        self.assertIn(f"127.0.0.1:{rig.port}", "".join(parsed.text))
        self.assertIn(str(backend.port), "".join(parsed.text))

    async def test_static_catalog_source(self) -> None:
        """
        With a static catalog the page names its path and lists its
        services; there is no Consul index.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[dc1]\nweb = [{ address = "127.0.0.1", port = 9 }]\n')
        rig = GatewayRig(self, catalog=path, admin=ADMIN)
        response, body = await rig.admin("/status?format=json")
        status = json.loads(body)
        self.assertEqual(status["discovery"], {"kind": "catalog", "path": path})
        [web] = status["services"]
        self.assertEqual((web["index"], web["synced"], len(web["instances"])), (None, True, 1))

    async def test_not_on_the_public_listener(self) -> None:
        """
        The public listener routes /status and /metrics like any path: they
        are not admin pages there.
        """
        rig = GatewayRig(self, admin=ADMIN)
        for path in ["/metrics", "/status", "/healthz"]:
            response, body = await rig.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(json.loads(body)["status"], 404)

    def test_admin_none(self) -> None:
        """
        C{admin = "none"} turns the admin listener off; a bad endpoint is
        one line naming the key.
        """
        rig = GatewayRig(self)
        self.assertIsNone(rig.gateway.admin_listener)
        self.assertIsNone(build([{"admin": "none"}]).admin)
        self.assertEqual(build([]).admin, "tcp:9901:interface=127.0.0.1")
        error = self.assertRaises(ConfigError, build, [{"admin": "tcp:nope"}])
        self.assertTrue(str(error).startswith("admin: bad endpoint"), str(error))


class HealthTests(TestCase):
    async def test_healthz(self) -> None:
        rig = GatewayRig(self, admin=ADMIN)
        response, body = await rig.admin("/healthz")
        self.assertEqual((response.code, body), (200, b"ok\n"))

    async def test_ready_only_once_consul_answers(self) -> None:
        """
        While the Consul agent answers nothing, /readyz is 503 with a reason;
        once it answers, 200.
        """
        consul = ConsulServer(reactor, jitter=False)
        consul.stall()
        rig = GatewayRig(self, consul=consul, admin=ADMIN)
        response, body = await rig.admin("/readyz")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body), {"ready": False, "reason": f"no answer from Consul at {consul.url} yet"})
        consul.unstall()
        response, body = await _once_ready(rig)
        self.assertEqual((response.code, json.loads(body)), (200, {"ready": True}))

    async def test_ready_from_a_watch(self) -> None:
        """
        A watch's answer makes the gateway ready even if the probe has not
        succeeded (here: the agent has no leader to report).
        """
        rig = GatewayRig(self, admin=ADMIN)
        rig.consul.agent.leader = ""
        rig.register(rig.backend())
        response, _ = await rig.admin("/readyz")
        self.assertEqual(response.code, 503)
        await rig.get("/dc1/web/")
        response, _ = await rig.admin("/readyz")
        self.assertEqual(response.code, 200)

    async def test_ready_with_static_catalog(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[dc1]\nweb = [{ address = "127.0.0.1", port = 9 }]\n')
        rig = GatewayRig(self, catalog=path, admin=ADMIN)
        response, _ = await rig.admin("/readyz")
        self.assertEqual(response.code, 200)


async def _once_ready(rig: GatewayRig, timeout: float = 5.0) -> Tuple[IResponse, bytes]:
    """
    Poll /readyz until it is 200 (the Consul agent's answer is another
    party's timing), failing after C{timeout} seconds.
    """
    waited = 0.0
    while True:
        response, body = await rig.admin("/readyz")
        if response.code == 200 or waited >= timeout:
            return response, body
        await settle(0.05)
        waited += 0.05


class PingTests(TestCase):
    async def test_leader(self) -> None:
        rig = GatewayRig(self)
        client = ConsulClient(reactor, rig.config.consul)
        self.addCleanup(client.close)
        self.assertEqual(await client.ping(), "127.0.0.1:8300")

    async def test_error(self) -> None:
        rig = GatewayRig(self)
        rig.consul.fail(500, "No cluster leader")
        client = ConsulClient(reactor, rig.config.consul)
        self.addCleanup(client.close)
        with self.assertRaises(ConsulError) as caught:
            await client.ping()
        self.assertIn("No cluster leader", str(caught.exception))
