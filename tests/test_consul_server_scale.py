"""Tests for what the Consul test server does at scale, over real loopback HTTP.

`/v1/health/state/<state>` with ``?filter``, blocking; the per-client connection cap answered with
go-connlimit's 429; ``X-Consul-LastContact`` / ``X-Consul-KnownLeader`` with ``?stale``; service names
matched case-insensitively and answered in the registered spelling. (The rest of the server's wire
behaviour is in test_consul_server.py.)
"""

from __future__ import annotations

import json
from typing import List, Optional, Tuple

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.iweb import IResponse

from restygate.testing.consul import ConsulServer
from restygate.testing.consul.bexpr import compile_filter
from restygate.testing.consul.connlimit import TOO_MANY_RESPONSE
from restygate.testing.consul.model import ConsulError
from tests.support.consulwire import ConsulWireCase
from tests.support.harness import eventually


class _Raw(Protocol):
    """Sends one request line set and collects whatever comes back until the server closes."""

    def __init__(self, request: bytes, done: defer.Deferred[bytes]) -> None:
        self._request = request
        self._done = done
        self._data: List[bytes] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._data.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._done.callback(b"".join(self._data))


class FilterTests(unittest.TestCase):
    """The ?filter subset, refusing what it does not know as Consul refuses a bad expression."""

    def test_expressions(self) -> None:
        fields = frozenset({"ServiceName", "Status", "ServiceTags", "Node"})
        check = {"ServiceName": "web", "Status": "critical", "ServiceTags": ["a"], "Node": {"x": "1"}}
        cases = {
            'ServiceName == "web"': True,
            'ServiceName != "web"': False,
            'ServiceName == "web" and Status == "passing"': False,
            'ServiceName == "db" or (Status == "critical" and not ServiceName == "db")': True,
            '"a" in ServiceTags': True,
            '"b" not in ServiceTags': True,
            "ServiceTags is not empty": True,
            "Node.x == 1": True,
            "Node.y is empty": True,
        }
        for text, expected in cases.items():
            self.assertEqual(compile_filter(text, fields)(check), expected, text)

    def test_refused(self) -> None:
        for text in ['Nope == "x"', 'ServiceName = "x"', 'ServiceName == "x" and', "(ServiceName", 'ServiceName ~ "a"']:
            with self.assertRaises(ConsulError, msg=text) as caught:
                compile_filter(text, frozenset({"ServiceName"}))
            self.assertEqual(caught.exception.status, 400)
            self.assertTrue(caught.exception.message.startswith("Failed to create boolean expression evaluator"))


class ScaleWireTests(ConsulWireCase):
    async def get(self, server: ConsulServer, path: str) -> Tuple[IResponse, bytes]:
        response = await treq.get(server.url + path, pool=self.pool(), persistent=False)
        return response, await treq.content(response)

    def header(self, response: IResponse, name: str) -> Optional[str]:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    async def test_health_state_with_filter_blocks_and_wakes(self) -> None:
        server = self.make_server()
        server.register_service("dc1", "n1", "10.0.0.1", "Web", 80, service_id="web-1")
        server.register_service("dc1", "n2", "10.0.0.2", "db", 5432, status="critical")
        response, body = await self.get(server, "/v1/health/state/any")
        checks = json.loads(body)
        self.assertEqual(
            sorted((c["Node"], c["CheckID"], c["Status"], c["ServiceName"]) for c in checks),
            [
                ("n1", "serfHealth", "passing", ""),
                ("n1", "service:web-1", "passing", "Web"),
                ("n2", "serfHealth", "passing", ""),
                ("n2", "service:db", "critical", "db"),
            ],
        )
        index = int(self.header(response, "X-Consul-Index") or 0)
        self.assertEqual(index, server.index)
        _, body = await self.get(server, "/v1/health/state/critical")
        self.assertEqual([c["CheckID"] for c in json.loads(body)], ["service:db"])
        _, body = await self.get(server, '/v1/health/state/any?filter=ServiceName%20%3D%3D%20%22Web%22')
        self.assertEqual([c["ServiceID"] for c in json.loads(body)], ["web-1"])
        response, body = await self.get(server, "/v1/health/state/bogus")
        self.assertEqual((response.code, body), (400, b"Bad check state"))
        response, body = await self.get(server, "/v1/health/state/any?filter=Address%20%3D%3D%20%22x%22")
        self.assertEqual(response.code, 400)
        self.assertIn(b'Selector "Address" is not valid', body)
        # Blocking: a health flip anywhere in the datacenter wakes it with the new index.
        pending = defer.ensureDeferred(self.get(server, f"/v1/health/state/any?index={index}&wait=30s"))
        while server.blocked_count == 0:
            await self.get(server, "/v1/status/leader")
        server.set_check_status("dc1", "web-1", "warning")
        response, body = await pending
        self.assertGreater(int(self.header(response, "X-Consul-Index") or 0), index)
        self.assertIn(("service:web-1", "warning"), [(c["CheckID"], c["Status"]) for c in json.loads(body)])

    async def test_catalog_services_index_moves_with_services_not_checks(self) -> None:
        server = self.make_server()
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        response, _ = await self.get(server, "/v1/catalog/services")
        index = int(self.header(response, "X-Consul-Index") or 0)
        server.set_check_status("dc1", "web", "critical")
        response, _ = await self.get(server, "/v1/catalog/services")
        self.assertEqual(int(self.header(response, "X-Consul-Index") or 0), index)
        server.register_service("dc1", "n2", "10.0.0.2", "web", 80)
        response, _ = await self.get(server, "/v1/catalog/services")
        self.assertEqual(int(self.header(response, "X-Consul-Index") or 0), server.index)

    async def test_health_service_filter(self) -> None:
        server = self.make_server()
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80, service_id="a")
        server.register_service("dc1", "n2", "10.0.0.2", "web", 81, service_id="b")
        _, body = await self.get(server, "/v1/health/service/web?filter=Service.Port%3D%3D80")
        self.assertEqual([e["Service"]["ID"] for e in json.loads(body)], ["a"])

    async def test_answers_follow_every_kind_of_catalog_change(self) -> None:
        # The server looks instances and checks up by name and reuses renderings: every change below must
        # still show in the next answers exactly as a scan of the catalog would show it.
        server = self.make_server()
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80, service_id="w1")
        server.register_service("dc1", "n2", "10.0.0.2", "web", 81, service_id="w2")
        # As the command line does after loading registrations: what it renders ahead must not outlive a change.
        server.warm()

        async def health(name: str) -> List[Tuple[str, str, List[Tuple[str, str]]]]:
            _, body = await self.get(server, f"/v1/health/service/{name}")
            return [
                (e["Node"]["Node"], e["Service"]["ID"], [(c["CheckID"], c["Status"]) for c in e["Checks"]])
                for e in json.loads(body)
            ]

        async def not_passing() -> List[Tuple[str, str, str]]:
            _, body = await self.get(server, "/v1/health/state/any?filter=Status%20!%3D%20%22passing%22")
            return [(c["Node"], c["CheckID"], c["ServiceName"]) for c in json.loads(body)]

        passing = [("service:w1", "passing"), ("serfHealth", "passing")]
        self.assertEqual(await health("web"), [("n1", "w1", passing), ("n2", "w2", [("service:w2", "passing"),
                                                                                   ("serfHealth", "passing")])])
        self.assertEqual(await not_passing(), [])
        server.set_check_status("dc1", "w2", "critical")
        self.assertEqual(await not_passing(), [("n2", "service:w2", "web")])
        self.assertEqual((await health("web"))[1][2][0], ("service:w2", "critical"))
        # A second check on an instance, then the instance renamed under the same ID, then removed.
        server.register({"Datacenter": "dc1", "Node": "n1", "SkipNodeUpdate": True,
                         "Check": {"CheckID": "extra", "ServiceID": "w1", "Status": "warning"}})
        self.assertEqual((await health("web"))[0][2], [("service:w1", "passing"), ("extra", "warning"),
                                                       ("serfHealth", "passing")])
        self.assertEqual(await not_passing(), [("n1", "extra", "web"), ("n2", "service:w2", "web")])
        server.register_service("dc1", "n1", "10.0.0.1", "api", 80, service_id="w1")
        self.assertEqual([e[1] for e in await health("web")], ["w2"])
        self.assertEqual([e[1] for e in await health("api")], ["w1"])
        self.assertEqual(await not_passing(), [("n1", "extra", "api"), ("n2", "service:w2", "web")])
        server.deregister({"Datacenter": "dc1", "Node": "n2", "ServiceID": "w2"})
        self.assertEqual(await health("web"), [])
        self.assertEqual(await not_passing(), [("n1", "extra", "api")])
        # A node-level check failing shows in every entry of its node; the node going takes everything.
        server.set_check_status("dc1", "serfHealth", "critical", node="n1")
        self.assertEqual((await health("api"))[0][2][-1], ("serfHealth", "critical"))
        server.deregister({"Datacenter": "dc1", "Node": "n1"})
        self.assertEqual((await health("api"), await not_passing()), ([], []))

    async def test_stats_count_requests_for_datacenters_it_does_not_have(self) -> None:
        server = self.make_server()
        response, _ = await self.get(server, "/v1/health/service/web?dc=made-up")
        await self.get(server, "/v1/health/service/web?dc=dc1")
        _, body = await self.get(server, "/_test/stats")
        self.assertEqual((response.code, json.loads(body)["unknown_datacenter_requests"]), (500, 1))

    async def test_names_match_case_insensitively_in_the_registered_spelling(self) -> None:
        server = self.make_server()
        server.register_service("dc1", "n1", "10.0.0.1", "NgInX", 80)
        for spelling in ["nginx", "NGINX", "NgInX"]:
            _, body = await self.get(server, f"/v1/health/service/{spelling}")
            self.assertEqual([e["Service"]["Service"] for e in json.loads(body)], ["NgInX"], spelling)
        _, body = await self.get(server, "/v1/catalog/services")
        self.assertEqual(json.loads(body), {"NgInX": []})

    async def test_last_contact_and_known_leader(self) -> None:
        server = self.make_server()
        server.agent.last_contact_ms = 250
        response, _ = await self.get(server, "/v1/health/service/web?stale")
        self.assertEqual(
            (self.header(response, "X-Consul-Lastcontact"), self.header(response, "X-Consul-Effective-Consistency")),
            ("250", "stale"),
        )
        response, _ = await self.get(server, "/v1/health/service/web?consistent")
        self.assertEqual(self.header(response, "X-Consul-Lastcontact"), "0")
        server.agent.leader = ""
        response, _ = await self.get(server, "/v1/catalog/services?stale")
        self.assertEqual(self.header(response, "X-Consul-Knownleader"), "false")

    async def test_connections_past_the_cap_get_429(self) -> None:
        server = self.make_server(max_conns_per_client=2)
        index = server.service_index("dc1", "web")
        held = [
            defer.ensureDeferred(self.get(server, f"/v1/health/service/web?index={index}&wait=30s")) for _ in range(2)
        ]
        await eventually(lambda: server.blocked_count == 2)
        self.assertEqual(server.connections.total, 2)
        done: defer.Deferred[bytes] = defer.Deferred()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", int(server.address.rpartition(":")[2]))
        await endpoint.connect(Factory.forProtocol(lambda: _Raw(b"GET /v1/agent/self HTTP/1.1\r\nHost: x\r\n\r\n", done)))
        self.assertEqual(await done, TOO_MANY_RESPONSE)
        self.assertEqual(server.connections.refused, 1)
        self.assertTrue(TOO_MANY_RESPONSE.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"))
        # A connection freed makes room again.
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        for d in held:
            response, _ = await d
            self.assertEqual(response.code, 200)
        await eventually(lambda: server.connections.total == 0)
        response, _ = await self.get(server, "/v1/agent/self")
        self.assertEqual((response.code, server.connections.refused, server.connections.peak), (200, 1, 2))

