"""Tests for the Consul HTTP API test server in `restygate.testing.consul`.

restygate's own tests trust this server to behave like Consul, so its wire behaviour (status codes, bodies,
headers, null maps, filtering, ACLs) is checked over real loopback HTTP with treq, and its blocking-query
timing with `twisted.internet.task.Clock` through `treq.testing.StubTreq` (or a `DummyRequest` where a
client has to vanish mid-request).
"""

from __future__ import annotations

import io
import json
import os
import sys
import random
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import treq
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.iweb import IResponse
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from restygate.testing.consul import (
    ConsulError,
    ConsulServer,
    load_registrations,
    main,
    parse_go_bool,
    parse_go_duration,
)
from tests.support.consulwire import ConsulWireCase

STUB = "http://consul.test"


class _FixedRandom(random.Random):
    """A random source that always draws the same value, to pin the jitter."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self._value = value

    def random(self) -> float:
        return self._value


def _index(response: IResponse) -> int:
    return int(response.headers.getRawHeaders(b"X-Consul-Index")[0])


def _header(response: IResponse, name: str) -> Optional[str]:
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return values[0].decode("ascii") if values else None


class ParsingTests(unittest.TestCase):
    """Query parameters follow Go's parsers, since real clients are written against them."""

    def test_go_durations(self) -> None:
        cases = {"10s": 10.0, "5m": 300.0, "100ms": 0.1, "1m30s": 90.0, "1.5h": 5400.0, "0": 0.0, "250us": 0.00025}
        for text, seconds in cases.items():
            self.assertAlmostEqual(parse_go_duration(text), seconds, msg=text)

    def test_bad_go_durations(self) -> None:
        for text in ["", "10", "s", "10x", "1m 30s", ".s", "ten seconds", "5M"]:
            self.assertRaises(ValueError, parse_go_duration, text)

    def test_go_bools(self) -> None:
        self.assertEqual([parse_go_bool(v) for v in ["1", "t", "true", "TRUE", "True"]], [True] * 5)
        self.assertEqual([parse_go_bool(v) for v in ["0", "f", "false", "FALSE", "False"]], [False] * 5)
        for text in ["yes", "on", "tRuE", ""]:
            self.assertRaises(ValueError, parse_go_bool, text)


class StateTests(unittest.TestCase):
    """The catalog and its indexes, driven directly."""

    def setUp(self) -> None:
        self.server = ConsulServer(Clock(), jitter=False)

    def test_index_starts_at_one_and_unknown_service_reports_dc_index(self) -> None:
        self.assertEqual(self.server.index, 1)
        self.assertEqual(self.server.service_index("dc1", "nothing"), 1)
        self.server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        self.assertEqual(self.server.service_index("dc1", "nothing"), self.server.index)

    def test_only_the_changed_service_gets_a_new_index(self) -> None:
        self.server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        web = self.server.service_index("dc1", "web")
        self.server.register_service("dc1", "n2", "10.0.0.2", "db", 5432)
        self.assertEqual(self.server.service_index("dc1", "web"), web)
        self.assertGreater(self.server.service_index("dc1", "db"), web)

    def test_identical_registration_spends_no_index(self) -> None:
        self.server.register_service("dc1", "n1", "10.0.0.1", "web", 80, tags=["a"])
        before = self.server.index
        self.server.register_service("dc1", "n1", "10.0.0.1", "web", 80, tags=["a"])
        self.assertEqual(self.server.index, before)
        self.server.register_service("dc1", "n1", "10.0.0.1", "web", 80, tags=["a", "b"])
        self.assertEqual(self.server.index, before + 1)

    def test_node_check_touches_every_service_on_the_node(self) -> None:
        self.server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        self.server.register_service("dc1", "n1", "10.0.0.1", "api", 81)
        self.server.register_service("dc1", "n2", "10.0.0.2", "db", 5432)
        db = self.server.service_index("dc1", "db")
        self.server.set_check_status("dc1", "serfHealth", "critical", node="n1")
        self.assertEqual(self.server.service_index("dc1", "web"), self.server.index)
        self.assertEqual(self.server.service_index("dc1", "api"), self.server.index)
        self.assertEqual(self.server.service_index("dc1", "db"), db)

    def test_second_service_keeps_node_health_and_data(self) -> None:
        self.server.register_service("dc1", "n1", "10.0.0.1", "web", 80, node_meta={"rack": "r1"})
        self.server.set_check_status("dc1", "serfHealth", "critical", node="n1")
        self.server.register_service("dc1", "n1", "10.0.0.1", "api", 81)
        dc = self.server._datacenters["dc1"]
        self.assertEqual(dc.checks["n1"]["serfHealth"].status, "critical")
        self.assertEqual(dc.nodes["n1"].meta, {"rack": "r1"})

    def test_set_check_status_refuses_unknown_targets(self) -> None:
        self.server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        self.assertRaises(KeyError, self.server.set_check_status, "dc1", "nope", "critical")
        self.assertRaises(ValueError, self.server.set_check_status, "dc1", "web", "sick")
        self.assertRaises(ConsulError, self.server.set_check_status, "dc9", "web", "critical")

    def test_register_refusals_change_nothing(self) -> None:
        before = self.server.index
        bad: List[Tuple[Dict[str, Any], int, str]] = [
            ({"Address": "10.0.0.1"}, 500, "Must provide node"),
            ({"Node": "n1"}, 500, "Must provide address if SkipNodeUpdate is not set"),
            ({"Node": "n1", "Address": "a", "Service": {"Service": "web", "Port": "80"}}, 400, "Request decode failed"),
            ({"Node": "n1", "Address": "a", "Check": {"CheckID": "c", "ServiceID": "ghost"}}, 500, "Missing service"),
            ({"Node": "n1", "Address": "a", "Check": {"CheckID": "c", "Status": "sick"}}, 500, "Invalid Health"),
        ]
        for body, status, message in bad:
            error = self.assertRaises(ConsulError, self.server.register, body)
            self.assertEqual(error.status, status, body)
            self.assertTrue(error.message.startswith(message), (body, error.message))
        self.assertEqual(self.server.index, before)
        self.assertEqual(self.server._datacenters["dc1"].nodes, {})

    def test_register_is_case_insensitive_and_defaults_like_consul(self) -> None:
        self.server.register(
            {"datacenter": "dc2", "node": "n1", "address": "10.0.0.1", "service": {"service": "web", "port": 80},
             "check": {"name": "web alive", "serviceid": "web"}}
        )
        dc = self.server._datacenters["dc2"]
        service = dc.services["n1"]["web"]
        self.assertEqual((service.service_id, service.weights), ("web", {"Passing": 1, "Warning": 1}))
        check = dc.checks["n1"]["web alive"]
        self.assertEqual(check.status, "critical")

    def test_load_registrations(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"Node": "n1", "Address": "a"}, f)
        self.assertEqual(load_registrations(path), [{"Node": "n1", "Address": "a"}])
        with open(path, "w") as f:
            json.dump([{"Node": "n1"}, {"Node": "n2"}], f)
        self.assertEqual(len(load_registrations(path)), 2)
        with open(path, "w") as f:
            json.dump([1], f)
        self.assertRaises(ValueError, load_registrations, path)

    def test_cli_refuses_a_bad_register_file_in_one_line(self) -> None:
        fd, path = tempfile.mkstemp(suffix=".json")
        os.write(fd, b'{"Node": "n1"}')
        os.close(fd)
        self.addCleanup(os.remove, path)
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, main, ["--port", "0", "--register", path])
        self.assertEqual(error.code, 2)
        self.assertIn("500 Must provide address", stderr.getvalue())


class WireTests(ConsulWireCase):
    """Consul's wire behaviour, over real loopback HTTP."""

    def setUp(self) -> None:
        self.server = self.make_server()

    @defer.inlineCallbacks
    def call(
        self,
        method: str,
        path: str,
        server: Optional[ConsulServer] = None,
        headers: Optional[Dict[str, str]] = None,
        body: Optional[bytes] = None,
    ) -> Any:
        server = server or self.server
        response = yield treq.request(
            method, server.url + path, headers=headers, data=body, pool=self.pool(), persistent=False
        )
        content = yield treq.content(response)
        return response, content

    def test_health_body_headers_and_null_maps(self) -> Any:
        self.server.register_service("dc1", "n1", "10.0.0.1", "web", 8080, tags=["v1"], meta={"ver": "1"})
        return self._check_health_body()

    @defer.inlineCallbacks
    def _check_health_body(self) -> Any:
        response, content = yield self.call("GET", "/v1/health/service/web")
        self.assertEqual(response.code, 200)
        self.assertEqual(_header(response, "Content-Type"), "application/json")
        self.assertEqual(response.length, len(content))  # sent as Content-Length, not chunked
        self.assertEqual(_index(response), self.server.service_index("dc1", "web"))
        self.assertEqual(_header(response, "X-Consul-Knownleader"), "true")
        self.assertEqual(_header(response, "X-Consul-Lastcontact"), "0")
        [entry] = json.loads(content)
        node = entry["Node"]
        self.assertEqual(
            {k: node[k] for k in ["ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"]},
            {"ID": "", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1", "TaggedAddresses": None, "Meta": None},
        )
        self.assertIn(b'"TaggedAddresses":null', content)
        service = entry["Service"]
        self.assertEqual(
            {k: service[k] for k in ["ID", "Service", "Tags", "Address", "Port", "Meta", "Weights"]},
            {"ID": "web", "Service": "web", "Tags": ["v1"], "Address": "", "Port": 8080, "Meta": {"ver": "1"},
             "Weights": {"Passing": 1, "Warning": 1}},
        )
        checks = {c["CheckID"]: c for c in entry["Checks"]}
        self.assertEqual(set(checks), {"service:web", "serfHealth"})
        self.assertEqual(checks["serfHealth"]["ServiceID"], "")
        self.assertEqual(checks["serfHealth"]["ServiceTags"], [])
        self.assertEqual(checks["service:web"]["ServiceName"], "web")
        self.assertEqual(checks["service:web"]["Status"], "passing")

    @defer.inlineCallbacks
    def test_unknown_service_is_an_empty_list_with_a_real_index(self) -> Any:
        response, content = yield self.call("GET", "/v1/health/service/nothing")
        self.assertEqual((response.code, content), (200, b"[]"))
        self.assertGreaterEqual(_index(response), 1)

    @defer.inlineCallbacks
    def test_passing_drops_any_non_passing_check(self) -> Any:
        for node, status in [("ok", "passing"), ("warn", "warning"), ("serf-crit", "passing"), ("serf-warn", "passing")]:
            self.server.register_service("dc1", node, "10.0.0.1", "web", 80, service_id=f"web-{node}", status=status)
        self.server.set_check_status("dc1", "serfHealth", "critical", node="serf-crit")
        self.server.set_check_status("dc1", "serfHealth", "warning", node="serf-warn")
        for query in ["?passing", "?passing=1", "?passing=true", "?passing=T"]:
            response, content = yield self.call("GET", "/v1/health/service/web" + query)
            self.assertEqual([e["Node"]["Node"] for e in json.loads(content)], ["ok"], query)
        for query in ["", "?passing=false", "?passing=0"]:
            response, content = yield self.call("GET", "/v1/health/service/web" + query)
            self.assertEqual(len(json.loads(content)), 4, query)
        response, content = yield self.call("GET", "/v1/health/service/web?passing=nope")
        self.assertEqual((response.code, content), (400, b"Invalid value for ?passing"))
        self.assertTrue(_header(response, "Content-Type").startswith("text/plain"))  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_every_repeated_tag_must_match(self) -> Any:
        self.server.register_service("dc1", "n1", "10.0.0.1", "web", 80, service_id="ab", tags=["a", "b"])
        self.server.register_service("dc1", "n2", "10.0.0.2", "web", 80, service_id="a", tags=["a"])
        self.server.register_service("dc1", "n3", "10.0.0.3", "web", 80, service_id="b", tags=["b"])
        response, content = yield self.call("GET", "/v1/health/service/web?tag=a&tag=b")
        self.assertEqual([e["Service"]["ID"] for e in json.loads(content)], ["ab"])
        response, content = yield self.call("GET", "/v1/health/service/web?tag=a")
        self.assertEqual([e["Service"]["ID"] for e in json.loads(content)], ["ab", "a"])
        self.assertEqual(self.server.requests_seen[0].args, [("tag", "a"), ("tag", "b")])

    @defer.inlineCallbacks
    def test_datacenters_and_unknown_dc(self) -> Any:
        self.server.register_service("dc2", "n1", "10.0.1.1", "web", 80)
        response, content = yield self.call("GET", "/v1/health/service/web?dc=dc2")
        self.assertEqual(len(json.loads(content)), 1)
        response, content = yield self.call("GET", "/v1/health/service/web")
        self.assertEqual(content, b"[]")
        response, content = yield self.call("GET", "/v1/catalog/datacenters")
        self.assertEqual(json.loads(content), ["dc1", "dc2"])
        response, content = yield self.call("GET", "/v1/health/service/web?dc=nowhere")
        self.assertEqual((response.code, content), (500, b"No path to datacenter"))
        self.server.remove_datacenter("dc2")
        response, content = yield self.call("GET", "/v1/health/service/web?dc=dc2")
        self.assertEqual((response.code, content), (500, b"No path to datacenter"))
        agent = self.make_server(agent_prefix=True, datacenter="east")
        response, content = yield self.call("GET", "/v1/health/service/web?dc=dc1", server=agent)
        self.assertEqual((response.code, content), (500, b"rpc error making call: No path to datacenter"))
        response, content = yield self.call("GET", "/v1/health/service/web", server=agent)
        self.assertEqual((response.code, content), (200, b"[]"))

    @defer.inlineCallbacks
    def test_bad_query_parameters(self) -> Any:
        cases = [
            ("?index=1&wait=10", b"Invalid wait time"),
            ("?index=1&wait=soon", b"Invalid wait time"),
            ("?index=-1", b"Invalid index"),
            ("?index=abc", b"Invalid index"),
            ("?stale&consistent", b"Cannot specify ?stale with ?consistent, conflicting semantics."),
        ]
        for query, message in cases:
            response, content = yield self.call("GET", "/v1/health/service/web" + query)
            self.assertEqual((response.code, content), (400, message), query)
        response, content = yield self.call("GET", "/v1/health/service/web?filter=Port%3D%3D80")
        self.assertEqual((response.code, content), (400, b'Failed to create boolean expression evaluator: Selector "Port" is not valid'))

    @defer.inlineCallbacks
    def test_other_endpoints(self) -> Any:
        self.server.register_service("dc1", "n1", "10.0.0.1", "web", 80, tags=["b", "a"])
        self.server.register_service("dc1", "n2", "10.0.0.2", "web", 80, tags=["c"])
        self.server.register_service("dc1", "n2", "10.0.0.2", "db", 5432)
        response, content = yield self.call("GET", "/v1/catalog/services")
        self.assertEqual(json.loads(content), {"db": [], "web": ["a", "b", "c"]})
        self.assertEqual(_index(response), self.server.index)
        response, content = yield self.call("GET", "/v1/agent/self")
        body = json.loads(content)
        self.assertEqual((body["Config"]["Datacenter"], body["Config"]["NodeName"]), ("dc1", "consul-test"))
        self.assertIn("Member", body)
        response, content = yield self.call("GET", "/v1/status/leader")
        self.assertEqual(json.loads(content), "127.0.0.1:8300")
        response, content = yield self.call("GET", "/v1/kv/thing")
        self.assertEqual(response.code, 404)
        self.assertTrue(_header(response, "Content-Type").startswith("text/plain"))  # type: ignore[union-attr]
        response, content = yield self.call("POST", "/v1/health/service/web")
        self.assertEqual((response.code, content), (405, b"method POST not allowed"))
        response, content = yield self.call("GET", "/v1/catalog/register")
        self.assertEqual(response.code, 405)

    @defer.inlineCallbacks
    def test_register_and_deregister_over_http(self) -> Any:
        register = {
            "Datacenter": "dc3",
            "Node": "n1",
            "Address": "10.0.3.1",
            "NodeMeta": {"rack": "r1"},
            "TaggedAddresses": {"lan": "10.0.3.1"},
            "Service": {"ID": "web-1", "Service": "web", "Tags": ["v2"], "Address": "10.0.3.9", "Port": 80,
                        "Weights": {"Passing": 10, "Warning": 1}, "Meta": {"m": "1"}},
            "Checks": [{"CheckID": "service:web-1", "ServiceID": "web-1", "Status": "passing", "Name": "alive"}],
        }
        response, content = yield self.call("PUT", "/v1/catalog/register", body=json.dumps(register).encode())
        self.assertEqual((response.code, content), (200, b"true"))
        response, content = yield self.call("GET", "/v1/health/service/web?dc=dc3")
        [entry] = json.loads(content)
        self.assertEqual(entry["Node"]["Meta"], {"rack": "r1"})
        self.assertEqual(entry["Service"]["Address"], "10.0.3.9")
        self.assertEqual(entry["Service"]["Weights"], {"Passing": 10, "Warning": 1})
        deregister = {"Datacenter": "dc3", "Node": "n1", "ServiceID": "web-1"}
        response, content = yield self.call("PUT", "/v1/catalog/deregister", body=json.dumps(deregister).encode())
        self.assertEqual((response.code, content), (200, b"true"))
        response, content = yield self.call("GET", "/v1/health/service/web?dc=dc3")
        self.assertEqual(content, b"[]")
        self.assertIn("n1", self.server._datacenters["dc3"].nodes)
        self.server.register_service("dc3", "n1", "10.0.3.1", "web", 80)
        self.server.register_service("dc3", "n1", "10.0.3.1", "api", 81)
        response, content = yield self.call(
            "PUT", "/v1/catalog/deregister", body=json.dumps({"Datacenter": "dc3", "Node": "n1"}).encode()
        )
        self.assertEqual(content, b"true")
        self.assertEqual(self.server._datacenters["dc3"].nodes, {})
        response, content = yield self.call("PUT", "/v1/catalog/register", body=b"{not json")
        self.assertEqual(response.code, 400)
        self.assertTrue(content.startswith(b"Request decode failed: "), content)
        response, content = yield self.call("PUT", "/v1/catalog/register", body=b'{"Address": "x"}')
        self.assertEqual((response.code, content), (500, b"Must provide node"))

    @defer.inlineCallbacks
    def test_acl_tokens(self) -> Any:
        server = self.make_server(acl_token={"secret", "other"})
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        response, content = yield self.call("GET", "/v1/health/service/web", server=server)
        self.assertEqual((response.code, content), (200, b"[]"))
        self.assertGreaterEqual(_index(response), 1)
        response, content = yield self.call(
            "GET", "/v1/health/service/web", server=server, headers={"X-Consul-Token": "wrong"}
        )
        self.assertEqual((response.code, content), (403, b"ACL not found"))
        response, content = yield self.call(
            "GET", "/v1/health/service/web", server=server, headers={"X-Consul-Token": "secret"}
        )
        self.assertEqual(len(json.loads(content)), 1)
        response, content = yield self.call(
            "GET", "/v1/health/service/web", server=server, headers={"Authorization": "Bearer other"}
        )
        self.assertEqual(len(json.loads(content)), 1)
        body = json.dumps({"Node": "n2", "Address": "10.0.0.2"}).encode()
        response, content = yield self.call("PUT", "/v1/catalog/register", server=server, body=body)
        self.assertEqual(response.code, 403)
        self.assertTrue(content.startswith(b"Permission denied"), content)
        response, content = yield self.call(
            "PUT", "/v1/catalog/register", server=server, body=body, headers={"X-Consul-Token": "secret"}
        )
        self.assertEqual((response.code, content), (200, b"true"))
        response, content = yield self.call("GET", "/v1/catalog/datacenters", server=server)
        self.assertEqual(response.code, 200)
        tokens = [r.headers.get("x-consul-token") for r in server.requests_for("/v1/health/service/web")]
        self.assertEqual(tokens, [None, "wrong", "secret", None])
        self.assertEqual(server.requests_seen[3].headers["authorization"], "Bearer other")

    @defer.inlineCallbacks
    def test_fail_and_recover(self) -> Any:
        self.server.fail()
        response, content = yield self.call("GET", "/v1/health/service/web")
        self.assertEqual((response.code, content), (500, b"No cluster leader"))
        self.server.fail(503, "rate limit exceeded")
        response, content = yield self.call("GET", "/v1/catalog/datacenters")
        self.assertEqual((response.code, content), (503, b"rate limit exceeded"))
        self.server.recover()
        response, content = yield self.call("GET", "/v1/health/service/web")
        self.assertEqual((response.code, content), (200, b"[]"))

    @defer.inlineCallbacks
    def test_address_and_a_blocking_query_cut_by_disconnect_all(self) -> Any:
        host, _, port = self.server.address.rpartition(":")
        self.assertEqual((host, self.server.url), ("127.0.0.1", "http://" + self.server.address))
        index = self.server.service_index("dc1", "web")
        pending = self.call("GET", f"/v1/health/service/web?index={index}&wait=1m")
        while self.server.blocked_count == 0:
            yield treq.get(self.server.url + "/v1/status/leader", pool=self.pool(), persistent=False)
        self.server.disconnect_all()
        yield self.assertFailure(pending, Exception)
        self.assertEqual(self.server.blocked_count, 0)


class BlockingTests(unittest.TestCase):
    """Blocking queries, with time driven by a Clock and requests through StubTreq."""

    def setUp(self) -> None:
        self.clock = Clock()

    def make(self, **kwargs: Any) -> Tuple[ConsulServer, StubTreq]:
        kwargs.setdefault("jitter", False)
        server = ConsulServer(self.clock, **kwargs)
        return server, StubTreq(server.resource)

    def result(self, stub: StubTreq, d: "defer.Deferred[Any]") -> Tuple[int, int, Any]:
        """(status, X-Consul-Index or 0, decoded body) of an answered request."""
        stub.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(stub.content(response))
        index = int((response.headers.getRawHeaders(b"X-Consul-Index") or [b"0"])[0])
        try:
            body = json.loads(content)
        except ValueError:
            body = content
        return response.code, index, body

    def pending(self, stub: StubTreq, d: "defer.Deferred[Any]") -> None:
        stub.flush()
        self.assertNoResult(d)

    def test_no_index_answers_at_once(self) -> None:
        server, stub = self.make()
        for query in ["", "?index=0", "?wait=10s"]:
            status, index, body = self.result(stub, stub.get(f"{STUB}/v1/health/service/web{query}"))
            self.assertEqual((status, index, body), (200, 1, []))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_blocks_until_the_service_changes(self) -> None:
        server, stub = self.make()
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        index = server.service_index("dc1", "web")
        d = stub.get(f"{STUB}/v1/health/service/web?index={index}&wait=10s")
        self.pending(stub, d)
        self.clock.advance(5)
        server.register_service("dc1", "n2", "10.0.0.2", "db", 5432)  # another service: no wake-up
        self.pending(stub, d)
        server.register_service("dc1", "n2", "10.0.0.2", "web", 80)
        status, new_index, body = self.result(stub, d)
        self.assertEqual(status, 200)
        self.assertGreater(new_index, index)
        self.assertEqual(len(body), 2)
        self.assertEqual((server.blocked_count, self.clock.getDelayedCalls()), (0, []))

    def test_wait_expiry_returns_the_same_index(self) -> None:
        server, stub = self.make()
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        index = server.service_index("dc1", "web")
        d = stub.get(f"{STUB}/v1/health/service/web?index={index}&wait=1m30s")
        self.clock.advance(89.9)
        self.pending(stub, d)
        self.clock.advance(0.1)
        status, same, body = self.result(stub, d)
        self.assertEqual((status, same, len(body)), (200, index, 1))

    def test_index_ahead_of_the_service_waits(self) -> None:
        server, stub = self.make()
        d = stub.get(f"{STUB}/v1/health/service/web?index=1000&wait=5s")
        self.pending(stub, d)
        self.clock.advance(5)
        self.assertEqual(self.result(stub, d)[:2], (200, 1))

    def test_default_and_clamped_waits(self) -> None:
        server, stub = self.make()
        default = stub.get(f"{STUB}/v1/health/service/web?index=1")
        clamped = stub.get(f"{STUB}/v1/health/service/web?index=1&wait=20m")
        self.clock.advance(299.9)
        self.pending(stub, default)
        self.clock.advance(0.1)
        self.assertEqual(self.result(stub, default)[0], 200)
        self.clock.advance(299.9)
        self.pending(stub, clamped)
        self.clock.advance(0.1)
        self.assertEqual(self.result(stub, clamped)[0], 200)

    def test_jitter_extends_the_wait_by_at_most_a_sixteenth(self) -> None:
        server, stub = self.make(jitter=True, rng=_FixedRandom(0.999))
        d = stub.get(f"{STUB}/v1/health/service/web?index=1&wait=16s")
        self.clock.advance(16.99)
        self.pending(stub, d)
        self.clock.advance(0.01)
        self.assertEqual(self.result(stub, d)[:2], (200, 1))

    @settings(max_examples=30, deadline=None)
    @given(seed=st.integers(0, 2**32), wait=st.sampled_from(["100ms", "1s", "10s", "5m", "10m", "30m"]))
    def test_jitter_is_bounded(self, seed: int, wait: str) -> None:
        clock = Clock()
        server = ConsulServer(clock, rng=random.Random(seed))
        seconds = min(parse_go_duration(wait), 600.0)
        request = DummyRequest([b""])
        request.method, request.uri = b"GET", f"/v1/health/service/web?index=1&wait={wait}".encode()
        self.assertEqual(server.resource.render(request), NOT_DONE_YET)
        [call] = clock.getDelayedCalls()
        self.assertGreaterEqual(call.getTime(), seconds)
        self.assertLessEqual(call.getTime(), seconds * 17 / 16)

    def test_reset_index_goes_backwards_and_answers_blockers(self) -> None:
        server, stub = self.make()
        for n in range(5):
            server.register_service("dc1", f"n{n}", "10.0.0.1", "web", 80)
        index = server.service_index("dc1", "web")
        d = stub.get(f"{STUB}/v1/health/service/web?index={index}&wait=10m")
        self.pending(stub, d)
        server.reset_index(to=2)
        status, after, body = self.result(stub, d)
        self.assertEqual((status, after, len(body)), (200, 2, 5))
        server.register_service("dc1", "n9", "10.0.0.1", "web", 80)
        self.assertEqual(server.service_index("dc1", "web"), 3)
        self.assertEqual(server.index, 3)

    def test_spurious_wakeup_brings_the_same_data_with_a_bigger_index(self) -> None:
        server, stub = self.make()
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        first = self.result(stub, stub.get(f"{STUB}/v1/health/service/web"))
        d = stub.get(f"{STUB}/v1/health/service/web?index={first[1]}&wait=1m")
        self.pending(stub, d)
        server.spurious_wakeup("dc1", "web")
        status, index, body = self.result(stub, d)
        self.assertGreater(index, first[1])
        self.assertEqual(body, first[2])

    def test_health_flip_wakes_a_passing_watcher(self) -> None:
        server, stub = self.make()
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        index = server.service_index("dc1", "web")
        d = stub.get(f"{STUB}/v1/health/service/web?passing&index={index}")
        self.pending(stub, d)
        server.set_check_status("dc1", "web", "critical")
        status, new_index, body = self.result(stub, d)
        self.assertEqual((status, body), (200, []))
        self.assertGreater(new_index, index)

    def test_catalog_services_blocks_on_the_dc_index(self) -> None:
        server, stub = self.make()
        d = stub.get(f"{STUB}/v1/catalog/services?index=1&wait=1m")
        self.pending(stub, d)
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80, tags=["x"])
        self.assertEqual(self.result(stub, d)[2], {"web": ["x"]})

    def test_removed_datacenter_answers_blockers_with_no_path(self) -> None:
        server, stub = self.make(agent_prefix=True)
        server.register_service("dc2", "n1", "10.0.0.1", "web", 80)
        index = server.service_index("dc2", "web")
        d = stub.get(f"{STUB}/v1/health/service/web?dc=dc2&index={index}")
        self.pending(stub, d)
        server.remove_datacenter("dc2")
        self.assertEqual(self.result(stub, d)[::2], (500, b"rpc error making call: No path to datacenter"))

    def test_stall_holds_requests_until_unstalled(self) -> None:
        server, stub = self.make()
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80)
        index = server.service_index("dc1", "web")
        blocked = stub.get(f"{STUB}/v1/health/service/web?index={index}&wait=10s")
        self.pending(stub, blocked)
        server.stall()
        plain = stub.get(f"{STUB}/v1/status/leader")
        self.clock.advance(60)  # the blocked query's wait runs out, but a stalled agent answers nothing
        self.pending(stub, plain)
        self.pending(stub, blocked)
        self.assertEqual(server.stalled_count, 2)
        self.assertEqual(len(server.requests_for("/v1/status/leader")), 1)
        server.unstall()
        self.assertEqual(self.result(stub, plain)[2], "127.0.0.1:8300")
        self.assertEqual(self.result(stub, blocked)[:2], (200, index))
        self.assertEqual(server.stalled_count, 0)

    def test_stall_with_drop_leaves_requests_hanging(self) -> None:
        server, stub = self.make()
        server.stall(drop=True)
        d = stub.get(f"{STUB}/v1/health/service/web")
        server.unstall()
        self.clock.advance(600)
        self.pending(stub, d)
        self.assertEqual(server.stalled_count, 1)
        self.assertEqual(self.result(stub, stub.get(f"{STUB}/v1/health/service/web"))[0], 200)
        server.disconnect_all()
        stub.flush()
        self.failureResultOf(d)
        self.assertEqual(server.stalled_count, 0)

    def test_failure_reaches_blocked_queries_when_they_wake(self) -> None:
        server, stub = self.make()
        d = stub.get(f"{STUB}/v1/health/service/web?index=1&wait=10s")
        self.pending(stub, d)
        server.fail()
        self.clock.advance(10)
        self.assertEqual(self.result(stub, d)[::2], (500, b"No cluster leader"))

    def test_client_going_away_cleans_up_its_wait(self) -> None:
        server, _ = self.make()
        request = DummyRequest([b""])
        request.method, request.uri = b"GET", b"/v1/health/service/web?index=1&wait=5m"
        self.assertEqual(server.resource.render(request), NOT_DONE_YET)
        self.assertEqual((server.blocked_count, len(self.clock.getDelayedCalls())), (1, 1))
        request.processingFailed(Failure(ConnectionDone("client went away")))
        self.assertEqual((server.blocked_count, self.clock.getDelayedCalls()), (0, []))
        server.register_service("dc1", "n1", "10.0.0.1", "web", 80)  # must not answer the dead request
        self.clock.advance(600)
        self.assertEqual(request.written, [])

    def test_record_limit_and_stats(self) -> None:
        server, stub = self.make(record_limit=2)
        for n in range(5):
            self.result(stub, stub.get(f"{STUB}/v1/health/service/web{n % 2}"))
        self.assertLessEqual(len(server.requests_seen), 4)
        self.assertEqual(server.requests_seen[-1].path, "/v1/health/service/web0")
        status, _, stats = self.result(stub, stub.get(f"{STUB}/_test/stats"))
        self.assertEqual(
            stats,
            {
                "requests": {"GET /v1/health/service/web0": 3, "GET /v1/health/service/web1": 2},
                "index": 1,
                "blocked": 0,
                # Through a stub, not a socket: no connection is counted.
                "connections": 0,
                "peak_connections": 0,
                "refused_connections": 0,
                "unknown_datacenter_requests": 0,
            },
        )

    def test_requests_are_timestamped_for_rate_checks(self) -> None:
        server, stub = self.make()
        for _ in range(3):
            self.result(stub, stub.get(f"{STUB}/v1/health/service/web"))
            self.clock.advance(30)
        times = [r.time for r in server.requests_seen]
        self.assertEqual(times, [0.0, 30.0, 60.0])
        self.assertEqual(sum(1 for t in times if t < 60), 2)
