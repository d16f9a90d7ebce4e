"""
An agent whose per-client connection cap (limits.http_max_conns_per_client)
is below consul-max-connections, over real sockets: its 429s make restygate
back off and learn the cap, so requests still get answers (or a clear 503
while it learns), never a hang.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial.unittest import TestCase

from restygate.testing.consul import ConsulServer
from tests.support.harness import GatewayRig, eventually

# Held queries alone would take 16 dedicated + 2 per datacenter = 26 > 20.
DCS = 5
SERVICES = 8
PATHS = [f"/dc{d + 1}/svc{n}/" for d in range(DCS) for n in range(SERVICES)]


class AgentCapBelowBudgetTests(TestCase):
    async def test_requests_get_answers_under_an_agent_cap_of_20(self) -> None:
        consul = ConsulServer(reactor, jitter=False, max_conns_per_client=20)
        rig = GatewayRig(self, consul=consul, consul_max_connections=64, discovery_timeout=2)
        backend = rig.backend()
        for d in range(DCS):
            for n in range(SERVICES):
                rig.register(backend, service=f"svc{n}", dc=f"dc{d + 1}")

        async def codes() -> List[int]:
            answers = await gatherResults([ensureDeferred(rig.get(path)) for path in PATHS])
            return [r[0].code for r in answers]

        first = await codes()
        self.assertTrue(set(first) <= {200, 503}, first)
        discovery: Any = rig.gateway.engine.discovery
        last: List[int] = []

        async def all_answered() -> bool:
            if discovery.ranking is not None:
                discovery.ranking.rank()
            last[:] = await codes()
            return set(last) == {200}

        for _ in range(40):
            if await all_answered():
                break
        self.assertEqual(set(last), {200}, (last, consul.connections.refused))
        # The 429s taught the gate the agent's cap: the dedicated places
        # shrank to a quarter of it, so held queries leave room for fetches.
        self.assertGreater(consul.connections.refused, 0)
        places = discovery.ranking.places
        self.assertLessEqual(places, 20 // 4)
        discovery.ranking.rank()
        self.assertLessEqual(discovery.consul_load().dedicated, places)
