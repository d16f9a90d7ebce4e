"""
Tests for live reload: the config file read again on SIGHUP (or
L{Reloader.reload}) and put in force whole, or refused whole; keys that need
a restart kept; requests in flight and listeners untouched; and discovery
moving to new watch settings without a request failing.
"""

from __future__ import annotations

import json
import os
import random
import signal
from typing import Any, List, Optional

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from restygate.config import build
from restygate.discovery.model import Instance, UnknownDatacenter
from restygate.discovery.consul.source import ConsulDiscovery
from restygate.daemon.reload import Reloader
from restygate.daemon.assembly import make_gateway
from tests.support.backends import Backend
from tests.support.harness import GatewayRig, captured_log, eventually, raw_connect, reactor, settle
from tests.support.scripted import ScriptedSource

A = Instance("10.0.0.1", 8000, id="a", tags=("v1",))
B = Instance("10.0.0.2", 8000, id="b", tags=("v2",))


def reloader_of(rig: GatewayRig) -> Reloader:
    [reloader] = [child for child in rig.gateway if isinstance(child, Reloader)]
    return reloader


def _backend_name(body: bytes) -> str:
    name: str = json.loads(body)["backend"]
    return name


class _ReloadCase(TestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.log = captured_log(self)

    def write(self, text: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def rig(self, text: str, **settings: Any) -> GatewayRig:
        self.write(text)
        return GatewayRig(self, config_file=self.path, **settings)

    def logged(self, fragment: str) -> List[str]:
        return [line for line in self.log if fragment in line]


class LiveKeysTests(_ReloadCase):
    """
    What may change live changes, for requests that start after the reload.
    """

    async def test_pool_size_timeouts_server_names(self) -> None:
        rig = self.rig('pool-size = 4\nserver-name = ["old.example"]\nconnect-timeout = 5\n')
        rig.register(rig.backend())
        response, _ = await rig.get("/dc1/web/", headers={b"Host": [b"old.example"]})
        self.assertEqual(response.code, 200)
        self.write('pool-size = 9\nserver-name = ["new.example"]\nconnect-timeout = 1.5\nupstream-timeout = 7\n')
        self.assertTrue(reloader_of(rig).reload())
        config = rig.gateway.config
        self.assertEqual(
            (config.pool_size, config.server_names, config.connect_timeout, config.upstream_timeout),
            (9, ("new.example",), 1.5, 7.0),
        )
        self.assertIs(rig.gateway.engine.config, config)
        self.assertEqual(rig.gateway.engine.upstream.max_idle, 9)
        old, _ = await rig.get("/dc1/web/", headers={b"Host": [b"old.example"]})
        new, _ = await rig.get("/dc1/web/", headers={b"Host": [b"new.example"]})
        self.assertEqual((old.code, new.code), (404, 200))
        [line] = self.logged("changed")
        self.assertIn("pool-size", line)
        self.assertIn("server-name", line)
        self.assertIn(self.path, line)

    async def test_client_idle_timeout(self) -> None:
        rig = self.rig("body-idle-timeout = 60\n")
        self.assertEqual(rig.gateway.front.timeOut, 60)
        self.write("body-idle-timeout = 0.3\n")
        self.assertTrue(reloader_of(rig).reload())
        client = await raw_connect(rig.port)
        # A connection accepted after the reload is closed when idle that long.
        await client.closed
        self.assertEqual(rig.gateway.front.timeOut, 0.3)

    async def test_upstream_timeout(self) -> None:
        rig = self.rig("upstream-timeout = 30\n")
        rig.register(rig.backend())
        response, _ = await rig.get("/dc1/web/slow?delay=0.5")
        self.assertEqual(response.code, 200)
        self.write("upstream-timeout = 0.2\n")
        reloader_of(rig).reload()
        response, body = await rig.json("/dc1/web/slow?delay=0.5")
        self.assertEqual((response.code, body["error"]), (504, "upstream timed out"))

    async def test_access_log_format(self) -> None:
        """
        Keys other parts own (here the access log's format) follow too.
        """
        rig = self.rig('access-log-format = "combined"\n')
        rig.register(rig.backend())
        self.write('access-log-format = "json"\n')
        reloader_of(rig).reload()
        await rig.get("/dc1/web/after")
        await eventually(lambda: any("/dc1/web/after" in line for line in self.log))
        [line] = [line for line in self.log if "/dc1/web/after" in line]
        self.assertEqual(json.loads(line)["status"], 200)

    async def test_command_line_still_wins(self) -> None:
        """
        The rig's settings stand for the command line: a file's value for a
        key given there stays without effect, as at start.
        """
        rig = self.rig("pool-size = 4\n", pool_size=6)
        self.write("pool-size = 5\n")
        self.assertFalse(reloader_of(rig).reload())
        self.assertEqual(rig.gateway.config.pool_size, 6)
        self.assertTrue(self.logged("nothing changed"))

    async def test_no_config_file(self) -> None:
        """
        A gateway built without a source to re-read keeps its config.
        """
        gateway = make_gateway(build([{"listen": "tcp:0:interface=127.0.0.1", "admin": "none",
                                        "catalog": _catalog(self)}]), reactor)
        gateway.startService()
        self.addCleanup(gateway.stopService)
        [reloader] = [child for child in gateway if isinstance(child, Reloader)]
        self.assertFalse(reloader.reload())
        self.assertTrue(self.logged("(no config file): nothing changed"))

    async def test_catalog_tags(self) -> None:
        """
        With a static catalog, new tags filter its instances at once.
        """
        catalog = _catalog(self)
        rig = self.rig('tag = ["v1"]\n', catalog=catalog)
        response, body = await rig.get("/dc1/web/")
        self.assertEqual(_backend_name(body), "one")
        self.write('tag = ["v2"]\n')
        reloader_of(rig).reload()
        response, body = await rig.get("/dc1/web/")
        self.assertEqual(_backend_name(body), "two")

    async def test_insecure_warned(self) -> None:
        rig = self.rig("")
        self.write("upstream-tls-insecure = true\n")
        reloader_of(rig).reload()
        self.assertTrue(rig.gateway.config.upstream_tls_insecure)
        self.assertEqual(len(self.logged("NOT verified")), 1)


def _catalog(case: _ReloadCase) -> str:
    """
    A catalog with two real backends: "one" tagged v1, "two" tagged v2.
    """
    lines = ["[dc1]", "web = ["]
    for name, tag in (("one", "v1"), ("two", "v2")):
        backend = Backend(name)
        backend.listen(reactor)
        case.addCleanup(backend.stop)
        lines.append(f'  {{ address = "127.0.0.1", port = {backend.port}, tags = ["{tag}"] }},')
    lines.append("]")
    path = case.mktemp()
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


class RefusedTests(_ReloadCase):
    """
    A file that cannot be used is refused whole: one log line, and the
    running configuration stays exactly as it was.
    """

    async def check_refused(self, text: Optional[str], fragment: str) -> None:
        """
        Reloading C{text} (None: the file removed) is refused with a line
        containing C{fragment}.
        """
        rig = self.rig("pool-size = 4\n")
        rig.register(rig.backend())
        before = rig.gateway.config
        if text is None:
            os.remove(self.path)
        else:
            self.write(text)
        self.assertFalse(reloader_of(rig).reload())
        self.assertIs(rig.gateway.config, before)
        self.assertEqual(rig.gateway.engine.upstream.max_idle, 4)
        [line] = self.logged("reload refused")
        self.assertIn(fragment, line)
        self.assertNotIn("\n", line)
        response, _ = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 200)

    async def test_bad_toml(self) -> None:
        await self.check_refused("pool-size = = 5\n", "invalid TOML")

    async def test_bad_value(self) -> None:
        # A good key beside the bad one is not applied either.
        await self.check_refused('pool-size = 9\nupstream-timeout = "soon"\n', "upstream-timeout")

    async def test_unknown_key(self) -> None:
        await self.check_refused("pool_size = 9\n", "unknown key 'pool_size'")

    async def test_missing_file(self) -> None:
        await self.check_refused(None, "no such file")

    async def test_bad_ca_file(self) -> None:
        await self.check_refused('upstream-ca = "/nonexistent/ca.pem"\n', "upstream-ca: no such file")


class RestartOnlyTests(_ReloadCase):
    async def test_kept_with_a_warning(self) -> None:
        rig = self.rig('consul-token = "first"\npool-size = 4\n')
        port = rig.gateway.listeners[0].port
        self.write('consul-token = "second"\npool-size = 5\n')
        self.assertTrue(reloader_of(rig).reload())
        config = rig.gateway.config
        self.assertEqual((config.consul_token, config.pool_size), ("first", 5))
        [warning] = self.logged("needs a restart")
        self.assertIn("consul-token", warning)
        self.assertNotIn("second", warning)
        self.assertIs(rig.gateway.listeners[0].port, port)


class InFlightTests(_ReloadCase):
    async def test_in_flight_request_keeps_its_settings(self) -> None:
        """
        A request already sent upstream finishes under the timeout it
        started with, over the same listener.
        """
        rig = self.rig("upstream-timeout = 30\n")
        backend = rig.backend()
        rig.register(backend)
        port = rig.gateway.listeners[0].port
        slow = ensureDeferred(rig.get("/dc1/web/slow?delay=0.6"))
        await eventually(lambda: backend.connections_made == 1)
        self.write("upstream-timeout = 0.1\n")
        self.assertTrue(reloader_of(rig).reload())
        response, _ = await slow
        self.assertEqual(response.code, 200)
        self.assertIs(rig.gateway.listeners[0].port, port)


class TagReloadTests(_ReloadCase):
    async def test_old_snapshot_serves_until_new_answer(self) -> None:
        rig = self.rig('tag = ["v1"]\n')
        old, new = rig.backend("old"), rig.backend("new")
        rig.register(old, tags=["v1"])
        rig.register(new, tags=["v2"])
        _, body = await rig.get("/dc1/web/")
        self.assertEqual(_backend_name(body), "old")
        self.write('tag = ["v2"]\n')
        rig.consul.stall()
        reloader_of(rig).reload()
        # Consul holds the new watch's first answer: the old view serves.
        for _ in range(3):
            response, body = await rig.get("/dc1/web/")
            self.assertEqual((response.code, _backend_name(body)), (200, "old"))
        rig.consul.unstall()
        # Every request succeeds while the new view arrives.
        for _ in range(200):
            response, body = await rig.get("/dc1/web/")
            self.assertEqual(response.code, 200)
            if _backend_name(body) == "new":
                break
            await settle(0.01)
        self.assertEqual(_backend_name(body), "new")
        self.assertEqual(rig.watcher("dc1", "web").tags, ("v2",))


class SignalTests(_ReloadCase):
    async def test_sighup(self) -> None:
        rig = self.rig("pool-size = 4\n")
        self.assertEqual(signal.getsignal(signal.SIGHUP), reloader_of(rig).sighup.handler)
        self.write("pool-size = 12\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: rig.gateway.config.pool_size == 12)

    def test_handler_given_back(self) -> None:
        before = signal.getsignal(signal.SIGHUP)
        reloader = Reloader(_Target(), lambda: build([]), reactor)
        reloader.startService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), reloader.sighup.handler)
        self.successResultOf(reloader.stopService())
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)

    def test_no_handler_without_a_reactor_to_wake(self) -> None:
        before = signal.getsignal(signal.SIGHUP)
        reloader = Reloader(_Target(), lambda: build([]), Clock())
        reloader.startService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)
        self.successResultOf(reloader.stopService())

    def test_handler_taken_over_is_left_alone(self) -> None:
        before = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, before)
        first = Reloader(_Target(), lambda: build([]), reactor)
        second = Reloader(_Target(), lambda: build([]), reactor)
        first.startService()
        second.startService()
        self.successResultOf(first.stopService())
        self.assertEqual(signal.getsignal(signal.SIGHUP), second.sighup.handler)
        self.successResultOf(second.stopService())
        self.assertEqual(signal.getsignal(signal.SIGHUP), first.sighup.handler)


class _Target:
    def __init__(self) -> None:
        self.config = build([])
        self.applied: List[Any] = []

    def reconfigure(self, config: Any) -> None:
        self.applied.append(config)
        self.config = config


class DiscoveryReconfigureTests(SynchronousTestCase):
    """
    L{ConsulDiscovery.reconfigure}: new watch settings reach Consul through
    successor watchers, started lazily; the outdated ones serve until then.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.source = ScriptedSource()
        self.discovery = ConsulDiscovery(
            self.source, self.clock, tags=("v1",), wait=30.0, discovery_timeout=5.0,
            idle_timeout=100.0, rng=random.Random(1),
        )
        self.discovery.startService()
        self.addCleanup(self.discovery.stopService)

    def reconfigure(self, **settings: Any) -> None:
        layer = {"tag": ["v1"], "consul-wait": 30, "discovery-timeout": 5, "watch-idle-timeout": 100}
        layer.update({key.replace("_", "-"): value for key, value in settings.items()})
        self.discovery.reconfigure(build([layer]))

    def watched(self) -> Any:
        """
        The first snapshot of dc1/web, its watcher's blocking query pending.
        """
        d = self.discovery.lookup("dc1", "web")
        self.source.last.answer(5, A)
        self.clock.advance(0)
        self.assertEqual(len(self.source.pending()), 1)
        return self.successResultOf(d)

    def test_unchanged_settings_keep_watchers(self) -> None:
        self.watched()
        self.reconfigure(discovery_timeout=2)
        self.discovery.lookup("dc1", "web")
        self.assertEqual(len(self.source.pending()), 1)

    def test_successor_takes_over_after_its_first_answer(self) -> None:
        first = self.watched()
        outdated = self.discovery.watchers[("dc1", "web")]
        self.reconfigure(tag=["v2"])
        # Nothing is asked until somebody wants the pair.
        self.assertEqual(len(self.source.pending()), 1)
        self.assertIs(self.successResultOf(self.discovery.lookup("dc1", "web")), first)
        successor_query = self.source.last
        self.assertEqual((successor_query.tags, successor_query.index), (("v2",), 0))
        # Asked again before it answers: still the old view, no second successor.
        self.assertIs(self.successResultOf(self.discovery.lookup("dc1", "web")), first)
        self.assertEqual(len(self.source.queries), 3)
        successor_query.answer(9, B)
        snapshot = self.successResultOf(self.discovery.lookup("dc1", "web"))
        self.assertEqual(snapshot.instances, (B,))
        self.assertIsNot(self.discovery.watchers[("dc1", "web")], outdated)
        # The outdated watcher's blocking query was given up.
        self.assertTrue(self.source.queries[1].cancelled)

    def test_wait_change_renews(self) -> None:
        self.watched()
        self.reconfigure(consul_wait=10)
        self.discovery.lookup("dc1", "web")
        # Each watch's wait is jittered down by up to 1/16, so watches never move in lock-step.
        self.assertTrue(10.0 * 15 / 16 <= self.source.last.wait <= 10.0, self.source.last.wait)

    def test_outdated_without_answer_is_waited_for(self) -> None:
        """
        A request waiting for a pair's first answer when the reload comes
        gets it from the watcher it waited on; no successor is started while
        that watcher has nothing to serve.
        """
        waiting = self.discovery.lookup("dc1", "web")
        self.reconfigure(tag=["v2"])
        also = self.discovery.lookup("dc1", "web")
        self.assertEqual(len(self.source.queries), 1)
        self.source.last.answer(5, A)
        self.assertEqual(self.successResultOf(waiting).instances, (A,))
        self.assertEqual(self.successResultOf(also).instances, (A,))

    def test_second_reload_drops_unanswered_successor(self) -> None:
        self.watched()
        self.reconfigure(tag=["v2"])
        self.discovery.lookup("dc1", "web")
        v2 = self.source.last
        self.reconfigure(tag=["v3"])
        self.assertTrue(v2.cancelled)
        self.discovery.lookup("dc1", "web")
        self.assertEqual(self.source.last.tags, ("v3",))

    def test_successor_in_vanished_datacenter(self) -> None:
        first = self.watched()
        self.reconfigure(tag=["v2"])
        self.discovery.lookup("dc1", "web")
        self.source.last.fail(UnknownDatacenter("dc1"))
        # The old view keeps serving, and no successor is retried while the
        # datacenter is known to be gone.
        for _ in range(3):
            self.assertIs(self.successResultOf(self.discovery.lookup("dc1", "web")), first)
        self.assertEqual(len(self.source.queries), 3)

    def test_idle_pair_forgotten_with_its_successor(self) -> None:
        self.watched()
        self.reconfigure(tag=["v2"])
        self.discovery.lookup("dc1", "web")
        successor_query = self.source.last
        self.clock.advance(101)
        self.assertEqual(self.discovery.watchers, {})
        self.assertTrue(successor_query.cancelled)

    def test_idle_timeout_applied(self) -> None:
        self.watched()
        self.reconfigure(watch_idle_timeout=8)
        self.clock.advance(10)
        self.assertEqual(self.discovery.watchers, {})

    def test_stop_stops_successors(self) -> None:
        self.watched()
        self.reconfigure(tag=["v2"])
        self.discovery.lookup("dc1", "web")
        successor_query = self.source.last
        self.successResultOf(self.discovery.stopService())
        self.assertTrue(successor_query.cancelled)
