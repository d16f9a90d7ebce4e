"""
End-to-end tests of the balancers over real sockets: Consul's weights as
the test server serves them, least-request against a slow instance, hash
stickiness and what moves when an instance leaves, and warning instances.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any, Dict, List, Optional

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from restygate.upstream.balancer import Balancer
from tests.support.backends import Backend
from tests.support.harness import GatewayRig, eventually


def register(
    rig: GatewayRig, backend: Backend, passing: int = 1, warning: int = 1, status: str = "passing"
) -> str:
    if "dc1" not in rig.consul.datacenters:
        rig.consul.add_datacenter("dc1")
    return rig.consul.register_service(
        "dc1", f"node-{backend.name}", backend.host, "web", backend.port,
        service_id=f"web-{backend.name}", service_address=backend.host, status=status,
        weights={"Passing": passing, "Warning": warning},
    )


async def served_by(
    rig: GatewayRig, count: int, headers: Optional[List[Dict[bytes, List[bytes]]]] = None, parallel: int = 20
) -> List[str]:
    """
    The backend that answered each of C{count} requests, sent by
    C{parallel} clients each sending its next as soon as its last is
    answered; C{headers[n]} for the n-th when given.
    """
    names: List[str] = [""] * count
    turns = iter(range(count))

    async def client() -> None:
        for n in turns:
            response, body = await rig.get("/dc1/web/", headers=headers[n] if headers else None)
            assert response.code == 200, body
            names[n] = json.loads(body)["backend"]

    await gatherResults([Deferred.fromCoroutine(client()) for _ in range(parallel)])
    return names


class WeightTests(TestCase):
    """
    Every balancer gives instances traffic in proportion to
    C{Service.Weights.Passing}: 1:3 within 10 % over 2,000 requests.
    """

    async def check_split(
        self, balancer: str, hashed: bool = False, count: int = 2000, seed: Optional[int] = None
    ) -> None:
        rig = GatewayRig(self, balancer=balancer, hash_on="header:X-User")
        if seed is not None:
            # The real balancer, its random draws made repeatable.
            resource = rig.gateway.engine
            resource.balancer = Balancer(resource.outliers.inflight, random.Random(seed))
        light, heavy = rig.backend("light"), rig.backend("heavy")
        register(rig, light, passing=1)
        register(rig, heavy, passing=3)
        headers = [{b"X-User": [b"user-%d" % n]} for n in range(count)] if hashed else None
        split = Counter(await served_by(rig, count, headers))
        self.assertLessEqual(abs(split["light"] - count / 4), count / 40, split)
        self.assertLessEqual(abs(split["heavy"] - count * 3 / 4), count * 3 / 40, split)

    async def test_round_robin(self) -> None:
        await self.check_split("round-robin")

    async def test_random(self) -> None:
        # Unseeded, chance alone would put 2,000 picks outside 10 % about
        # once in a hundred runs.
        await self.check_split("random", seed=12)

    async def test_least_request(self) -> None:
        await self.check_split("least-request", seed=12)

    async def test_hash(self) -> None:
        await self.check_split("hash", hashed=True, count=1000)

    async def test_default_weights(self) -> None:
        """
        Instances registered without Weights (Consul's default 1 and 1)
        share evenly.
        """
        rig = GatewayRig(self)
        for name in ("a", "b"):
            rig.register(rig.backend(name))
        self.assertEqual(Counter(await served_by(rig, 100)), {"a": 50, "b": 50})


class LeastRequestTests(TestCase):
    async def test_slow_instance_gets_fewer(self) -> None:
        """
        With ten requests at a time, the instance that takes 50 ms per
        answer has more in flight and wins fewer of the two-choice draws.
        """
        rig = GatewayRig(self, balancer="least-request")
        slow, fast = rig.backend("slow"), rig.backend("fast")
        slow.delay = 0.05
        register(rig, slow)
        register(rig, fast)
        split = Counter(await served_by(rig, 300, parallel=10))
        self.assertLess(split["slow"], split["fast"] / 2, split)

    async def test_round_robin_ignores_speed(self) -> None:
        """
        The contrast: round robin sends the slow instance its full half.
        """
        rig = GatewayRig(self)
        slow, fast = rig.backend("slow"), rig.backend("fast")
        slow.delay = 0.05
        register(rig, slow)
        register(rig, fast)
        self.assertEqual(Counter(await served_by(rig, 100, parallel=10)), {"slow": 50, "fast": 50})


class HashTests(TestCase):
    async def owners(self, rig: GatewayRig, keys: List[bytes], header: bytes) -> Dict[bytes, str]:
        headers = [{header: [key]} for key in keys]
        return dict(zip(keys, await served_by(rig, len(keys), headers)))

    async def test_sticky_and_moves_only_the_leavers_share(self) -> None:
        rig = GatewayRig(self, balancer="hash", hash_on="header:X-User")
        backends = [rig.backend(name) for name in ("a", "b", "c")]
        for backend in backends:
            register(rig, backend)
        keys = [b"user-%d" % n for n in range(300)]
        first = await self.owners(rig, keys, b"X-User")
        self.assertEqual(await self.owners(rig, keys, b"X-User"), first)
        self.assertEqual(set(first.values()), {"a", "b", "c"})
        rig.consul.deregister({"Datacenter": "dc1", "Node": "node-c", "ServiceID": "web-c"})
        await eventually(lambda: rig.gateway_instances("dc1", "web") == 2)
        after = await self.owners(rig, keys, b"X-User")
        moved = {key for key in keys if after[key] != first[key]}
        self.assertEqual(moved, {key for key in keys if first[key] == "c"})
        self.assertLessEqual(abs(len(moved) / len(keys) - 1 / 3), 0.1)

    async def test_cookie(self) -> None:
        rig = GatewayRig(self, balancer="hash", hash_on="cookie:session")
        for name in ("a", "b", "c"):
            register(rig, rig.backend(name))
        keys = [b"theme=dark; session=s%d" % n for n in range(60)]
        first = await self.owners(rig, keys, b"Cookie")
        self.assertEqual(await self.owners(rig, keys, b"Cookie"), first)
        self.assertGreater(len(set(first.values())), 1)

    async def test_client_ip(self) -> None:
        """
        One client address: one instance, every time.
        """
        rig = GatewayRig(self, balancer="hash")
        for name in ("a", "b", "c"):
            register(rig, rig.backend(name))
        self.assertEqual(len(set(await served_by(rig, 30))), 1)


class WarningTests(TestCase):
    """
    C{include-warning}: instances whose checks warn get traffic at their
    C{Weights.Warning}, as Consul's DNS gives them; critical ones never.
    """

    async def rig_with_states(self, **config: Any) -> GatewayRig:
        rig = GatewayRig(self, **config)
        register(rig, rig.backend("ok"), passing=1)
        register(rig, rig.backend("warn"), passing=10, warning=3, status="warning")
        register(rig, rig.backend("down"), status="critical")
        return rig

    async def test_off_by_default(self) -> None:
        rig = await self.rig_with_states()
        self.assertEqual(Counter(await served_by(rig, 40)), {"ok": 40})

    async def test_warning_weight(self) -> None:
        rig = await self.rig_with_states(include_warning=True)
        self.assertEqual(Counter(await served_by(rig, 400)), {"ok": 100, "warn": 300})

    async def test_zero_warning_weight(self) -> None:
        rig = GatewayRig(self, include_warning=True)
        register(rig, rig.backend("ok"))
        register(rig, rig.backend("warn"), warning=0, status="warning")
        self.assertEqual(Counter(await served_by(rig, 20)), {"ok": 20})

    async def test_check_flips(self) -> None:
        """
        A warning check turning critical takes the instance out; passing
        brings it back at its passing weight.
        """
        rig = await self.rig_with_states(include_warning=True)
        await served_by(rig, 1)
        rig.consul.set_check_status("dc1", "web-warn", "critical")
        await eventually(lambda: not rig.watcher("dc1", "web").snapshot.warning)
        self.assertEqual(Counter(await served_by(rig, 20)), {"ok": 20})
        rig.consul.set_check_status("dc1", "web-warn", "passing")
        await eventually(lambda: rig.gateway_instances("dc1", "web") == 2)
        self.assertEqual(Counter(await served_by(rig, 110)), {"ok": 10, "warn": 100})
