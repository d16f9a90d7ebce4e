"""
A change feed's full reads take away at once what Consul evidently
deregistered (end to end over real sockets, a gateway in front of the Consul
test server): an instance deregistered between fetches, or while Consul was
unreachable, stops receiving traffic as soon as the full read lands, before
its service's re-fetch, which then confirms it (or brings back one
registered again).  And the rule behind it, on values and on a Clock: only
what had checks and has none any more goes; what never had checks never
does; an answer to a fetch asked after that read is Consul's own word.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from restygate.discovery.consul.answers import HealthAnswer
from restygate.discovery.consul.checks import CheckStates, Present, gone, present, without
from restygate.discovery.consul.client import Indexed
from restygate.discovery.consul.feed import ChangeFeed
from restygate.discovery.consul.gate import ConsulGate
from restygate.discovery.consul.outage import Outage
from restygate.discovery.consul.watch import Watcher
from restygate.discovery.model import Instance, Snapshot
from tests.support.harness import GatewayRig, eventually
from tests.support.scripted import ScriptedSource

# What the feed test saw each time web's snapshot changed: (its instance IDs,
# web fetches the Consul test server had seen, the feed's full reads).
Seen = Tuple[List[str], int, int]


async def _fed_web(case: TestCase) -> Tuple[GatewayRig, List[str], Any, List[Seen]]:
    # consul-max-connections = 4: one dedicated watch (the first asked), web fed.
    rig = GatewayRig(case, consul_max_connections=4)
    rig.register(rig.backend("d"), service="first")
    ids = [rig.register(rig.backend(name), service="web") for name in ("a", "b")]
    case.assertEqual((await rig.get("/dc1/first/"))[0].code, 200)
    case.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)
    case.assertFalse(rig.watcher("dc1", "web").blocking)
    discovery = rig.gateway.engine.discovery
    feeds = discovery.feeds
    await eventually(lambda: "dc1" in feeds and feeds["dc1"].loop.answers > 0 and feeds["dc1"].full_answers > 0)
    seen: List[Seen] = []

    def changed(dc: str, service: str, snapshot: Optional[Snapshot]) -> None:
        if service == "web" and snapshot is not None:
            seen.append((sorted(i.id for i in snapshot.instances), _fetches(rig), feeds["dc1"].full_answers))

    discovery.listeners.append(changed)
    return rig, ids, feeds["dc1"], seen


def _fetches(rig: GatewayRig) -> int:
    return len(rig.consul.requests_for("/v1/health/service/web"))


def _ids(rig: GatewayRig) -> List[str]:
    snapshot: Any = rig.watcher("dc1", "web").snapshot
    return sorted(i.id for i in snapshot.instances)


class FullReadTakesAwayWhatIsGoneTests(TestCase):
    async def check_gone_before_the_refetch(
        self, rig: GatewayRig, ids: List[str], seen: List[Seen], fetched: int, reads: int, asked: int
    ) -> None:
        await eventually(lambda: _ids(rig) == [ids[0]])
        # The change that took b away came from a full read, before web was fetched again.
        first_without = next(s for s in seen if ids[1] not in s[0])
        self.assertEqual(first_without[:2], ([ids[0]], fetched))
        self.assertGreater(first_without[2], reads)
        # Then the re-fetch the read sent (asked after it) is answered, and confirms it.
        watcher = rig.watcher("dc1", "web")
        await eventually(lambda: watcher.answer_fetch > asked)
        self.assertGreater(_fetches(rig), fetched)
        self.assertEqual(_ids(rig), [ids[0]])
        answered = {(await rig.json("/dc1/web/"))[1]["backend"] for _ in range(4)}
        self.assertEqual(answered, {"a"})

    async def test_deregistered_between_fetches(self) -> None:
        rig, ids, feed, seen = await _fed_web(self)
        fetched, reads, asked = _fetches(rig), feed.full_answers, rig.watcher("dc1", "web").fetches
        rig.consul.deregister({"Datacenter": "dc1", "Node": "node-b", "ServiceID": ids[1]})
        await self.check_gone_before_the_refetch(rig, ids, seen, fetched, reads, asked)
        # Registered again: the fetch that follows the read brings it back.
        rig.register(rig.backend("b"), service="web")
        await eventually(lambda: _ids(rig) == sorted(ids))

    async def test_deregistered_during_an_outage(self) -> None:
        rig, ids, feed, seen = await _fed_web(self)
        fetched, reads, asked = _fetches(rig), feed.full_answers, rig.watcher("dc1", "web").fetches
        rig.consul.fail(500, "No cluster leader")
        # The whole node goes (its serfHealth and its service's check), while nothing can be asked:
        # the feed's held query wakes to the error.
        rig.consul.deregister({"Datacenter": "dc1", "Node": "node-b"})
        await eventually(lambda: feed.loop.errors > 0, timeout=10.0)
        # The last view keeps serving meanwhile.
        self.assertEqual(_ids(rig), sorted(ids))
        rig.consul.recover()
        await self.check_gone_before_the_refetch(rig, ids, seen, fetched, reads, asked)


A = Instance("10.0.0.1", 80, id="a", node="n1")
B = Instance("10.0.0.2", 80, id="b", node="n2")
C = Instance("10.0.0.3", 80, id="c", node="n2")
X = Instance("10.0.0.9", 80, id="x", node="ext")


def _full(*checks: Tuple[str, str, str]) -> CheckStates:
    """(node, check ID, service ID): a passing check of "web", or the node's own with no service ID."""
    states = CheckStates()
    for node, check, sid in checks:
        item = (node, check, "passing", (), 1, sid)
        if sid:
            states.per_service.setdefault("web", []).append(item)
        else:
            states.per_node.setdefault(node, []).append(item)
    return states


EVERY = _full(("n1", "serfHealth", ""), ("n2", "serfHealth", ""), ("n1", "service:a", "a"),
              ("n2", "service:b", "b"), ("n2", "service:c", "c"))


class GoneRuleTests(SynchronousTestCase):
    def test_only_what_had_checks_and_has_none_goes(self) -> None:
        before = present(EVERY)
        self.assertEqual(gone(before, before), ({}, set()))
        # b's check went: b is gone, not c on the same node.
        without_b = present(_full(("n1", "serfHealth", ""), ("n2", "serfHealth", ""), ("n1", "service:a", "a"),
                                  ("n2", "service:c", "c")))
        self.assertEqual(gone(before, without_b), ({"web": {("n2", "b")}}, set()))
        # Node n2's own check went too: n2 is gone (whatever is on it).
        self.assertEqual(gone(before, present(_full(("n1", "serfHealth", ""), ("n1", "service:a", "a")))),
                         ({"web": {("n2", "b"), ("n2", "c")}}, {"n2"}))
        # New ones are never gone; nor is anything that never had a check (x on node ext).
        self.assertEqual(gone(present(CheckStates()), before), ({}, set()))
        answer = HealthAnswer(5, (A, B, C, X), (A, B, C, X), ())
        nothing: Present = gone(before, before)
        self.assertIs(without(answer, set(), nothing[1]), answer)
        pairs, nodes = gone(before, without_b)
        screened = without(answer, pairs["web"], nodes)
        self.assertEqual((screened.instances, screened.registered), ((A, C, X), (A, C, X)))
        warned = without(HealthAnswer(5, (A,), (A, B, C), (B, C)), set(), {"n2"})
        self.assertEqual((warned.instances, warned.registered, warned.warning), ((A,), (A,), ()))


class _ScriptedStates:
    """The two check-state reads of a feed (its blocking query, its full reads), answered by the test."""

    def __init__(self) -> None:
        self.full: List[Deferred[Indexed]] = []
        self.urgent: List[bool] = []
        self.feed: List[Deferred[Indexed]] = []
        self.last_contact: Dict[str, float] = {}

    def check_states(self, dc: str, index: int = 0, wait: float = 0.0, urgent: bool = False,
                     filter: str = "", prompt: bool = False) -> Deferred[Indexed]:
        d: Deferred[Indexed] = Deferred()
        (self.feed if filter else self.full).append(d)
        if not filter:
            self.urgent.append(urgent)
        return d


class FedWatchCase(SynchronousTestCase):
    """
    One fed watch of "web" and its datacenter's change feed, on a Clock,
    with scripted answers; the feed is started by the test.
    """

    def make_gate(self, clock: Clock) -> Optional[ConsulGate]:
        """The gate whose first fetches the feed's first full read lets go first: none here."""
        return None

    def setUp(self) -> None:
        self.clock = Clock()
        self.gate = self.make_gate(self.clock)
        self.source = ScriptedSource()
        self.states = _ScriptedStates()
        outage = Outage(self.clock)
        self.watcher = Watcher("dc1", "web", self.source, self.clock, blocking=False, outage=outage,
                               rng=random.Random(1))
        self.addCleanup(self.watcher.stop)
        client: Any = self.states
        self.feed = ChangeFeed("dc1", client, self.clock, outage, random.Random(2), 30.0, lambda: [self.watcher],
                               gate=self.gate)
        self.addCleanup(self.feed.stop)
        self.watcher.start()


class FeedScreensWhatIsGoneTests(FedWatchCase):
    def setUp(self) -> None:
        super().setUp()
        self.feed.start()

    def served(self) -> Tuple[Instance, ...]:
        snapshot = self.watcher.snapshot
        return snapshot.instances if snapshot is not None else ()

    def full_read(self, index: int, states: CheckStates) -> None:
        self.feed.catalog_changed()
        self.states.full[-1].callback(Indexed(index, states))

    def test_gone_until_a_later_fetch_says_otherwise(self) -> None:
        self.states.full[-1].callback(Indexed(10, EVERY))
        self.source.last.answer(10, A, B, C, X)
        self.assertEqual(self.served(), (A, B, C, X))
        fetches = len(self.source.queries)
        # A fetch is in flight (asked before the read) when the read finds b gone.
        self.watcher.refresh(changed=True)
        in_flight = self.source.last
        self.full_read(11, _full(("n1", "serfHealth", ""), ("n2", "serfHealth", ""), ("n1", "service:a", "a"),
                                 ("n2", "service:c", "c")))
        # At once, without an answer from Consul; x, which never had a check, stays.
        self.assertEqual(self.served(), (A, C, X))
        self.assertEqual(len(self.source.queries), fetches + 1)
        # The answer to the fetch asked before the read still has b: screened.
        in_flight.answer(11, A, B, C, X)
        self.assertEqual(self.served(), (A, C, X))
        # The re-fetch the read sent (asked after it) is Consul's word: b was registered again.
        self.clock.advance(0)
        refetch = self.source.last
        self.assertIsNot(refetch, in_flight)
        self.assertTrue(refetch.prompt)
        refetch.answer(12, A, B, C, X)
        self.assertEqual(self.served(), (A, B, C, X))
        # Full reads go ahead of every paced query: one takes what went away out of every watch.
        self.assertEqual(self.states.urgent, [True, True])

    def test_a_node_gone_and_nothing_without_checks(self) -> None:
        self.states.full[-1].callback(Indexed(10, EVERY))
        self.source.last.answer(10, A, B, C, X)
        # Node n2 went with its services; nothing else changed, and x never had a check.
        self.full_read(11, _full(("n1", "serfHealth", ""), ("n1", "service:a", "a")))
        self.assertEqual(self.served(), (A, X))
        self.source.last.answer(12, A, X)
        # A later read with no checks at all takes nothing more away (x has none, never had).
        self.full_read(13, _full(("n1", "serfHealth", ""), ("n1", "service:a", "a")))
        self.assertEqual(self.served(), (A, X))
        self.full_read(14, CheckStates())
        self.assertEqual(self.served(), (X,))
