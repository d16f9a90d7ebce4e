"""
Upstream faults the gateway absorbs: retries on another instance, passive
outlier ejection, and the retry budget.  Real sockets end to end; the budget
and ejection clocks also in isolation with Clock.
"""

from __future__ import annotations

import hashlib
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from restygate.discovery.model import Instance
from restygate.upstream.outliers import Outliers
from restygate.upstream.retry import RetryBudget
from tests.support.backends import ResettingBackend, closed_port
from tests.support.harness import GatewayRig, eventually, reactor, settle


def _resetting(case: TestCase, name: str) -> ResettingBackend:
    backend = ResettingBackend(name)
    backend.listen(reactor)
    case.addCleanup(backend.stop)
    return backend


class RetryTests(TestCase):
    async def test_refused_instance_is_retried_elsewhere_for_any_method(self) -> None:
        rig = GatewayRig(self)
        good = rig.backend("good")
        rig.register(good)
        rig.consul.register_service("dc1", "dead", "127.0.0.1", "web", closed_port(), service_id="dead")
        for method in ["GET", "POST", "PATCH"]:
            for _ in range(2):
                response, body = await rig.request(method, "/dc1/web/x", data=b"payload")
                self.assertEqual(response.code, 200, method)
                self.assertEqual(json.loads(body)["body_sha256"], hashlib.sha256(b"payload").hexdigest())

    async def test_reset_is_retried_for_idempotent_methods_only(self) -> None:
        rig = GatewayRig(self, retries=2)
        good = rig.backend("good")
        reset = _resetting(self, "reset")
        rig.register(good)
        rig.register(reset)
        body = b"z" * 10000
        for _ in range(4):
            response, answer = await rig.request("PUT", "/dc1/web/put", data=body)
            self.assertEqual(response.code, 200)
            # The replayed body arrives whole on the instance that answered.
            self.assertEqual(json.loads(answer)["body_sha256"], hashlib.sha256(body).hexdigest())
        resets_before = reset.connections_made
        self.assertGreater(resets_before, 0)
        codes = []
        for _ in range(4):
            response, _ = await rig.request("POST", "/dc1/web/post", data=b"once")
            codes.append(response.code)
        # A POST that reached an instance is not sent twice: each reset is a 502.
        self.assertEqual(codes.count(502), reset.connections_made - resets_before)

    async def test_retries_zero_disables_retrying(self) -> None:
        rig = GatewayRig(self, retries=0)
        rig.consul.register_service("dc1", "dead", "127.0.0.1", "web", closed_port(), service_id="dead")
        rig.register(rig.backend("good"))
        codes = [(await rig.get("/dc1/web/"))[0].code for _ in range(4)]
        self.assertEqual(sorted(codes), [200, 200, 502, 502])

    async def test_single_instance_failure_is_a_clean_502(self) -> None:
        rig = GatewayRig(self)
        rig.consul.register_service("dc1", "dead", "127.0.0.1", "web", closed_port(), service_id="dead")
        response, body = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 502)
        self.assertEqual(json.loads(body)["error"], "upstream unreachable")


class EjectionTests(TestCase):
    async def test_failing_instance_is_ejected_after_three_failures(self) -> None:
        rig = GatewayRig(self)
        reset = _resetting(self, "reset")
        rig.register(reset)
        rig.register(rig.backend("a"))
        rig.register(rig.backend("b"))
        for _ in range(30):
            response, _ = await rig.get("/dc1/web/")
            self.assertEqual(response.code, 200)
        self.assertEqual(reset.connections_made, 3)
        outliers = rig.gateway.engine.outliers
        self.assertEqual(outliers.ejections_total, 1)
        # A Consul update re-listing the instance does not bring it back early.
        rig.consul.spurious_wakeup("dc1", "web")
        rig.register(rig.backend("c"))
        for _ in range(8):
            self.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)
        self.assertEqual(reset.connections_made, 3)

    async def test_never_more_than_half_ejected(self) -> None:
        rig = GatewayRig(self, retries=0)
        one, two = _resetting(self, "one"), _resetting(self, "two")
        rig.register(one)
        rig.register(two)
        for _ in range(20):
            response, _ = await rig.get("/dc1/web/")
            self.assertEqual(response.code, 502)
        self.assertEqual(rig.gateway.engine.outliers.ejections_total, 1)
        # One is ejected after its third failure; the other must keep serving
        # (failing), since ejecting both would leave nothing to route to.
        self.assertEqual(sorted([one.connections_made, two.connections_made]), [3, 17])


class OutlierClockTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.outliers = Outliers(self.clock, threshold=3, base=5.0, cap=20.0)
        self.a = Instance("10.0.0.1", 80)
        self.b = Instance("10.0.0.2", 80)
        self.both = (self.a, self.b)
        self.four = (self.a, self.b, Instance("10.0.0.3", 80), Instance("10.0.0.4", 80))

    def fail(self, times: int) -> bool:
        return [self.outliers.failed("dc1", "web", self.a, self.four) for _ in range(times)][-1]

    def test_ejection_grows_and_returns_by_itself(self) -> None:
        self.assertTrue(self.fail(3))
        self.assertEqual(self.outliers.usable("dc1", "web", self.both), (self.b,))
        self.clock.advance(5)
        self.assertEqual(self.outliers.usable("dc1", "web", self.both), self.both)
        self.assertTrue(self.fail(3))
        self.clock.advance(5)
        self.assertEqual(self.outliers.usable("dc1", "web", self.both), (self.b,))
        self.clock.advance(5)
        self.assertEqual(self.outliers.usable("dc1", "web", self.both), self.both)
        for _ in range(4):
            self.fail(3)
            self.clock.advance(20)
        self.assertEqual(self.outliers.state("dc1", "web", self.a).ejected_until, self.clock.seconds())

    def test_success_resets_the_count(self) -> None:
        self.fail(2)
        self.outliers.succeeded("dc1", "web", self.a)
        self.assertFalse(self.fail(2))
        self.assertTrue(self.outliers.failed("dc1", "web", self.a, self.four))

    def test_an_instance_consul_dropped_does_not_hold_an_ejection_slot(self) -> None:
        c = Instance("10.0.0.3", 80)
        three = (self.a, self.b, c)

        def fail(instance: Instance, listed: tuple) -> None:  # type: ignore[type-arg]
            for _ in range(3):
                self.outliers.failed("dc1", "web", instance, listed)

        fail(self.a, three)
        self.assertTrue(self.outliers.is_ejected("dc1", "web", self.a))
        # With three instances listed, only one may be out...
        fail(self.b, three)
        self.assertFalse(self.outliers.is_ejected("dc1", "web", self.b))
        # ...but once Consul no longer lists a, its slot is free again.
        fail(self.b, (self.b, c))
        self.assertTrue(self.outliers.is_ejected("dc1", "web", self.b))

    def test_only_instances_with_a_history_are_remembered(self) -> None:
        self.outliers.started("dc1", "web", self.a)
        self.assertEqual(self.outliers.state("dc1", "web", self.a).inflight, 1)
        self.outliers.succeeded("dc1", "web", self.a)
        self.outliers.ended("dc1", "web", self.a)
        self.assertIsNone(self.outliers.state("dc1", "web", self.a))
        self.outliers.started("dc1", "web", self.b)
        self.outliers.ended("dc1", "web", self.b)
        self.outliers.failed("dc1", "web", self.b, self.four)
        self.assertEqual(self.outliers.state("dc1", "web", self.b).consecutive_failures, 1)

    def test_an_answer_ends_an_ejection(self) -> None:
        self.assertTrue(self.fail(3))
        self.outliers.succeeded("dc1", "web", self.a)
        self.assertEqual(self.outliers.usable("dc1", "web", self.both), self.both)
        self.assertFalse(self.outliers.is_ejected("dc1", "web", self.a))

    def test_all_ejected_would_mean_none_so_all_are_used(self) -> None:
        outliers = Outliers(self.clock, threshold=1, max_fraction=1.0)
        outliers.failed("dc1", "web", self.a, self.both)
        outliers.failed("dc1", "web", self.b, self.both)
        self.assertEqual(outliers.usable("dc1", "web", self.both), self.both)


class RetryBudgetTests(TestCase):
    def test_floor_then_ratio(self) -> None:
        clock = Clock()
        clock.advance(1000)
        budget = RetryBudget(clock, ratio=0.2, floor=1.0, window=10)
        # With no traffic, the floor allows floor * window retries.
        self.assertEqual(sum(budget.try_retry() for _ in range(20)), 10)
        clock.advance(10)
        for _ in range(100):
            budget.request(clock.seconds())
        self.assertEqual(sum(budget.try_retry() for _ in range(50)), 20)
        clock.advance(11)
        self.assertTrue(budget.try_retry())


class ConsulFaultTests(TestCase):
    """
    Consul misbehaving: outages, vanished datacenters, nothing passing.
    """

    async def test_panic_mode_routes_to_all_registered(self) -> None:
        rig = GatewayRig(self, panic_all_instances=True)
        rig.register(rig.backend("a"), status="critical")
        rig.register(rig.backend("b"), status="warning")
        names = set()
        for _ in range(4):
            response, body = await rig.get("/dc1/web/")
            self.assertEqual(response.code, 200)
            names.add(json.loads(body)["backend"])
        self.assertEqual(names, {"a", "b"})

    async def test_panic_mode_still_prefers_passing(self) -> None:
        rig = GatewayRig(self, panic_all_instances=True)
        rig.register(rig.backend("sick"), status="critical")
        rig.register(rig.backend("well"))
        for _ in range(4):
            _, body = await rig.get("/dc1/web/")
            self.assertEqual(json.loads(body)["backend"], "well")

    async def test_max_stale_refuses_an_old_view_while_consul_is_down(self) -> None:
        rig = GatewayRig(self, max_stale=0.3)
        rig.register(rig.backend())
        self.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)
        rig.consul.fail(500, "No cluster leader")
        rig.consul.spurious_wakeup("dc1", "web")
        await eventually(lambda: rig.watcher("dc1", "web").errors >= 1)
        await settle(0.35)
        response, body = await rig.get("/dc1/web/")
        self.assertEqual(response.code, 503)
        rig.consul.recover()
        await eventually(lambda: rig.watcher("dc1", "web").errors == 0, timeout=5)
        self.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)

    async def test_recovers_by_itself_after_an_outage(self) -> None:
        rig = GatewayRig(self)
        rig.register(rig.backend("a"))
        await rig.get("/dc1/web/")
        rig.consul.fail(500, "No cluster leader")
        rig.consul.spurious_wakeup("dc1", "web")
        await eventually(lambda: rig.watcher("dc1", "web").errors >= 2, timeout=5)
        self.assertEqual((await rig.get("/dc1/web/"))[0].code, 200)
        rig.consul.recover()
        rig.register(rig.backend("b"))
        await eventually(lambda: rig.gateway_instances("dc1", "web") == 2, timeout=5)

    async def test_vanished_datacenter_is_served_for_the_grace_then_404(self) -> None:
        rig = GatewayRig(self, datacenter_grace=0.5)
        rig.register(rig.backend("far"), dc="dc2")
        self.assertEqual((await rig.get("/dc2/web/"))[0].code, 200)
        rig.consul.remove_datacenter("dc2")
        await eventually(lambda: rig.watcher("dc2", "web").errors >= 1)
        self.assertEqual((await rig.get("/dc2/web/"))[0].code, 200)

        # Once the grace is over, the next failed query drops the datacenter.
        await eventually(lambda: ("dc2", "web") not in rig.gateway.engine.discovery.watchers, timeout=5)
        response, body = await rig.get("/dc2/web/")
        self.assertEqual((response.code, json.loads(body)["error"]), (404, "unknown datacenter"))


class RetryBudgetScopeTests(TestCase):
    async def test_refused_connections_do_not_draw_on_the_budget(self) -> None:
        # Two dead instances of three: the at-most-half rule keeps one in
        # rotation, so about half the requests are refused and retried, far
        # more than the 20 % budget; none of them ever reached an upstream.
        rig = GatewayRig(self)
        rig.register(rig.backend("good"))
        for name in ("dead1", "dead2"):
            rig.consul.register_service("dc1", name, "127.0.0.1", "web", closed_port(), service_id=name)
        codes = [(await rig.get("/dc1/web/"))[0].code for _ in range(120)]
        self.assertEqual(set(codes), {200})


    async def test_exhausted_budget_is_logged(self) -> None:
        from tests.support.harness import captured_log

        rig = GatewayRig(self)
        rig.register(rig.backend("good"))
        rig.register(_resetting(self, "r1"))
        rig.register(_resetting(self, "r2"))
        lines = captured_log(self)
        codes = [(await rig.get("/dc1/web/"))[0].code for _ in range(200)]
        refusals = rig.gateway.engine.budget_refusals
        self.assertGreater(refusals, 0)
        self.assertEqual(codes.count(502), refusals)
        self.assertEqual(len([line for line in lines if "retry budget exhausted" in line]), 1)

class EarlyAnswerTests(TestCase):
    async def test_upstream_answering_before_the_upload_ends_is_clean(self) -> None:
        from twisted.internet.protocol import Factory, Protocol

        from tests.support.harness import captured_log, raw_connect

        class AnswerEarly(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if b"\r\n\r\n" in data and self.transport is not None:
                    self.transport.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno")

        port = reactor.listenTCP(0, Factory.forProtocol(AnswerEarly), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        rig = GatewayRig(self)
        rig.consul.register_service("dc1", "early", "127.0.0.1", "web", port.getHost().port)
        lines = captured_log(self)
        client = await raw_connect(rig.port)
        client.transport.write(b"POST /dc1/web/up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        await eventually(lambda: b"\r\n\r\nno" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 401"))
        self.assertIn(b"Connection: close", client.received)
        client.transport.loseConnection()
        await client.closed
        await settle(0.05)
        self.assertEqual([line for line in lines if "not in valid state" in line or "Traceback" in line], [])
