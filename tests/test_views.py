"""
Tests for L{restygate.ops.views}: every part the admin side shows provides
its view, and the views say what the parts hold without changing it.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from restygate.discovery.catalog import StaticCatalog
from restygate.discovery.consul.source import ConsulDiscovery
from restygate.discovery.model import Instance
from restygate.front.listeners import Listener
from restygate.ops.views import IDiscoveryView, IListenerView, IOutlierView, IPoolView, Watched
from restygate.upstream.outliers import Outliers
from restygate.upstream.pool import Upstream
from tests.support.defaults import DEFAULT_CONFIG
from tests.support.scripted import ScriptedSource

A = Instance("127.0.0.1", 8001)
B = Instance("127.0.0.1", 8002)


class ProvidedTests(SynchronousTestCase):
    def test_parts_provide_their_views(self) -> None:
        clock = Clock()
        self.assertTrue(verifyObject(IDiscoveryView, StaticCatalog(self.mktemp(), clock)))
        self.assertTrue(verifyObject(IDiscoveryView, ConsulDiscovery(ScriptedSource(), clock)))
        self.assertTrue(verifyObject(IOutlierView, Outliers(clock)))
        self.assertTrue(verifyObject(IPoolView, Upstream(clock, DEFAULT_CONFIG)))
        listener = Listener("tcp:0:interface=127.0.0.1", Factory.forProtocol(Protocol), clock)
        self.assertTrue(verifyObject(IListenerView, listener))


class CatalogViewTests(SynchronousTestCase):
    def test_catalog(self) -> None:
        """
        The static catalog's view lists every service, sorted, and has
        answered once the file is loaded.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                '[dc2]\nweb = [{ address = "127.0.0.1", port = 8002 }]\n'
                '[dc1]\nweb = [{ address = "127.0.0.1", port = 8001 }]\nidle = []\n'
            )
        catalog = StaticCatalog(path, Clock())
        self.assertEqual((catalog.watched(), catalog.answered()), ([], False))
        catalog.startService()
        self.addCleanup(catalog.stopService)
        self.assertEqual(
            catalog.watched(),
            [
                Watched("dc1", "idle", (), synced=True),
                Watched("dc1", "web", (A,), synced=True),
                Watched("dc2", "web", (B,), synced=True),
            ],
        )
        self.assertTrue(catalog.answered())
        self.assertEqual(
            [catalog.has_instances(*pair) for pair in [("dc1", "web"), ("dc1", "idle"), ("dc3", "web")]],
            [True, False, False],
        )


class ConsulViewTests(SynchronousTestCase):
    def test_watch_seen_not_started(self) -> None:
        """
        Consul's view shows a watch from its first request on, with Consul's
        index once answered; reading it never starts a watch.
        """
        clock = Clock()
        source = ScriptedSource()
        discovery = ConsulDiscovery(source, clock)
        self.assertEqual((discovery.watched(), discovery.has_instances("dc1", "web")), ([], False))
        self.assertEqual(source.pending(), [])
        discovery.lookup("dc1", "web")
        self.assertEqual(discovery.watched(), [Watched("dc1", "web", (), synced=False, index=0)])
        self.assertFalse(discovery.answered())
        source.last.answer(7, A)
        [web] = discovery.watched()
        self.assertEqual((web.instances, web.synced, web.index, web.last_success), ((A,), True, 7, 0.0))
        self.assertTrue(discovery.answered())
        self.assertTrue(discovery.has_instances("dc1", "web"))
        discovery.stopService()


class OutlierViewTests(SynchronousTestCase):
    def test_inflight_and_ejections(self) -> None:
        outliers = Outliers(Clock(), threshold=1)
        self.assertEqual((outliers.inflight("dc1", "web", A), outliers.ejections()), (0, 0))
        outliers.started("dc1", "web", A)
        self.assertEqual(outliers.inflight("dc1", "web", A), 1)
        outliers.ended("dc1", "web", A)
        outliers.failed("dc1", "web", A, (A, B))
        self.assertEqual(outliers.ejections(), 1)
        self.assertTrue(outliers.is_ejected("dc1", "web", A))
        self.assertFalse(outliers.is_ejected("dc1", "web", B))
