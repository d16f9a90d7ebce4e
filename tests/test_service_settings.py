"""
Tests for per-service settings, the C{[services.<name>]} and
C{[services."<dc>/<name>"]} tables: validation with one line naming the
table and key, the datacenter's table winning, unset keys falling back to
the global value, over real sockets, live on SIGHUP, and shown in /status.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from typing import List, Tuple

from twisted.trial.unittest import SynchronousTestCase, TestCase

from restygate.config import build
from restygate.daemon.load import check_config
from restygate.proxy.policy import Policy
from tests.support.harness import GatewayRig, captured_log, eventually, settle


def _name(body: bytes) -> str:
    name: str = json.loads(body)["backend"]
    return name


class ValidationTests(SynchronousTestCase):
    def check(self, text: str) -> Tuple[int, str]:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return check_config({"config": path}, {})

    def assertRefused(self, text: str, line: str) -> None:
        status, message = self.check(text)
        self.assertEqual((status, message), (1, f"restygate: {line}"))

    def test_parsed(self) -> None:
        config = build([{
            "retries": 1,
            "services": {
                "web": {"retries": 4, "balancer": "least-request", "tags": ["v2"]},
                "dc2/web": {"upstream-timeout": 2.5, "max-body": "1k", "include-warning": True},
            },
        }])
        self.assertEqual(config.services, (
            ("dc2/web", (("upstream_timeout", 2.5), ("max_body", 1024), ("include_warning", True))),
            ("web", (("retries", 4), ("balancer", "least-request"), ("tags", ("v2",)))),
        ))
        self.assertEqual(config.retries, 1)

    def test_ok(self) -> None:
        status, message = self.check(
            '[services.web]\nretries = 0\nhash-on = "cookie:session"\nbalancer = "hash"\n'
            '[services."dc1/web"]\nconnect-timeout = 1\npanic-all-instances = true\n'
        )
        self.assertEqual(status, 0, message)

    def test_bad_value(self) -> None:
        self.assertRefused(
            "[services.web]\nretries = -1\n",
            "services.web: retries: expected a whole number of at least 0, got -1",
        )
        self.assertRefused(
            '[services."dc1/web"]\nbalancer = "fastest"\n',
            'services."dc1/web": balancer: expected one of round-robin, least-request, random, hash, '
            "got 'fastest'",
        )
        self.assertRefused(
            '[services.web]\ntags = ["a b"]\n',
            "services.web: tags: 'a b' must be non-empty, without spaces or control characters",
        )

    def test_unknown_key(self) -> None:
        self.assertRefused("[services.web]\npool-size = 3\n", "services.web: unknown key 'pool-size'")
        # A dotted table name nests: the inner table is an unknown key.
        self.assertRefused("[services.dc1.web]\nretries = 1\n", "services.dc1: unknown key 'web'")

    def test_bad_table(self) -> None:
        self.assertRefused('[services."a/b/c"]\nretries = 1\n', 'services."a/b/c": a table is named '
                           '<service> or "<datacenter>/<service>"')
        self.assertRefused("services = 3\n", "services: expected tables like [services.web], got 3")
        self.assertRefused("[services]\nweb = 3\n", "services.web: expected a table of settings, got 3")


class OverrideTests(TestCase):
    """
    Over real sockets: a service's table changes only that service.
    """

    async def test_timeout_and_fallback(self) -> None:
        rig = GatewayRig(self, services={"slow": {"upstream-timeout": 0.2}, "dc1/slow": {"retries": 0}})
        backend = rig.backend()
        rig.register(backend, service="slow")
        rig.register(backend, service="web")
        started = time.monotonic()
        response, _ = await rig.get("/dc1/slow/slow?delay=5")
        self.assertEqual(response.code, 504)
        self.assertLess(time.monotonic() - started, 3)
        # The global 60 s still holds for web.
        response, _ = await rig.get("/dc1/web/slow?delay=0.4")
        self.assertEqual(response.code, 200)

    async def test_datacenter_table_wins(self) -> None:
        rig = GatewayRig(
            self, tag=["blue"],
            services={"web": {"tags": ["v1"]}, "dc2/web": {"tags": ["v2"]}},
        )
        for dc in ("dc1", "dc2"):
            rig.register(rig.backend(f"{dc}-v1"), dc=dc, tags=["v1"])
            rig.register(rig.backend(f"{dc}-v2"), dc=dc, tags=["v2"])
            rig.register(rig.backend(f"{dc}-blue"), dc=dc, tags=["blue"], service="api")
        for dc, expected in [("dc1", "dc1-v1"), ("dc2", "dc2-v2")]:
            for _ in range(3):
                response, body = await rig.get(f"/{dc}/web/")
                self.assertEqual(_name(body), expected)
        # A service without a table keeps the global tags.
        response, body = await rig.get("/dc1/api/")
        self.assertEqual(_name(body), "dc1-blue")
        queries = rig.consul.requests_for("/v1/health/service/web")
        self.assertEqual({tuple(v for k, v in q.args if k == "tag") for q in queries}, {("v1",), ("v2",)})

    async def test_rewrite_location(self) -> None:
        """
        rewrite-location (on globally) turned off for one service.
        """
        rig = GatewayRig(self, services={"legacy": {"rewrite-location": False}})
        backend = rig.backend()
        rig.register(backend, service="legacy")
        rig.register(backend, service="web")
        for service, location in [("web", [b"/dc1/web/next"]), ("legacy", [b"/next"])]:
            response, _ = await rig.get(f"/dc1/{service}/headers?set=Location:/next")
            self.assertEqual(response.headers.getRawHeaders(b"Location"), location, service)

    async def test_max_body(self) -> None:
        rig = GatewayRig(self, services={"small": {"max-body": "10"}})
        backend = rig.backend()
        rig.register(backend, service="small")
        rig.register(backend, service="web")
        response, _ = await rig.request("POST", "/dc1/small/upload", data=b"x" * 11)
        self.assertEqual(response.code, 413)
        response, _ = await rig.request("POST", "/dc1/web/upload", data=b"x" * 11)
        self.assertEqual(response.code, 200)

    async def test_status_shows_effective_policy(self) -> None:
        rig = GatewayRig(
            self, admin="tcp:0:interface=127.0.0.1", retries=3,
            services={"web": {"balancer": "hash", "hash-on": "header:X-User"}, "dc1/web": {"retries": 1}},
        )
        rig.register(rig.backend())
        await rig.get("/dc1/web/")
        _, body = await rig.admin("/status", headers={b"Accept": [b"application/json"]})
        status = json.loads(body)
        [web] = status["services"]
        self.assertEqual(
            {k: web["policy"][k] for k in ("balancer", "hash_on", "retries", "upstream_timeout")},
            {"balancer": "hash", "hash_on": "header:X-User", "retries": 1, "upstream_timeout": 60.0},
        )
        self.assertEqual(web["instances"][0]["weight"], 1)
        self.assertEqual(sorted(status["policies"]), ["*", "dc1/web", "web"])
        self.assertEqual(status["policies"]["web"]["retries"], 3)
        self.assertEqual(status["policies"]["*"]["balancer"], "round-robin")
        _, page = await rig.admin("/status")
        self.assertIn(b"<td>dc1/web</td>", page)


class ReloadTests(TestCase):
    def write(self, path: str, text: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    def policy(self, rig: GatewayRig) -> Policy:
        return rig.gateway.engine.policies.policy("dc1", "web")

    async def until_watched_with(self, rig: GatewayRig, tags: Tuple[str, ...]) -> None:
        """
        Requests go on (served by the old watch) until the watch asking
        Consul with the new tags has answered and taken over.
        """
        for _ in range(100):
            await rig.get("/dc1/web/")
            if rig.watcher("dc1", "web").tags == tags:
                return
            await settle(0.02)
        self.fail(f"never watched with tags {tags}")

    async def test_changes_on_sighup(self) -> None:
        """
        A table added, changed or removed on SIGHUP applies to the next
        requests: the balancer, and the tags discovery asks Consul for.
        """
        path = self.mktemp()
        self.write(path, "[services.web]\ntags = [\"v1\"]\n")
        rig = GatewayRig(self, config_file=path)
        for name, tags in [("a", ["v1"]), ("b", ["v1"]), ("c", ["v2"])]:
            rig.register(rig.backend(name), tags=tags)

        async def served(count: int) -> List[str]:
            return [_name((await rig.get("/dc1/web/", headers={b"X-User": [b"u1"]}))[1]) for _ in range(count)]

        self.assertEqual(Counter(await served(4)), {"a": 2, "b": 2})
        self.write(path, '[services.web]\ntags = ["v1"]\nbalancer = "hash"\nhash-on = "header:X-User"\n')
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: self.policy(rig).balancer == "hash")
        self.assertEqual(len(set(await served(6))), 1)
        self.write(path, '[services.web]\ntags = ["v2"]\n')
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: self.policy(rig).balancer == "round-robin")
        await self.until_watched_with(rig, ("v2",))
        self.assertEqual(set(await served(3)), {"c"})
        self.write(path, "")
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: not rig.gateway.config.services)
        await self.until_watched_with(rig, ())
        self.assertEqual(Counter(await served(6)), {"a": 2, "b": 2, "c": 2})

    async def test_bad_table_refused_whole(self) -> None:
        path = self.mktemp()
        self.write(path, "[services.web]\nretries = 1\n")
        rig = GatewayRig(self, config_file=path)
        log = captured_log(self)
        self.write(path, "[services.web]\nretries = 5\n[services.api]\nretries = -1\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: any("reload refused" in line for line in log))
        self.assertIn("services.api: retries:", "\n".join(log))
        self.assertEqual(rig.gateway.engine.policies.policy("dc1", "web").config.retries, 1)
