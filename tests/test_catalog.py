"""
Tests for L{restygate.discovery.catalog}: the static catalog file, its validation,
and re-reading it when it changes.
"""

from __future__ import annotations

import os
from typing import Tuple

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

from restygate.discovery.catalog import StaticCatalog, load_catalog
from restygate.config import ConfigError
from restygate.discovery.model import IDiscovery, Instance, Snapshot, UnknownDatacenter

SAMPLE = """\
[dc1]
web = [
  { address = "127.0.0.1", port = 8000, tags = ["primary", "prod"], meta = { version = "2", zone = "a" } },
  { address = "::1", port = 8001, tags = ["prod"], id = "web-b" },
  { address = "[2001:db8::7]", port = 8002 },
]
empty = []

[eu-west]
api = [{ address = "api.internal", port = 443, id = 7 }]
"""

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "catalog.toml")


class _CatalogTestCase(SynchronousTestCase):
    def write(self, text: str, path: str = "") -> str:
        path = path or self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


class LoadCatalogTests(_CatalogTestCase):
    def test_format(self) -> None:
        catalog = load_catalog(self.write(SAMPLE))
        self.assertEqual(sorted(catalog), ["dc1", "eu-west"])
        self.assertEqual(
            catalog["dc1"]["web"],
            Snapshot(
                "dc1",
                "web",
                (
                    Instance(
                        "127.0.0.1",
                        8000,
                        tags=("primary", "prod"),
                        meta=(("version", "2"), ("zone", "a")),
                    ),
                    Instance("::1", 8001, tags=("prod",), id="web-b"),
                    Instance("2001:db8::7", 8002),
                ),
            ),
        )
        self.assertEqual(catalog["dc1"]["empty"], Snapshot("dc1", "empty", ()))
        self.assertEqual(
            catalog["eu-west"]["api"], Snapshot("eu-west", "api", (Instance("api.internal", 443, id="7"),))
        )

    def test_ipv6_netloc(self) -> None:
        web = load_catalog(self.write(SAMPLE))["dc1"]["web"]
        self.assertEqual([i.netloc for i in web.instances], ["127.0.0.1:8000", "[::1]:8001", "[2001:db8::7]:8002"])

    def test_shipped_sample(self) -> None:
        """
        The catalog shipped in C{etc/} loads.
        """
        if not os.path.exists(SHIPPED):
            raise SkipTest(f"{SHIPPED} not present")
        catalog = load_catalog(SHIPPED)
        self.assertEqual(sorted(catalog), ["dc1", "dc2"])
        self.assertEqual(
            catalog["dc1"]["demo"].instances,
            (Instance("127.0.0.1", 8000, tags=("primary",), meta=(("version", "1"),)),),
        )

    def test_tag_filter(self) -> None:
        """
        Only instances with every configured tag are kept, as Consul would.
        """
        path = self.write(SAMPLE)
        web = load_catalog(path, tags=("prod",))["dc1"]["web"]
        self.assertEqual([i.port for i in web.instances], [8000, 8001])
        web = load_catalog(path, tags=("prod", "primary"))["dc1"]["web"]
        self.assertEqual([i.port for i in web.instances], [8000])
        web = load_catalog(path, tags=("nothing",))["dc1"]["web"]
        self.assertEqual(web.instances, ())

    def test_empty_file(self) -> None:
        self.assertEqual(load_catalog(self.write("")), {})

    def assertBadCatalog(self, text: str, *fragments: str) -> None:
        path = self.write(text)
        message = str(self.assertRaises(ConfigError, load_catalog, path))
        self.assertTrue(message.startswith(f"catalog: {path}: "), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_missing_file(self) -> None:
        path = self.mktemp()
        message = str(self.assertRaises(ConfigError, load_catalog, path))
        self.assertTrue(message.startswith("catalog: "), message)
        self.assertIn(repr(path), message)

    def test_invalid_toml(self) -> None:
        self.assertBadCatalog("[dc1\nweb = [", "invalid TOML")

    def test_datacenter_not_a_table(self) -> None:
        self.assertBadCatalog('dc1 = "web"\n', "[dc1]")

    def test_service_not_an_array(self) -> None:
        self.assertBadCatalog('[dc1]\nweb = { address = "a", port = 1 }\n', "dc1.web", "array")

    def test_instance_not_a_table(self) -> None:
        self.assertBadCatalog('[dc1]\nweb = ["127.0.0.1:80"]\n', "dc1.web[0]")

    def test_unknown_instance_key(self) -> None:
        self.assertBadCatalog(
            '[dc1]\nweb = [{ address = "a", port = 1 }, { address = "a", port = 2, priority = 3 }]\n',
            "dc1.web[1]",
            "'priority'",
        )

    def test_weight(self) -> None:
        """
        C{weight} is Consul's C{Weights.Passing}: 1 unless given, at least 1.
        """
        web = load_catalog(self.write('[dc1]\nweb = [{ address = "a", port = 1 }, { address = "b", port = 2, weight = 3 }]\n'))
        self.assertEqual([i.weight for i in web["dc1"]["web"].instances], [1, 3])
        self.assertBadCatalog('[dc1]\nweb = [{ address = "a", port = 1, weight = 0 }]\n', "dc1.web[0]", "'weight'")

    def test_bad_address(self) -> None:
        for address in ['""', "1", '"[]"', "[]"]:
            self.assertBadCatalog(f"[dc1]\nweb = [{{ address = {address}, port = 1 }}]\n", "dc1.web[0]", "address")
        self.assertBadCatalog("[dc1]\nweb = [{ port = 1 }]\n", "dc1.web[0]", "address")

    def test_bad_port(self) -> None:
        for port in ["0", "65536", "-1", '"80"', "true", "80.0"]:
            self.assertBadCatalog(f'[dc1]\nweb = [{{ address = "a", port = {port} }}]\n', "dc1.web[0]", "port")
        self.assertBadCatalog('[dc1]\nweb = [{ address = "a" }]\n', "dc1.web[0]", "port")

    def test_bad_tags(self) -> None:
        for tags in ['"prod"', "[1]", "{ a = 1 }"]:
            self.assertBadCatalog(
                f'[dc1]\nweb = [{{ address = "a", port = 1, tags = {tags} }}]\n', "dc1.web[0]", "tags"
            )

    def test_bad_meta(self) -> None:
        self.assertBadCatalog('[dc1]\nweb = [{ address = "a", port = 1, meta = ["x"] }]\n', "dc1.web[0]", "meta")


class StaticCatalogTests(_CatalogTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.path = self.write(SAMPLE)
        self.catalog = StaticCatalog(self.path, self.clock, interval=1.0)
        self.catalog.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.catalog.running:
            self.successResultOf(self.catalog.stopService())

    def rewrite(self, text: str) -> None:
        """
        Replace the file's content and move its mtime well away from the
        last one, whatever the file system's timestamp granularity.
        """
        stamp = os.stat(self.path).st_mtime_ns
        self.write(text, self.path)
        os.utime(self.path, ns=(stamp + 10**9, stamp + 10**9))

    def ports(self, dc: str = "dc1", service: str = "web") -> Tuple[int, ...]:
        snapshot = self.successResultOf(self.catalog.lookup(dc, service))
        return tuple(i.port for i in snapshot.instances)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IDiscovery, self.catalog))

    def test_lookup(self) -> None:
        snapshot = self.successResultOf(self.catalog.lookup("dc1", "web"))
        self.assertIs(snapshot, self.catalog.catalog["dc1"]["web"])
        self.assertEqual(self.ports(), (8000, 8001, 8002))

    def test_unknown_datacenter(self) -> None:
        failure = self.failureResultOf(self.catalog.lookup("nowhere", "web"), UnknownDatacenter)
        self.assertEqual(failure.value.dc, "nowhere")

    def test_unknown_service(self) -> None:
        """
        A service the catalog does not list has no instance, like in Consul.
        """
        self.assertEqual(self.successResultOf(self.catalog.lookup("dc1", "nope")), Snapshot("dc1", "nope", ()))

    def test_tags(self) -> None:
        catalog = StaticCatalog(self.path, self.clock, tags=("primary",))
        catalog.startService()
        self.addCleanup(catalog.stopService)
        snapshot = self.successResultOf(catalog.lookup("dc1", "web"))
        self.assertEqual([i.port for i in snapshot.instances], [8000])

    def test_reload_on_change(self) -> None:
        self.rewrite('[dc1]\nweb = [{ address = "10.9.9.9", port = 9 }]\n')
        self.assertEqual(self.ports(), (8000, 8001, 8002))
        self.clock.advance(1)
        self.assertEqual(self.ports(), (9,))
        self.failureResultOf(self.catalog.lookup("eu-west", "api"), UnknownDatacenter)

    def test_unchanged_file_not_reread(self) -> None:
        """
        The file is re-read only when its size or mtime moves: same size,
        same mtime is taken as unchanged.
        """
        before = os.stat(self.path)
        self.write(SAMPLE.replace("8000", "8009"), self.path)
        os.utime(self.path, ns=(before.st_atime_ns, before.st_mtime_ns))
        self.clock.advance(5)
        self.assertEqual(self.ports(), (8000, 8001, 8002))
        self.rewrite(SAMPLE.replace("8000", "8009"))
        self.clock.advance(1)
        self.assertEqual(self.ports(), (8009, 8001, 8002))

    def test_broken_edit_keeps_catalog(self) -> None:
        """
        An edit that does not load is logged and the last good catalog keeps
        serving; the next good edit is picked up.
        """
        good = self.catalog.catalog
        self.rewrite("[dc1\nweb = [")
        self.clock.advance(1)
        self.assertIs(self.catalog.catalog, good)
        self.rewrite('[dc1]\nweb = [{ address = "a", port = 0 }]\n')
        self.clock.advance(1)
        self.assertIs(self.catalog.catalog, good)
        self.assertEqual(self.ports(), (8000, 8001, 8002))
        self.rewrite('[dc1]\nweb = [{ address = "a", port = 5 }]\n')
        self.clock.advance(1)
        self.assertEqual(self.ports(), (5,))

    def test_deleted_file_keeps_catalog(self) -> None:
        os.remove(self.path)
        self.clock.advance(3)
        self.assertEqual(self.ports(), (8000, 8001, 8002))
        self.write('[dc1]\nweb = [{ address = "a", port = 6 }]\n', self.path)
        self.clock.advance(1)
        self.assertEqual(self.ports(), (6,))

    def test_stop(self) -> None:
        self.successResultOf(self.catalog.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.rewrite('[dc1]\nweb = [{ address = "a", port = 5 }]\n')
        self.clock.advance(10)
        self.assertEqual(self.ports(), (8000, 8001, 8002))

    def test_broken_at_start(self) -> None:
        """
        A file broken from the start gives an empty catalog, not a crash.
        """
        catalog = StaticCatalog(self.write("[dc1"), self.clock)
        catalog.startService()
        self.addCleanup(catalog.stopService)
        self.failureResultOf(catalog.lookup("dc1", "web"), UnknownDatacenter)
