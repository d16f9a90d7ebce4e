"""
Tests for L{restygate.discovery.consul.client.parse_health} and L{restygate.discovery.consul.client.parse_entry}:
turning C{/v1/health/service} bodies, as real agents send them, into
instances.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Dict, List

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from restygate.discovery.consul.answers import ConsulError, parse_entry, parse_health
from restygate.discovery.consul.checks import fingerprints, parse_check_states
from restygate.discovery.model import Instance

# The example answer in Consul's documentation for
# GET /v1/health/service/redis?passing (api-docs/health.mdx).
DOCS_REDIS = b"""
[
  {
    "Node": {
      "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
      "Node": "foobar",
      "Address": "10.1.10.12",
      "Datacenter": "dc1",
      "TaggedAddresses": {"lan": "10.1.10.12", "wan": "10.1.10.12"},
      "Meta": {"instance_type": "t2.medium"}
    },
    "Service": {
      "ID": "redis",
      "Service": "redis",
      "Tags": ["primary"],
      "Address": "10.1.10.12",
      "TaggedAddresses": {
        "lan": {"address": "10.1.10.12", "port": 8000},
        "wan": {"address": "198.18.1.2", "port": 80}
      },
      "Meta": {"redis_version": "4.0"},
      "Port": 8000,
      "Weights": {"Passing": 10, "Warning": 1},
      "Namespace": "default"
    },
    "Checks": [
      {"Node": "foobar", "CheckID": "service:redis", "Name": "Service 'redis' check",
       "Status": "passing", "Notes": "", "Output": "", "ServiceID": "redis",
       "ServiceName": "redis", "ServiceTags": ["primary"], "Namespace": "default"},
      {"Node": "foobar", "CheckID": "serfHealth", "Name": "Serf Health Status",
       "Status": "passing", "Notes": "", "Output": "", "ServiceID": "",
       "ServiceName": "", "ServiceTags": [], "Namespace": "default"}
    ]
  }
]
"""

REDIS = Instance(
    address="10.1.10.12",
    port=8000,
    tags=("primary",),
    meta=(("redis_version", "4.0"),),
    id="redis",
    node="foobar",
    weight=10,
    warning_weight=1,
)


def entry(
    node_address: Any = "10.0.0.1", address: Any = "", port: Any = 80, **service: Any
) -> Dict[str, Any]:
    """
    A minimal health entry; C{...} for a value leaves the key out.
    """
    node: Dict[str, Any] = {"Node": "n1", "Address": node_address, "TaggedAddresses": None, "Meta": None}
    svc: Dict[str, Any] = {"ID": "web-1", "Service": "web", "Tags": [], "Address": address, "Port": port}
    svc.update(service)
    for d in (node, svc):
        for key in [k for k, v in d.items() if v is ...]:
            del d[key]
    return {"Node": node, "Service": svc, "Checks": []}


def body(*entries: Any) -> bytes:
    return json.dumps(list(entries)).encode("utf-8")


class ParseEntryTests(SynchronousTestCase):
    def test_docs_fixture(self) -> None:
        self.assertEqual(parse_health(DOCS_REDIS), ((REDIS,), (), (REDIS,)))

    def test_service_address_used(self) -> None:
        self.assertEqual(parse_entry(entry(address="10.0.0.9")), Instance("10.0.0.9", 80, id="web-1", node="n1"))

    def test_empty_service_address(self) -> None:
        """
        C{Service.Address} C{""} means the node's address.
        """
        self.assertEqual(parse_entry(entry(address="")), Instance("10.0.0.1", 80, id="web-1", node="n1"))

    def test_missing_service_address(self) -> None:
        """
        Very old agents leave C{Service.Address} out: the node's address.
        """
        instance = parse_entry(entry(address=...))
        self.assertEqual(instance, Instance("10.0.0.1", 80, id="web-1", node="n1"))

    def test_null_service_address(self) -> None:
        instance = parse_entry(entry(address=None))
        self.assertIsNotNone(instance)
        assert instance is not None
        self.assertEqual(instance.address, "10.0.0.1")

    def test_nulls(self) -> None:
        """
        C{null} TaggedAddresses, Meta, Tags (a dead node's agent) are empty.
        """
        raw = entry(Tags=None, Meta=None, TaggedAddresses=None, Weights=None)
        self.assertEqual(parse_entry(raw), Instance("10.0.0.1", 80, tags=(), meta=(), id="web-1", node="n1"))

    def test_tags_and_meta(self) -> None:
        raw = entry(Tags=["b", "a", 7], Meta={"z": "1", "a": "2", "n": 3})
        instance = parse_entry(raw)
        assert instance is not None
        # Tags keep Consul's order; meta is sorted so equal maps compare equal.
        self.assertEqual(instance.tags, ("b", "a"))
        self.assertEqual(instance.meta, (("a", "2"), ("n", "3"), ("z", "1")))

    def test_ipv6(self) -> None:
        instance = parse_entry(entry(address="2001:db8::1", port=8443))
        assert instance is not None
        self.assertEqual(instance.address, "2001:db8::1")
        self.assertEqual(instance.netloc, "[2001:db8::1]:8443")

    def test_ipv6_node_address(self) -> None:
        instance = parse_entry(entry(node_address="fe80::1", address=""))
        assert instance is not None
        self.assertEqual(instance.netloc, "[fe80::1]:80")

    def test_bracketed_ipv6(self) -> None:
        instance = parse_entry(entry(address="[::1]"))
        assert instance is not None
        self.assertEqual((instance.address, instance.netloc), ("::1", "[::1]:80"))

    def test_hostname(self) -> None:
        instance = parse_entry(entry(address="web-1.node.dc1.consul"))
        assert instance is not None
        self.assertEqual(instance.netloc, "web-1.node.dc1.consul:80")

    def test_unusable(self) -> None:
        """
        Entries that name no address or no valid port are skipped.
        """
        for raw in [
            entry(port=...),
            entry(port=0),
            entry(port=None),
            entry(port="80"),
            entry(port=True),
            entry(port=65536),
            entry(port=-1),
            entry(port=80.5),
            entry(node_address="", address=""),
            entry(node_address=..., address=...),
            entry(node_address=None, address=None),
            entry(node_address=5, address=""),
            {"Node": None, "Service": {"Port": 80, "Address": ""}},
            {"Service": None, "Node": {"Address": "10.0.0.1"}},
            {},
            None,
            "entry",
            [1, 2],
        ]:
            self.assertIsNone(parse_entry(raw), raw)


class ParseHealthTests(SynchronousTestCase):
    def test_empty(self) -> None:
        self.assertEqual(parse_health(b"[]"), ((), (), ()))

    def test_null_body(self) -> None:
        self.assertEqual(parse_health(b"null"), ((), (), ()))

    def test_not_json(self) -> None:
        for raw in [b"", b"No cluster leader", b"[{", b"\xff\xfe\x00", b"<html>"]:
            error = self.assertRaises(ConsulError, parse_health, raw)
            self.assertIsNone(error.status)
            self.assertIn("unparsable", str(error))

    def test_not_an_array(self) -> None:
        for raw in [b"{}", b'"x"', b"1", b"true"]:
            self.assertRaises(ConsulError, parse_health, raw)

    def test_unusable_entries_skipped(self) -> None:
        """
        One bad entry does not cost the good ones.
        """
        parsed = parse_health(body(entry(port=0), entry(address="10.0.0.2"), None, entry(node_address="", address="")))
        self.assertEqual(parsed[2], (Instance("10.0.0.2", 80, id="web-1", node="n1"),))

    def test_sorted(self) -> None:
        parsed = parse_health(
            body(
                entry(address="10.0.0.3", port=80, ID="c"),
                entry(address="10.0.0.1", port=81, ID="b"),
                entry(address="10.0.0.1", port=80, ID="a"),
            )
        )
        self.assertEqual([(i.address, i.port, i.id) for i in parsed[2]], [("10.0.0.1", 80, "a"), ("10.0.0.1", 81, "b"), ("10.0.0.3", 80, "c")])

    def test_many(self) -> None:
        entries = [entry(address=f"10.0.{n // 256}.{n % 256}", ID=f"web-{n}") for n in range(500)]
        self.assertEqual(len(parse_health(body(*entries))[0]), 500)


_entries = st.lists(
    st.builds(
        lambda address, port, sid, node, tags, meta: {
            "Node": {"Node": node, "Address": "10.9.9.9"},
            "Service": {"ID": sid, "Address": address, "Port": port, "Tags": tags, "Meta": meta},
        },
        st.sampled_from(["", "10.0.0.1", "10.0.0.2", "::1"]),
        st.sampled_from([80, 81, 0]),
        st.sampled_from(["web", "web-2"]),
        st.sampled_from(["n1", "n2", "n3"]),
        st.lists(st.sampled_from(["a", "b"]), max_size=2),
        st.dictionaries(st.sampled_from(["k", "v"]), st.sampled_from(["1", "2"]), max_size=2),
    ),
    max_size=8,
)


class OrderingPropertyTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(_entries, st.randoms(use_true_random=False))
    def test_order_independent(self, entries: List[Dict[str, Any]], rng: Any) -> None:
        """
        The same members in any order parse to equal tuples, so an unchanged
        service never looks changed.
        """
        shuffled = copy.deepcopy(entries)
        rng.shuffle(shuffled)
        self.assertEqual(parse_health(body(*entries)), parse_health(body(*shuffled)))

    @settings(max_examples=50, deadline=None)
    @given(_entries)
    def test_every_usable_entry_kept(self, entries: List[Dict[str, Any]]) -> None:
        parsed = parse_health(body(*entries))[2]
        usable = [e for e in entries if e["Service"]["Port"]]
        self.assertEqual(len(parsed), len(usable))
        for instance in parsed:
            self.assertTrue(instance.address)
            self.assertTrue(0 < instance.port < 65536)


def checked(status: str, *more: str, **service: Any) -> Dict[str, Any]:
    """
    An entry whose service check has C{status}, plus node checks C{more}.
    """
    raw = entry(**service)
    raw["Checks"] = [{"CheckID": f"c{n}", "Status": s} for n, s in enumerate((status, *more))]
    return raw


class HealthAndWeightsTests(SynchronousTestCase):
    """
    Entries sorted by health the way Consul's C{?passing} and its DNS do,
    with C{Service.Weights} kept on each instance.
    """

    def test_by_worst_check(self) -> None:
        parsed = parse_health(body(
            checked("passing", "passing", address="10.0.0.1"),
            checked("passing", "warning", address="10.0.0.2"),
            checked("warning", "critical", address="10.0.0.3"),
            checked("maintenance", address="10.0.0.4"),
        ))
        passing, warning, registered = ([i.address for i in group] for group in parsed)
        self.assertEqual(passing, ["10.0.0.1"])
        self.assertEqual(warning, ["10.0.0.2"])
        self.assertEqual(registered, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])

    def test_weights(self) -> None:
        instance = parse_entry(entry(Weights={"Passing": 3, "Warning": 0}))
        assert instance is not None
        self.assertEqual((instance.weight, instance.warning_weight), (3, 0))

    def test_weights_absent_or_bad(self) -> None:
        """
        Old agents omit C{Weights}; a value Consul itself would refuse
        counts as the default, never as a weight that starves or floods.
        """
        for weights in [..., None, {}, {"Passing": "3", "Warning": True}, {"Passing": 0, "Warning": -2}]:
            instance = parse_entry(entry(Weights=weights))
            assert instance is not None
            self.assertEqual(instance.weight, 1, weights)
            self.assertIn(instance.warning_weight, (0, 1), weights)


class CheckStatesTests(SynchronousTestCase):
    """
    L{parse_check_states} and L{fingerprints}: the change feed's view per service.
    """

    def body(self, web_status: str = "passing", serf: str = "passing", modify: int = 5) -> bytes:
        checks = [
            {"Node": "n1", "CheckID": "serfHealth", "Status": serf, "ServiceName": "", "ModifyIndex": modify},
            {"Node": "n1", "CheckID": "service:web", "Status": web_status, "ServiceName": "Web",
             "ServiceTags": ["a"], "ModifyIndex": modify},
            {"Node": "n2", "CheckID": "service:db", "Status": "passing", "ServiceName": "db", "ModifyIndex": 3},
        ]
        return json.dumps(checks).encode()

    def prints(self, body: bytes) -> Any:
        states = parse_check_states(body)
        return fingerprints(states, states.services_on_node())

    def test_fingerprints(self) -> None:
        base = self.prints(self.body())
        self.assertEqual(sorted(base), ["db", "web"])
        self.assertEqual(base["web"][1], 5)
        # Indexes alone (output updates, an index reset) change no fingerprint.
        moved = self.prints(self.body(modify=9))
        self.assertEqual((moved["web"][0], moved["web"][1]), (base["web"][0], 9))
        # A status, of the service's check or of its node's, does.
        self.assertNotEqual(self.prints(self.body(web_status="critical"))["web"][0], base["web"][0])
        flipped = self.prints(self.body(serf="critical"))
        self.assertNotEqual(flipped["web"][0], base["web"][0])
        self.assertEqual(flipped["db"], base["db"])

    def test_not_passing_attributes_node_checks_by_the_full_answer(self) -> None:
        full = parse_check_states(self.body(serf="critical"))
        np = full.not_passing()
        self.assertEqual((sorted(np.per_service), sorted(np.per_node)), ([], ["n1"]))
        # The node's failing check counts for the service on it, not for the other node's.
        self.assertEqual(sorted(fingerprints(np, full.services_on_node())), ["web"])
