"""
A change feed applies what it sees not passing at once (end to end over real
sockets, a gateway in front of the Consul test server): an instance whose
own check or node check stops passing leaves its fed watch's snapshot
without a fetch of the service; one that passes again comes back through
one fetch; an instance at warning moves to the warning ones.  And the pure
rules behind it (L{screen}, L{only_worse}) on values.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.trial.unittest import SynchronousTestCase, TestCase

from restygate.discovery.consul.answers import HealthAnswer
from restygate.discovery.consul.checks import CheckStates, only_worse, screen
from restygate.discovery.model import Instance
from tests.support.harness import GatewayRig, eventually


def _fetches(rig: GatewayRig, service: str) -> int:
    return len(rig.consul.requests_for(f"/v1/health/service/{service}"))


def _ids(rig: GatewayRig, service: str) -> Tuple[List[str], List[str]]:
    snapshot: Any = rig.watcher("dc1", service).snapshot
    return sorted(i.id for i in snapshot.instances), sorted(i.id for i in snapshot.warning)


class FeedAppliesWhatIsNotPassingTests(TestCase):
    async def test_flips_reach_a_fed_watch(self) -> None:
        # consul-max-connections = 4: one dedicated watch (the first asked), the rest fed.
        rig = GatewayRig(self, consul_max_connections=4)
        rig.register(rig.backend("d"), service="first")
        a, b = rig.backend("a"), rig.backend("b")
        ids = [rig.register(a, service="web"), rig.register(b, service="web")]
        self.assertEqual((await rig.get("/dc1/first/"))[0].code, 200)
        self.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)
        self.assertFalse(rig.watcher("dc1", "web").blocking)
        # The feed's first answer and its first full read of every check are in.
        feeds = rig.gateway.engine.discovery.feeds
        await eventually(lambda: "dc1" in feeds and feeds["dc1"].loop.answers > 0 and feeds["dc1"].full_answers > 0)
        fetched = _fetches(rig, "web")

        rig.consul.set_check_status("dc1", ids[0], "critical")
        await eventually(lambda: _ids(rig, "web") == ([ids[1]], []))
        rig.consul.set_check_status("dc1", ids[1], "warning")
        await eventually(lambda: _ids(rig, "web") == ([], [ids[1]]))
        self.assertEqual((await rig.get("/dc1/web/"))[0].code, 503)
        # Worse only: the feed's answers said it all, nothing was fetched.
        self.assertEqual(_fetches(rig, "web"), fetched)

        rig.consul.set_check_status("dc1", ids[0], "passing")
        await eventually(lambda: _ids(rig, "web") == ([ids[0]], [ids[1]]))
        self.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)
        self.assertGreater(_fetches(rig, "web"), fetched)

        # A node's own check failing takes every instance on the node away, again without a fetch.
        fetched = _fetches(rig, "web")
        rig.consul.set_check_status("dc1", "serfHealth", "critical", node="node-a")
        await eventually(lambda: _ids(rig, "web") == ([], [ids[1]]))
        self.assertEqual(_fetches(rig, "web"), fetched)
        rig.consul.set_check_status("dc1", "serfHealth", "passing", node="node-a")
        rig.consul.set_check_status("dc1", ids[1], "passing")
        await eventually(lambda: _ids(rig, "web") == (sorted(ids), []))


A = Instance("10.0.0.1", 80, id="a", node="n1")
B = Instance("10.0.0.2", 80, id="b", node="n2")
C = Instance("10.0.0.3", 80, id="c", node="n2")


def _states(*bad: Tuple[str, str, str, str]) -> CheckStates:
    """(node, check ID, status, service ID): a service check of "web", or the node's own with no service ID."""
    states = CheckStates()
    for node, check, status, sid in bad:
        item = (node, check, status, (), 1, sid)
        if sid:
            states.per_service.setdefault("web", []).append(item)
        else:
            states.per_node.setdefault(node, []).append(item)
    return states


class ScreenTests(SynchronousTestCase):
    def test_screen_only_takes_away(self) -> None:
        answer = HealthAnswer(5, (A, B), (A, B, C), (C,))
        self.assertIs(screen(answer, _states(), "web"), answer)
        self.assertIs(screen(answer, _states(("n1", "x", "critical", "other")), "web"), answer)
        warned = screen(answer, _states(("n1", "service:a", "warning", "a")), "WEB")
        self.assertEqual((warned.instances, warned.warning, warned.registered), ((B,), (A, C), (A, B, C)))
        # A node's own check counts for each instance on the node; the worst check decides.
        node = screen(answer, _states(("n2", "serfHealth", "critical", ""), ("n1", "service:a", "passing", "a")),
                      "web")
        self.assertEqual((node.instances, node.warning), ((A,), ()))

    def test_only_worse(self) -> None:
        warning = _states(("n1", "service:a", "warning", "a"))
        critical = _states(("n1", "service:a", "critical", "a"))
        self.assertTrue(only_worse(_states(), warning, "web"))
        self.assertTrue(only_worse(warning, critical, "web"))
        self.assertFalse(only_worse(critical, warning, "web"))
        self.assertFalse(only_worse(warning, _states(), "web"))
        node = _states(("n2", "serfHealth", "critical", ""))
        self.assertFalse(only_worse(node, _states(), "web"))
        self.assertTrue(only_worse(_states(), node, "web"))
