"""A Consul HTTP API test server for restygate's tests and benchmark.

No Consul binary can be installed where restygate is built, so this module serves the slice of Consul's
HTTP API that restygate depends on (shared/CONSUL-API.md): ``/v1/health/service`` with blocking queries,
``/v1/catalog/{datacenters,services,register,deregister}``, ``/v1/agent/self`` and ``/v1/status/leader``,
with Consul's status codes, plain-text error bodies, headers and ``null`` maps, so that restygate, tested
here, works unchanged against a real agent. `ConsulServer` also has knobs for the faults real Consul
shows (stalls, outages, index resets after a snapshot restore, spurious wake-ups, health flips, vanished
datacenters) and records every request it sees. Time comes from an injected ``IReactorTime`` so tests can
drive blocking queries with ``twisted.internet.task.Clock``. ``python -m restygate.testing.consul --help``
runs it as a stand-alone server for the benchmark and for manual use; it needs no restygate module.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sys
from dataclasses import dataclass, field, replace
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Set,
    Tuple,
    Union,
    cast,
)
from urllib.parse import parse_qsl, unquote

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
)
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

_log = Logger()

#: Consul's defaults for blocking queries: no ``wait`` means 5 minutes, and longer waits are clamped to 10.
DEFAULT_WAIT_SECONDS = 300.0
MAX_WAIT_SECONDS = 600.0
#: Consul adds up to ``wait / JITTER_FRACTION`` to every blocking wait (``structs.JitterFraction``).
JITTER_FRACTION = 16

HEALTH_STATUSES = ("passing", "warning", "critical")
DEFAULT_WEIGHTS: Mapping[str, int] = {"Passing": 1, "Warning": 1}

NO_PATH_TO_DATACENTER = "No path to datacenter"
AGENT_RPC_PREFIX = "rpc error making call: "
ACL_NOT_FOUND = "ACL not found"

_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"

# A JSON-shaped value as Python's json module produces and consumes it.
JSON = Any


class ConsulError(Exception):
    """An error Consul answers with a status code and a plain-text body.

    Raised by `ConsulServer.register` and `ConsulServer.deregister` for bodies Consul would refuse, with the
    status code and message Consul would send.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------------------------------------
# Go-compatible parsing of query parameters: clients are written against Go's rules, so accept and refuse
# exactly what Consul does.

_GO_DURATION_UNITS: Mapping[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek small letter mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Longer units first so that "ms" is not read as "m" followed by garbage.
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UINT = re.compile(r"[0-9]+")
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string (``10s``, ``1m30s``, ``100ms``) into seconds.

    Raises ``ValueError`` for anything Go would refuse, e.g. a bare number other than ``0``.
    """
    rest = text
    sign = 1.0
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    position = 0
    while position < len(rest):
        match = _GO_DURATION_PART.match(rest, position)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        position = match.end()
    return sign * total


def parse_go_bool(text: str) -> bool:
    """Parse a Go ``strconv.ParseBool`` string; raise ``ValueError`` for anything else."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r}")


class _Query:
    """The query string of one request, in order, with Go's ``url.Values`` look-up rules."""

    def __init__(self, pairs: Sequence[Tuple[str, str]]) -> None:
        self._pairs = list(pairs)

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self._pairs)

    def get(self, key: str) -> str:
        """The first value of ``key``, or ``""`` when absent (Go's ``Values.Get``)."""
        for k, v in self._pairs:
            if k == key:
                return v
        return ""

    def get_all(self, key: str) -> List[str]:
        return [v for k, v in self._pairs if k == key]


# ---------------------------------------------------------------------------------------------------------
# The catalog. Entities are immutable and replaced as a whole; equality ignores the raft indexes so that a
# re-registration with identical data is recognised as "no change" and does not wake blocking queries,
# as Consul's state store does.


@dataclass(frozen=True)
class _Node:
    name: str
    address: str
    node_id: str
    tagged_addresses: Optional[Dict[str, str]]
    meta: Optional[Dict[str, str]]
    create_index: int = field(default=0, compare=False)
    modify_index: int = field(default=0, compare=False)

    def to_json(self, datacenter: str) -> Dict[str, JSON]:
        return {
            "ID": self.node_id,
            "Node": self.name,
            "Address": self.address,
            "Datacenter": datacenter,
            "TaggedAddresses": self.tagged_addresses,
            "Meta": self.meta,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass(frozen=True)
class _Service:
    service_id: str
    name: str
    tags: Tuple[str, ...]
    address: str
    port: int
    meta: Optional[Dict[str, str]]
    weights: Dict[str, int]
    tagged_addresses: Optional[Dict[str, JSON]]
    create_index: int = field(default=0, compare=False)
    modify_index: int = field(default=0, compare=False)

    def to_json(self) -> Dict[str, JSON]:
        body: Dict[str, JSON] = {
            "ID": self.service_id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Address": self.address,
        }
        # Go's `omitempty`: the key is absent, not null, when no tagged addresses were registered.
        if self.tagged_addresses:
            body["TaggedAddresses"] = self.tagged_addresses
        body.update(
            {
                "Meta": self.meta,
                "Port": self.port,
                "Weights": self.weights,
                "EnableTagOverride": False,
                "CreateIndex": self.create_index,
                "ModifyIndex": self.modify_index,
            }
        )
        return body


@dataclass(frozen=True)
class _Check:
    node: str
    check_id: str
    name: str
    status: str
    service_id: str
    notes: str
    output: str
    create_index: int = field(default=0, compare=False)
    modify_index: int = field(default=0, compare=False)

    def to_json(self, service: Optional[_Service]) -> Dict[str, JSON]:
        return {
            "Node": self.node,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": service.name if service is not None else "",
            # Consul turns a nil tag list into [] on this endpoint, never null.
            "ServiceTags": list(service.tags) if service is not None else [],
            "Type": "",
            "Definition": {},
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass(frozen=True)
class _Registration:
    """A validated ``/v1/catalog/register`` body."""

    datacenter: str
    node: _Node
    skip_node_update: bool
    service: Optional[_Service]
    checks: Tuple[_Check, ...]


# A mutation of one datacenter: given the datacenter and the raft index it would commit at, it applies its
# change and returns the lower-cased names of the services whose health view changed, or None if nothing
# changed at all (then no index is spent and nobody is woken).
_Mutation = Callable[["_Datacenter", int], Optional[Set[str]]]


def _node_meta_matches(node: _Node, filters: Sequence[Tuple[str, str]]) -> bool:
    meta = node.meta or {}
    return all(key in meta and meta[key] == value for key, value in filters)


class _Datacenter:
    """One datacenter's catalog: nodes, the services on them, their checks, and per-service indexes."""

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index
        self.nodes: Dict[str, _Node] = {}
        self.services: Dict[str, Dict[str, _Service]] = {}  # node -> service ID -> service
        self.checks: Dict[str, Dict[str, _Check]] = {}  # node -> check ID -> check
        # Lower-cased service name -> index of its last change. Kept after the last instance goes away so
        # the index never moves backwards for a watcher (Consul keeps an extinction index for the same reason).
        self.service_index: Dict[str, int] = {}

    # -- queries --------------------------------------------------------------------------------------

    def index_of_service(self, service: str) -> int:
        # A never-seen service reports the datacenter's latest index: never 0, so clients can block on it.
        return max(1, self.service_index.get(service.lower(), self.index))

    def names_on_node(self, node: str) -> Set[str]:
        return {s.name.lower() for s in self.services.get(node, {}).values()}

    def health(
        self,
        service: str,
        tags: Sequence[str],
        passing_only: bool,
        node_meta: Sequence[Tuple[str, str]],
    ) -> List[JSON]:
        # Consul matches service names and tags case-insensitively.
        wanted = service.lower()
        wanted_tags = [t.lower() for t in tags]
        entries: List[JSON] = []
        for node_name in sorted(self.nodes):
            node = self.nodes[node_name]
            if not _node_meta_matches(node, node_meta):
                continue
            checks = self.checks.get(node_name, {})
            node_checks = [c for c in checks.values() if c.service_id == ""]
            services = self.services.get(node_name, {})
            for service_id in sorted(services):
                instance = services[service_id]
                if instance.name.lower() != wanted:
                    continue
                own_tags = {t.lower() for t in instance.tags}
                if any(t not in own_tags for t in wanted_tags):
                    continue
                own_checks = [c for c in checks.values() if c.service_id == service_id]
                all_checks = own_checks + node_checks
                # ?passing drops an instance when *any* check is not passing, node-level ones included.
                if passing_only and any(c.status != "passing" for c in all_checks):
                    continue
                entries.append(
                    {
                        "Node": node.to_json(self.name),
                        "Service": instance.to_json(),
                        "Checks": [c.to_json(instance) for c in own_checks]
                        + [c.to_json(None) for c in node_checks],
                    }
                )
        return entries

    def service_tags(self, node_meta: Sequence[Tuple[str, str]]) -> Dict[str, List[str]]:
        union: Dict[str, Set[str]] = {}
        for node_name, services in self.services.items():
            if not _node_meta_matches(self.nodes[node_name], node_meta):
                continue
            for instance in services.values():
                union.setdefault(instance.name, set()).update(instance.tags)
        return {name: sorted(union[name]) for name in sorted(union)}

    # -- mutations (called through ConsulServer._commit, which owns the raft index) --------------------

    def validate(self, registration: _Registration) -> None:
        """Refuse a registration before anything changes, so a bad one is all-or-nothing."""
        node = registration.node.name
        known = set(self.services.get(node, {}))
        if registration.service is not None:
            known.add(registration.service.service_id)
        for check in registration.checks:
            if check.service_id and check.service_id not in known:
                raise ConsulError(500, f"Missing service registration: {check.service_id!r} on node {node!r}")

    def apply_registration(self, registration: _Registration, index: int) -> Optional[Set[str]]:
        changed = False
        touched: Set[str] = set()
        node_name = registration.node.name
        old_node = self.nodes.get(node_name)
        if old_node is None or not registration.skip_node_update:
            if registration.node != old_node:
                created = old_node.create_index if old_node is not None else index
                self.nodes[node_name] = replace(registration.node, create_index=created, modify_index=index)
                self.services.setdefault(node_name, {})
                self.checks.setdefault(node_name, {})
                changed = True
                # Node address or meta changes show up in every health entry of the node.
                touched |= self.names_on_node(node_name)
        services = self.services.setdefault(node_name, {})
        if registration.service is not None:
            new = registration.service
            old = services.get(new.service_id)
            if new != old:
                created = old.create_index if old is not None else index
                services[new.service_id] = replace(new, create_index=created, modify_index=index)
                changed = True
                touched.add(new.name.lower())
                if old is not None:
                    touched.add(old.name.lower())
        checks = self.checks.setdefault(node_name, {})
        for check in registration.checks:
            old_check = checks.get(check.check_id)
            if check == old_check:
                continue
            created = old_check.create_index if old_check is not None else index
            checks[check.check_id] = replace(check, create_index=created, modify_index=index)
            changed = True
            touched |= self._affected_by_check(check)
            if old_check is not None:
                touched |= self._affected_by_check(old_check)
        return touched if changed else None

    def apply_deregistration(self, node: str, service_id: str, check_id: str) -> Optional[Set[str]]:
        if node not in self.nodes:
            # Consul answers `true` for a node it does not know: deregistration is idempotent.
            return None
        if not service_id and not check_id:
            touched = self.names_on_node(node)
            del self.nodes[node]
            self.services.pop(node, None)
            self.checks.pop(node, None)
            return touched
        changed = False
        touched = set()
        checks = self.checks.get(node, {})
        if service_id:
            gone = self.services.get(node, {}).pop(service_id, None)
            if gone is not None:
                changed = True
                touched.add(gone.name.lower())
                for key in [k for k, c in checks.items() if c.service_id == service_id]:
                    del checks[key]
        if check_id:
            gone_check = checks.get(check_id)
            if gone_check is not None:
                touched |= self._affected_by_check(gone_check)
                del checks[check_id]
                changed = True
        return touched if changed else None

    def set_status(self, match: str, status: str, node: Optional[str], index: int) -> Optional[Set[str]]:
        touched: Set[str] = set()
        found = changed = False
        for node_name, checks in self.checks.items():
            if node is not None and node_name != node:
                continue
            for check_id, check in list(checks.items()):
                if check.check_id != match and check.service_id != match:
                    continue
                found = True
                if check.status == status:
                    continue
                checks[check_id] = replace(check, status=status, modify_index=index)
                changed = True
                touched |= self._affected_by_check(check)
        if not found:
            where = f" on node {node!r}" if node is not None else ""
            raise KeyError(f"no check or service {match!r}{where} in datacenter {self.name!r}")
        return touched if changed else None

    def lower_indexes(self, to: int) -> None:
        self.index = to
        self.service_index = {name: to for name in self.service_index}

        def clamp(entity: Any) -> Any:
            return replace(
                entity, create_index=min(entity.create_index, to), modify_index=min(entity.modify_index, to)
            )

        self.nodes = {k: clamp(v) for k, v in self.nodes.items()}
        self.services = {n: {k: clamp(v) for k, v in s.items()} for n, s in self.services.items()}
        self.checks = {n: {k: clamp(v) for k, v in c.items()} for n, c in self.checks.items()}

    def _affected_by_check(self, check: _Check) -> Set[str]:
        if not check.service_id:
            # A node-level check (serfHealth) is part of every health entry on its node.
            return self.names_on_node(check.node)
        instance = self.services.get(check.node, {}).get(check.service_id)
        return {instance.name.lower()} if instance is not None else set()


# ---------------------------------------------------------------------------------------------------------
# Decoding of register/deregister bodies. Go's encoding/json matches field names case-insensitively and
# refuses values of the wrong type with a 400, and the server refuses semantic errors with a 500.


def _decode_error(message: str) -> ConsulError:
    return ConsulError(400, f"Request decode failed: {message}")


def _field(body: Mapping[str, JSON], name: str) -> JSON:
    if name in body:
        return body[name]
    lowered = name.lower()
    for key, value in body.items():
        if key.lower() == lowered:
            return value
    return None


def _str_field(body: Mapping[str, JSON], name: str, where: str) -> str:
    value = _field(body, name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _decode_error(f"{where}{name}: expected a string, got {type(value).__name__}")
    return value


def _int_field(body: Mapping[str, JSON], name: str, where: str) -> int:
    value = _field(body, name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _decode_error(f"{where}{name}: expected an integer, got {type(value).__name__}")
    return value


def _bool_field(body: Mapping[str, JSON], name: str, where: str) -> bool:
    value = _field(body, name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _decode_error(f"{where}{name}: expected a boolean, got {type(value).__name__}")
    return value


def _object_field(body: Mapping[str, JSON], name: str, where: str) -> Optional[Dict[str, JSON]]:
    value = _field(body, name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _decode_error(f"{where}{name}: expected an object, got {type(value).__name__}")
    return value


def _str_map_field(body: Mapping[str, JSON], name: str, where: str) -> Optional[Dict[str, str]]:
    value = _object_field(body, name, where)
    if value is None:
        return None
    if not all(isinstance(v, str) for v in value.values()):
        raise _decode_error(f"{where}{name}: expected an object of strings")
    return dict(value)


def _str_list_field(body: Mapping[str, JSON], name: str, where: str) -> Tuple[str, ...]:
    value = _field(body, name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _decode_error(f"{where}{name}: expected an array of strings")
    return tuple(value)


def _decode_json_object(raw: bytes) -> Dict[str, JSON]:
    if not raw.strip():
        raise _decode_error("EOF")
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise _decode_error(str(e)) from None
    if not isinstance(body, dict):
        raise _decode_error(f"cannot unmarshal {type(body).__name__} into an object")
    return body


def _decode_service(body: Mapping[str, JSON]) -> _Service:
    where = "Service."
    name = _str_field(body, "Service", where)
    if not name:
        raise ConsulError(500, "Must provide service name with ID")
    weights_body = _object_field(body, "Weights", where)
    weights = dict(DEFAULT_WEIGHTS)
    if weights_body is not None:
        weights = {
            "Passing": _int_field(weights_body, "Passing", "Service.Weights."),
            "Warning": _int_field(weights_body, "Warning", "Service.Weights."),
        }
    port = _int_field(body, "Port", where)
    if not 0 <= port <= 65535:
        raise ConsulError(500, f"Invalid service port {port}")
    return _Service(
        # Consul uses the service name as its ID when none is given.
        service_id=_str_field(body, "ID", where) or name,
        name=name,
        tags=_str_list_field(body, "Tags", where),
        address=_str_field(body, "Address", where),
        port=port,
        meta=_str_map_field(body, "Meta", where),
        weights=weights,
        tagged_addresses=_object_field(body, "TaggedAddresses", where),
    )


def _decode_check(body: Mapping[str, JSON], node: str) -> _Check:
    where = "Check."
    check_node = _str_field(body, "Node", where) or node
    if check_node != node:
        raise ConsulError(500, f"Check node {check_node!r} does not match the registered node {node!r}")
    name = _str_field(body, "Name", where)
    # Consul derives a missing check ID from the name, and a missing status means critical.
    check_id = _str_field(body, "CheckID", where) or name
    if not check_id:
        raise ConsulError(500, "Missing check ID")
    status = _str_field(body, "Status", where) or "critical"
    if status not in HEALTH_STATUSES:
        raise ConsulError(500, f"Invalid Health Check Status '{status}'")
    return _Check(
        node=node,
        check_id=check_id,
        name=name,
        status=status,
        service_id=_str_field(body, "ServiceID", where),
        notes=_str_field(body, "Notes", where),
        output=_str_field(body, "Output", where),
    )


def _decode_registration(body: Mapping[str, JSON], default_datacenter: str) -> _Registration:
    node = _str_field(body, "Node", "")
    address = _str_field(body, "Address", "")
    skip_node_update = _bool_field(body, "SkipNodeUpdate", "")
    if not node:
        raise ConsulError(500, "Must provide node")
    if not address and not skip_node_update:
        raise ConsulError(500, "Must provide address if SkipNodeUpdate is not set")
    service_body = _object_field(body, "Service", "")
    check_bodies: List[Dict[str, JSON]] = []
    single = _object_field(body, "Check", "")
    if single is not None:
        check_bodies.append(single)
    many = _field(body, "Checks")
    if many is not None:
        if not isinstance(many, list) or not all(isinstance(c, dict) for c in many):
            raise _decode_error("Checks: expected an array of objects")
        check_bodies.extend(many)
    return _Registration(
        datacenter=_str_field(body, "Datacenter", "") or default_datacenter,
        node=_Node(
            name=node,
            address=address,
            node_id=_str_field(body, "ID", ""),
            # Absent maps are stored as None so the health body shows `null`, as Consul does for them.
            tagged_addresses=_str_map_field(body, "TaggedAddresses", ""),
            meta=_str_map_field(body, "NodeMeta", ""),
        ),
        skip_node_update=skip_node_update,
        service=_decode_service(service_body) if service_body is not None else None,
        checks=tuple(_decode_check(c, node) for c in check_bodies),
    )


# ---------------------------------------------------------------------------------------------------------
# HTTP plumbing.


def _node_write_denied(body: Mapping[str, JSON]) -> ConsulError:
    # Consul >= 1.11 wording; older agents say just "Permission denied".
    node = json.dumps(_field(body, "Node"))
    return ConsulError(403, f"Permission denied: anonymous token lacks permission 'node:write' on {node}")


@dataclass(frozen=True)
class SeenRequest:
    """One request as the server received it, for tests to assert on.

    ``args`` keeps the query string's order and repeats (``[("tag", "a"), ("tag", "b")]``); ``headers`` maps
    lower-cased names to values (repeated headers joined with ``", "``); ``time`` is the reactor's clock.
    """

    method: str
    path: str
    args: List[Tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes
    time: float

    def arg(self, key: str) -> Optional[str]:
        """The first value of query argument ``key``, or None when absent."""
        for k, v in self.args:
            if k == key:
                return v
        return None


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: bytes = _TEXT
    headers: Tuple[Tuple[str, str], ...] = ()


def _text_reply(status: int, message: str, headers: Tuple[Tuple[str, str], ...] = ()) -> _Reply:
    return _Reply(status, message.encode("utf-8"), _TEXT, headers)


def _json_reply(value: JSON, headers: Tuple[Tuple[str, str], ...] = ()) -> _Reply:
    # Compact like Go's encoder; Consul pretty-prints only for ?pretty.
    return _Reply(200, json.dumps(value, separators=(",", ":")).encode("utf-8"), _JSON, headers)


@dataclass
class _BlockingQuery:
    """A read that may block: answer at once unless ``min_index`` > 0 and the data has not moved past it."""

    datacenter: str
    min_index: int
    wait: float
    current_index: Callable[[], int]
    answer: Callable[[], _Reply]


_Outcome = Union[_Reply, _BlockingQuery]


class _Response(Protocol):
    """The part of ``twisted.web.server.Request`` used to answer, with the types Twisted leaves out."""

    def setResponseCode(self, code: int, message: Optional[bytes] = None) -> None: ...

    def setHeader(self, name: bytes, value: bytes) -> None: ...

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


class _Exchange:
    """One HTTP request in flight, tracked until it is answered or its client goes away."""

    def __init__(self, request: Request, seen: SeenRequest) -> None:
        self.request = request
        self.seen = seen
        self.query = _Query(seen.args)
        self.done = False
        self.waiter: Optional[_Waiter] = None


class _Waiter:
    """A blocking query parked until its index moves or its wait runs out."""

    def __init__(self, exchange: _Exchange, query: _BlockingQuery) -> None:
        self.exchange = exchange
        self.query = query
        self.timer: Optional[IDelayedCall] = None


class _QuietSite(Site):
    """A Site without the access log: a benchmark's request rate would flood stdout."""

    def log(self, request: http.Request) -> None:
        pass


class ConsulApiResource(Resource):
    """The twisted.web face of a `ConsulServer`: every path goes to the server's dispatcher."""

    isLeaf = True

    def __init__(self, server: ConsulServer) -> None:
        super().__init__()
        self._server = server

    def render(self, request: Request) -> int:
        self._server._handle(request)
        return NOT_DONE_YET


class ConsulServer:
    """An in-process Consul agent speaking Consul's HTTP API, with fault knobs.

    State: datacenters with nodes, services and checks, one global raft-like index that every change
    bumps, and per (datacenter, service) the index of its last change (what ``X-Consul-Index`` reports
    on ``/v1/health/service``). The server's own datacenter exists from the start.

    :param reactor: the clock used for blocking-query timeouts (``twisted.internet.task.Clock`` in tests).
    :param datacenter: the agent's own datacenter, used when a request has no ``?dc=``.
    :param node_name: the agent's node name, reported by ``/v1/agent/self``.
    :param acl_token: a token or tokens that grant full access; None disables ACLs.
    :param agent_prefix: answer "No path to datacenter" the way a client agent does, with its RPC prefix.
    :param jitter: add Consul's random extra of up to wait/16 to blocking waits.
    :param rng: the source of that jitter.
    :param record_limit: keep only this many of the latest `requests_seen` (None: all; 0: none), so a
        long benchmark run does not grow without bound. `request_counts` is kept regardless.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        datacenter: str = "dc1",
        *,
        node_name: str = "consul-test",
        acl_token: Union[str, Iterable[str], None] = None,
        agent_prefix: bool = False,
        jitter: bool = True,
        rng: Optional[random.Random] = None,
        record_limit: Optional[int] = None,
    ) -> None:
        self._reactor = reactor
        self.datacenter = datacenter
        self.node_name = node_name
        self.acl_tokens: Optional[FrozenSet[str]] = (
            None if acl_token is None else frozenset([acl_token] if isinstance(acl_token, str) else acl_token)
        )
        self.agent_prefix = agent_prefix
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self.requests_seen: List[SeenRequest] = []
        #: "METHOD /path" -> how many such requests arrived; also served as JSON at GET /_test/stats.
        self.request_counts: Dict[str, int] = {}
        self._record_limit = record_limit
        self.resource = ConsulApiResource(self)

        self._index = 1
        self._datacenters: Dict[str, _Datacenter] = {datacenter: _Datacenter(datacenter, self._index)}

        self._open: Set[_Exchange] = set()
        self._waiters: Set[_Waiter] = set()
        self._stalled = False
        self._drop_stalled = False
        # Insertion-ordered so that unstall() answers in arrival order.
        self._parked: Dict[_Exchange, Callable[[], _Outcome]] = {}
        self._hung: Set[_Exchange] = set()
        self._failure: Optional[_Reply] = None
        self._port: Optional[IListeningPort] = None

        self._routes: Dict[str, Tuple[Tuple[str, ...], Callable[[_Exchange], _Outcome]]] = {
            "/v1/catalog/datacenters": (("GET",), self._catalog_datacenters),
            "/v1/catalog/services": (("GET",), self._catalog_services),
            "/v1/catalog/register": (("PUT",), self._catalog_register),
            "/v1/catalog/deregister": (("PUT",), self._catalog_deregister),
            "/v1/agent/self": (("GET",), self._agent_self),
            "/v1/status/leader": (("GET",), self._status_leader),
        }

    # -- serving --------------------------------------------------------------------------------------

    def site(self, access_log: bool = False) -> Site:
        """A `Site` serving this server's API, writing an access log line per request if ``access_log``."""
        site_class = Site if access_log else _QuietSite
        site = site_class(self.resource)
        site.displayTracebacks = False
        site.noisy = False
        return site

    def listen(
        self, reactor: IReactorTCP, port: int = 0, interface: str = "127.0.0.1", *, access_log: bool = False
    ) -> IListeningPort:
        """Listen on TCP ``interface:port`` (0 picks a free port) and return the listening port.

        The caller owns the port: call ``stopListening()`` on it when done.
        """
        site = self.site(access_log)
        # IReactorTCP wants ServerFactory[P]; Site's unannotated HTTPFactory base does not say which P.
        self._port = reactor.listenTCP(port, site, interface=interface)  # type: ignore[arg-type]
        return self._port

    @property
    def address(self) -> str:
        """``HOST:PORT`` of the last `listen`, in the form ``CONSUL_HTTP_ADDR`` takes (``127.0.0.1:8500``)."""
        if self._port is None:
            raise RuntimeError("ConsulServer.listen() has not been called")
        host = self._port.getHost()
        if isinstance(host, IPv6Address):
            return f"[{host.host}]:{host.port}"
        if isinstance(host, IPv4Address):
            return f"{host.host}:{host.port}"
        raise RuntimeError(f"not listening on TCP: {host!r}")

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the last `listen`."""
        return f"http://{self.address}"

    @property
    def index(self) -> int:
        """The current global raft index."""
        return self._index

    def service_index(self, dc: str, service: str) -> int:
        """What ``X-Consul-Index`` would say now for ``/v1/health/service/<service>?dc=<dc>``."""
        return self._datacenters[dc].index_of_service(service)

    @property
    def datacenters(self) -> List[str]:
        """The known datacenters, sorted, as ``/v1/catalog/datacenters`` lists them."""
        return sorted(self._datacenters)

    @property
    def blocked_count(self) -> int:
        """How many blocking queries are waiting for a change or for their wait to run out."""
        return len(self._waiters)

    @property
    def stalled_count(self) -> int:
        """How many requests are held by `stall` (parked or, after ``drop=True``, hung for good)."""
        return len(self._parked) + len(self._hung)

    def requests_for(self, path_prefix: str) -> List[SeenRequest]:
        """The recorded requests whose path starts with ``path_prefix``."""
        return [r for r in self.requests_seen if r.path.startswith(path_prefix)]

    # -- catalog changes ------------------------------------------------------------------------------

    def register(self, body: Mapping[str, JSON]) -> None:
        """Apply a ``PUT /v1/catalog/register`` body; the HTTP endpoint and `register_service` land here.

        A new ``Datacenter`` is created (a real cluster would need a WAN join first). Raises `ConsulError`
        with Consul's status and message for a body Consul would refuse; nothing changes then.
        """
        registration = _decode_registration(body, self.datacenter)
        known = self._datacenters.get(registration.datacenter)
        # A datacenter about to be created is empty: validate against an empty one.
        (known if known is not None else _Datacenter(registration.datacenter, 0)).validate(registration)
        self._commit(
            registration.datacenter,
            lambda dc, index: dc.apply_registration(registration, index),
            create=True,
        )

    def deregister(self, body: Mapping[str, JSON]) -> None:
        """Apply a ``PUT /v1/catalog/deregister`` body (``Datacenter, Node, ServiceID?, CheckID?``).

        Without ``ServiceID`` and ``CheckID`` the node goes with all its services and checks.
        """
        node = _str_field(body, "Node", "")
        service_id = _str_field(body, "ServiceID", "")
        check_id = _str_field(body, "CheckID", "")
        if not node:
            raise ConsulError(500, "Must provide node")
        dc = _str_field(body, "Datacenter", "") or self.datacenter
        self._commit(dc, lambda d, index: d.apply_deregistration(node, service_id, check_id))

    def register_service(
        self,
        dc: str,
        node: str,
        address: str,
        service: str,
        port: int,
        service_id: Optional[str] = None,
        tags: Iterable[str] = (),
        service_address: str = "",
        meta: Optional[Mapping[str, str]] = None,
        status: str = "passing",
        *,
        node_meta: Optional[Mapping[str, str]] = None,
        tagged_addresses: Optional[Mapping[str, str]] = None,
        weights: Optional[Mapping[str, int]] = None,
    ) -> str:
        """Register one service instance with a ``service:<ID>`` check in ``status``; return its ID.

        Builds a ``/v1/catalog/register`` body and applies it with `register`. A new node also gets a
        passing ``serfHealth`` check, as an agent's node has; an existing node keeps its checks and, unless
        the address or ``node_meta``/``tagged_addresses`` are given anew, its node data
        (``SkipNodeUpdate``). ``meta``, ``node_meta`` and ``tagged_addresses`` left as None show as ``null``.
        """
        sid = service_id if service_id is not None else service
        service_body: Dict[str, JSON] = {
            "ID": sid,
            "Service": service,
            "Tags": list(tags),
            "Address": service_address,
            "Port": port,
        }
        if meta is not None:
            service_body["Meta"] = dict(meta)
        if weights is not None:
            service_body["Weights"] = dict(weights)
        checks: List[JSON] = []
        known = self._datacenters.get(dc)
        existing = known.nodes.get(node) if known is not None else None
        node_checks = known.checks.get(node, {}) if known is not None else {}
        if "serfHealth" not in node_checks:
            checks.append(
                {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing", "ServiceID": ""}
            )
        checks.append(
            {"CheckID": f"service:{sid}", "Name": f"Service '{service}' check", "Status": status, "ServiceID": sid}
        )
        body: Dict[str, JSON] = {
            "Datacenter": dc,
            "Node": node,
            "Address": address,
            "Service": service_body,
            "Checks": checks,
        }
        if node_meta is not None:
            body["NodeMeta"] = dict(node_meta)
        if tagged_addresses is not None:
            body["TaggedAddresses"] = dict(tagged_addresses)
        if (
            existing is not None
            and existing.address == address
            and node_meta is None
            and tagged_addresses is None
        ):
            body["SkipNodeUpdate"] = True
        self.register(body)
        return sid

    def add_datacenter(self, dc: str) -> None:
        """Create an empty datacenter (as a WAN join would); a no-op if it exists."""
        self._commit(dc, lambda d, index: None, create=True)

    def remove_datacenter(self, dc: str) -> None:
        """Forget a datacenter: its queries then fail with 500 "No path to datacenter".

        Blocking queries on it are answered at once, with that error. Raises ``KeyError`` if unknown.
        """
        del self._datacenters[dc]
        _log.info("Consul test server: datacenter {dc} removed", dc=dc)
        self._wake_waiters(dc)

    # -- fault knobs ----------------------------------------------------------------------------------

    def set_check_status(
        self, dc: str, service_id_or_check_id: str, status: str, node: Optional[str] = None
    ) -> None:
        """Flip the health of matching checks (by CheckID, or every check of a ServiceID) and wake blockers.

        Matches on every node of ``dc`` unless ``node`` is given (``serfHealth`` exists on every node).
        Raises ``KeyError`` when nothing matches, ``ValueError`` for an unknown status.
        """
        if status not in HEALTH_STATUSES:
            raise ValueError(f"status must be one of {HEALTH_STATUSES}, not {status!r}")
        self._commit(dc, lambda d, index: d.set_status(service_id_or_check_id, status, node, index))

    def spurious_wakeup(self, dc: str, service: str) -> None:
        """Bump a service's index without changing its data, waking its blocking queries.

        Real Consul does this when an unrelated write touches a shared index; clients must cope.
        """
        self._commit(dc, lambda d, index: {service.lower()})

    def reset_index(self, to: int = 1) -> None:
        """Move every index back to ``to``, as after a snapshot restore, and answer all blocking queries.

        Later changes count on from ``to``. Clients see ``X-Consul-Index`` go backwards and must reset.
        """
        if to < 1:
            raise ValueError("Consul's index is never below 1")
        self._index = to
        for dc in self._datacenters.values():
            dc.lower_indexes(to)
        _log.info("Consul test server: raft index reset to {to}", to=to)
        for waiter in list(self._waiters):
            self._wake(waiter)

    def stall(self, drop: bool = False) -> None:
        """Accept requests but answer none, like an agent wedged on a lost leader or a full disk.

        Blocking queries that would be answered meanwhile are held too. `unstall` answers everything held
        unless ``drop`` is true: then what arrives during the stall is left hanging until its client goes
        away (or `disconnect_all`).
        """
        self._stalled = True
        self._drop_stalled = drop
        _log.info("Consul test server: stalled (drop={drop})", drop=drop)

    def unstall(self) -> None:
        """End a `stall`: answer the held requests now with current data, unless the stall dropped them."""
        self._stalled = False
        held, self._parked = self._parked, {}
        _log.info("Consul test server: unstalled, {count} held requests", count=len(held))
        if self._drop_stalled:
            self._hung.update(held)
            return
        for exchange, produce in held.items():
            self._answer(exchange, produce)

    def fail(self, status: int = 500, body: str = "No cluster leader") -> None:
        """Answer every API request with ``status`` and plain-text ``body`` until `recover`.

        Blocking queries already waiting get the error when they wake (change or wait expiry).
        """
        self._failure = _text_reply(status, body)
        _log.info("Consul test server: failing with {status} {body!r}", status=status, body=body)

    def recover(self) -> None:
        """End a `fail`."""
        self._failure = None
        _log.info("Consul test server: recovered")

    def disconnect_all(self) -> None:
        """Drop the connection of every request still open (blocked, stalled or hung), as a crash would.

        Also the way to leave no pending timers behind at the end of a test.
        """
        for exchange in list(self._open):
            self._forget(exchange)
            transport = getattr(getattr(exchange.request, "channel", None), "transport", None)
            if transport is not None:
                transport.abortConnection()

    # -- index bookkeeping ----------------------------------------------------------------------------

    def _commit(self, dc_name: str, mutate: _Mutation, create: bool = False) -> None:
        """Apply one write at the next raft index.

        The index is spent, and blocking queries woken, only if the write changed something.
        """
        dc = self._datacenters.get(dc_name)
        created = dc is None
        if dc is None:
            if not create:
                raise ConsulError(500, self._no_path_message())
            dc = _Datacenter(dc_name, 0)
        index = self._index + 1
        touched = mutate(dc, index)
        if touched is None and not created:
            return
        self._index = index
        dc.index = index
        for name in touched or ():
            dc.service_index[name] = index
        if created:
            self._datacenters[dc_name] = dc
        _log.debug(
            "Consul test server: index {index} in {dc} touches {services}",
            index=index,
            dc=dc_name,
            services=sorted(touched or ()),
        )
        self._wake_waiters(dc_name)

    # -- request handling -----------------------------------------------------------------------------

    def _handle(self, request: Request) -> None:
        seen = self._describe(request)
        if seen.path == "/_test/stats":
            # The test server's own control plane, for a benchmark running it in another process: not
            # Consul's API, so it is neither recorded nor subject to stall, failure or ACLs.
            stats = {"requests": self.request_counts, "index": self._index, "blocked": self.blocked_count}
            self._send(_Exchange(request, seen), _json_reply(stats))
            return
        self._record(seen)
        exchange = _Exchange(request, seen)
        self._open.add(exchange)
        request.notifyFinish().addErrback(self._client_gone, exchange)
        self._answer(exchange, lambda: self._route(exchange))

    def _record(self, seen: SeenRequest) -> None:
        key = f"{seen.method} {seen.path}"
        self.request_counts[key] = self.request_counts.get(key, 0) + 1
        limit = self._record_limit
        if limit is None or limit > 0:
            self.requests_seen.append(seen)
            # Trim in batches so that recording stays O(1) amortised.
            if limit is not None and len(self.requests_seen) > 2 * limit:
                del self.requests_seen[:-limit]

    def _describe(self, request: Request) -> SeenRequest:
        uri = request.uri.decode("utf-8", "replace")
        path, _, query = uri.partition("?")
        headers: Dict[str, str] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers[name.decode("latin-1").lower()] = ", ".join(v.decode("latin-1") for v in values)
        content = getattr(request, "content", None)
        body = b""
        if content is not None:
            content.seek(0)
            body = content.read()
        seen = SeenRequest(
            method=request.method.decode("ascii", "replace"),
            path=unquote(path),
            args=parse_qsl(query, keep_blank_values=True),
            headers=headers,
            body=body,
            time=self._reactor.seconds(),
        )
        return seen

    def _client_gone(self, reason: Failure, exchange: _Exchange) -> None:
        # The client hung up before we answered: stop tracking it so no timer or wake-up touches it again.
        self._forget(exchange)

    def _forget(self, exchange: _Exchange) -> None:
        exchange.done = True
        self._open.discard(exchange)
        self._parked.pop(exchange, None)
        self._hung.discard(exchange)
        self._stop_waiting(exchange)

    def _stop_waiting(self, exchange: _Exchange) -> None:
        waiter = exchange.waiter
        if waiter is not None:
            exchange.waiter = None
            self._waiters.discard(waiter)
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()

    def _answer(self, exchange: _Exchange, produce: Callable[[], _Outcome]) -> None:
        """Answer now, or hold the request: the single place stall, failure and blocking are decided."""
        if exchange.done:
            return
        if self._stalled:
            self._parked[exchange] = produce
            return
        if self._failure is not None:
            self._send(exchange, self._failure)
            return
        outcome = produce()
        if isinstance(outcome, _BlockingQuery):
            if outcome.min_index > 0 and not self._should_wake(outcome):
                self._block(exchange, outcome)
                return
            outcome = outcome.answer()
        self._send(exchange, outcome)

    def _send(self, exchange: _Exchange, reply: _Reply) -> None:
        self._forget(exchange)
        # Request's write methods are unannotated in Twisted; _Response states what we rely on.
        request = cast(_Response, exchange.request)
        request.setResponseCode(reply.status)
        request.setHeader(b"Content-Type", reply.content_type)
        # Go sends small bodies with a length rather than chunked.
        request.setHeader(b"Content-Length", str(len(reply.body)).encode("ascii"))
        for name, value in reply.headers:
            request.setHeader(name.encode("ascii"), value.encode("utf-8"))
        request.write(reply.body)
        request.finish()

    def _block(self, exchange: _Exchange, query: _BlockingQuery) -> None:
        wait = query.wait
        if self.jitter:
            wait += self._rng.random() * wait / JITTER_FRACTION
        waiter = _Waiter(exchange, query)
        exchange.waiter = waiter
        self._waiters.add(waiter)
        waiter.timer = self._reactor.callLater(wait, self._wake, waiter)

    def _should_wake(self, query: _BlockingQuery) -> bool:
        return query.datacenter not in self._datacenters or query.current_index() > query.min_index

    def _wake_waiters(self, dc: str) -> None:
        for waiter in list(self._waiters):
            if waiter.query.datacenter == dc and self._should_wake(waiter.query):
                self._wake(waiter)

    def _wake(self, waiter: _Waiter) -> None:
        if waiter not in self._waiters:
            return
        self._stop_waiting(waiter.exchange)
        self._answer(waiter.exchange, waiter.query.answer)

    def _route(self, exchange: _Exchange) -> _Outcome:
        path = exchange.seen.path
        route: Optional[Tuple[Tuple[str, ...], Callable[[_Exchange], _Outcome]]]
        if path.startswith("/v1/health/service/"):
            route = (("GET",), self._health_service)
        else:
            route = self._routes.get(path)
        if route is None:
            # Go's http.NotFound.
            return _text_reply(404, "404 page not found\n")
        methods, handler = route
        allow = (("Allow", ",".join(("OPTIONS",) + methods)),)
        if exchange.seen.method == "OPTIONS":
            return _Reply(200, b"", _TEXT, allow)
        if exchange.seen.method not in methods:
            return _text_reply(405, f"method {exchange.seen.method} not allowed", allow)
        try:
            return handler(exchange)
        except ConsulError as e:
            return _text_reply(e.status, e.message)

    # -- request parsing helpers ----------------------------------------------------------------------

    def _no_path_message(self) -> str:
        return (AGENT_RPC_PREFIX if self.agent_prefix else "") + NO_PATH_TO_DATACENTER

    def _dc_of(self, exchange: _Exchange) -> str:
        return exchange.query.get("dc") or self.datacenter

    def _token_of(self, exchange: _Exchange) -> str:
        # Consul's order: the deprecated ?token=, then X-Consul-Token, then Authorization: Bearer.
        token = exchange.query.get("token")
        if token:
            return token
        token = exchange.seen.headers.get("x-consul-token", "")
        if token:
            return token
        scheme, _, value = exchange.seen.headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""

    def _authorized(self, exchange: _Exchange) -> bool:
        """True for full access, False for the anonymous token; a token Consul does not know is a 403."""
        if self.acl_tokens is None:
            return True
        token = self._token_of(exchange)
        if not token or token == "anonymous":
            return False
        if token not in self.acl_tokens:
            raise ConsulError(403, ACL_NOT_FOUND)
        return True

    def _blocking_params(self, exchange: _Exchange) -> Tuple[int, float, str]:
        """``(min_index, wait_seconds, consistency)``, refusing what Consul refuses, in Consul's order."""
        query = exchange.query
        stale = query.has("stale")
        consistent = query.has("consistent")
        if stale and consistent:
            raise ConsulError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        consistency = "stale" if stale else "consistent" if consistent else "leader"
        wait = DEFAULT_WAIT_SECONDS
        raw_wait = query.get("wait")
        if raw_wait:
            try:
                wait = parse_go_duration(raw_wait)
            except ValueError:
                raise ConsulError(400, "Invalid wait time") from None
        if wait <= 0:
            wait = DEFAULT_WAIT_SECONDS
        wait = min(wait, MAX_WAIT_SECONDS)
        min_index = 0
        raw_index = query.get("index")
        if raw_index:
            if not _UINT.fullmatch(raw_index) or int(raw_index) >= 2**64:
                raise ConsulError(400, "Invalid index")
            min_index = int(raw_index)
        return min_index, wait, consistency

    def _node_meta_filters(self, exchange: _Exchange) -> List[Tuple[str, str]]:
        filters = []
        for item in exchange.query.get_all("node-meta"):
            key, _, value = item.partition(":")
            filters.append((key, value))
        return filters

    def _refuse_filter(self, exchange: _Exchange) -> None:
        # Consul evaluates ?filter as a bexpr expression; this server does not, and silently ignoring it
        # would make a test pass against data a real agent would not return.
        if exchange.query.has("filter"):
            raise ConsulError(
                400, "Failed to create boolean expression evaluator: ?filter is not supported by the test server"
            )

    def _meta_headers(self, index: int, consistency: str, filtered: bool) -> Tuple[Tuple[str, str], ...]:
        headers = [
            ("X-Consul-Index", str(max(1, index))),
            ("X-Consul-Knownleader", "true"),
            ("X-Consul-Lastcontact", "0"),
            ("X-Consul-Effective-Consistency", consistency),
            ("X-Consul-Default-Acl-Policy", "allow" if self.acl_tokens is None else "deny"),
        ]
        if filtered:
            headers.append(("X-Consul-Results-Filtered-By-Acls", "true"))
        return tuple(headers)

    # -- endpoints ------------------------------------------------------------------------------------

    def _health_service(self, exchange: _Exchange) -> _Outcome:
        min_index, wait, consistency = self._blocking_params(exchange)
        service = exchange.seen.path[len("/v1/health/service/") :]
        if not service:
            raise ConsulError(400, "Missing service name")
        passing = False
        if exchange.query.has("passing"):
            raw = exchange.query.get("passing")
            try:
                passing = True if raw == "" else parse_go_bool(raw)
            except ValueError:
                raise ConsulError(400, "Invalid value for ?passing") from None
        self._refuse_filter(exchange)
        tags = exchange.query.get_all("tag")
        node_meta = self._node_meta_filters(exchange)
        dc_name = self._dc_of(exchange)
        if dc_name not in self._datacenters:
            return _text_reply(500, self._no_path_message())
        # Consul filters what the token may not read rather than refusing the request.
        allowed = self._authorized(exchange)

        def current_index() -> int:
            return self._datacenters[dc_name].index_of_service(service)

        def answer() -> _Reply:
            dc = self._datacenters.get(dc_name)
            if dc is None:
                return _text_reply(500, self._no_path_message())
            entries = dc.health(service, tags, passing, node_meta) if allowed else []
            return _json_reply(entries, self._meta_headers(dc.index_of_service(service), consistency, not allowed))

        return _BlockingQuery(dc_name, min_index, wait, current_index, answer)

    def _catalog_services(self, exchange: _Exchange) -> _Outcome:
        min_index, wait, consistency = self._blocking_params(exchange)
        self._refuse_filter(exchange)
        node_meta = self._node_meta_filters(exchange)
        dc_name = self._dc_of(exchange)
        if dc_name not in self._datacenters:
            return _text_reply(500, self._no_path_message())
        allowed = self._authorized(exchange)

        def current_index() -> int:
            return self._datacenters[dc_name].index

        def answer() -> _Reply:
            dc = self._datacenters.get(dc_name)
            if dc is None:
                return _text_reply(500, self._no_path_message())
            services = dc.service_tags(node_meta) if allowed else {}
            return _json_reply(services, self._meta_headers(dc.index, consistency, not allowed))

        return _BlockingQuery(dc_name, min_index, wait, current_index, answer)

    def _catalog_datacenters(self, exchange: _Exchange) -> _Outcome:
        # No ACL and no blocking on this endpoint in Consul.
        return _json_reply(sorted(self._datacenters))

    def _agent_self(self, exchange: _Exchange) -> _Outcome:
        if not self._authorized(exchange):
            raise ConsulError(
                403, f"Permission denied: anonymous token lacks permission 'agent:read' on \"{self.node_name}\""
            )
        return _json_reply(
            {
                "Config": {
                    "Datacenter": self.datacenter,
                    "PrimaryDatacenter": self.datacenter,
                    "NodeName": self.node_name,
                    "NodeID": "00000000-0000-4000-8000-000000000001",
                    "Server": True,
                    "Revision": "restygate-test",
                    "Version": "1.18.1",
                },
                "Coord": {"Adjustment": 0, "Error": 1.5, "Vec": [0, 0, 0, 0, 0, 0, 0, 0]},
                "Member": {
                    "Name": self.node_name,
                    "Addr": "127.0.0.1",
                    "Port": 8301,
                    "Tags": {"dc": self.datacenter, "role": "consul", "port": "8300", "vsn": "2"},
                    "Status": 1,
                },
                "Meta": {"consul-network-segment": ""},
            }
        )

    def _status_leader(self, exchange: _Exchange) -> _Outcome:
        return _json_reply("127.0.0.1:8300")

    def _catalog_register(self, exchange: _Exchange) -> _Outcome:
        body = _decode_json_object(exchange.seen.body)
        if not self._authorized(exchange):
            raise _node_write_denied(body)
        self.register(body)
        return _json_reply(True)

    def _catalog_deregister(self, exchange: _Exchange) -> _Outcome:
        body = _decode_json_object(exchange.seen.body)
        if not self._authorized(exchange):
            raise _node_write_denied(body)
        self.deregister(body)
        return _json_reply(True)


# ---------------------------------------------------------------------------------------------------------
# Command line.


def _load_registrations(path: str) -> List[Dict[str, JSON]]:
    """Read a file holding one register body or a list of them."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and all(isinstance(item, dict) for item in data):
        return data
    raise ValueError("expected a register body (a JSON object) or a list of them")


def _parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m restygate.testing.consul",
        description="Serve Consul's HTTP API (the part restygate uses) for tests and benchmarks.",
    )
    parser.add_argument("--port", type=int, default=8500, help="TCP port (default 8500; 0 picks one)")
    parser.add_argument("--interface", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--dc", default="dc1", help="the agent's own datacenter (default dc1)")
    parser.add_argument("--node-name", default="consul-test", help="the agent's node name")
    parser.add_argument(
        "--register",
        action="extend",
        nargs="+",
        default=[],
        metavar="FILE.json",
        help="apply the /v1/catalog/register body, or list of them, in each file at start (repeatable)",
    )
    parser.add_argument(
        "--acl-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="enable ACLs; this token grants full access (repeatable)",
    )
    parser.add_argument(
        "--agent-prefix",
        action="store_true",
        help="prefix 'No path to datacenter' like a client agent does (rpc error making call: ...)",
    )
    parser.add_argument("--no-jitter", action="store_true", help="do not add jitter to blocking waits")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--verbose", action="store_true", help="also log every catalog change (debug level)")
    return parser, parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the server until SIGTERM or SIGINT."""
    parser, args = _parse_args(argv)
    # Imported here so that importing this module (from trial) does not install the default reactor.
    from twisted.internet import reactor as global_reactor

    reactor = cast(Any, global_reactor)
    server = ConsulServer(
        reactor,
        args.dc,
        node_name=args.node_name,
        acl_token=args.acl_token or None,
        agent_prefix=args.agent_prefix,
        jitter=not args.no_jitter,
        # Nobody can read requests_seen from outside the process; /_test/stats has the counts.
        record_limit=0,
    )
    for path in args.register:
        try:
            for body in _load_registrations(path):
                server.register(body)
        except (OSError, ValueError) as e:
            parser.error(f"--register {path}: {e}")
        except ConsulError as e:
            parser.error(f"--register {path}: {e.status} {e.message}")
    level = LogLevel.debug if args.verbose else LogLevel.info
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stdout), [LogLevelFilterPredicate(level)])]
    )
    try:
        server.listen(reactor, args.port, args.interface, access_log=args.access_log)
    except Exception as e:  # a CannotListenError and friends: one clean line, not a traceback
        _log.error("Consul test server cannot listen: {error}", error=e)
        return 1
    _log.info(
        "Consul test server for {dc} listening on {url} with {count} datacenters",
        dc=args.dc,
        url=server.url,
        count=len(server.datacenters),
    )
    # A shell starts background jobs with SIGINT ignored, and Twisted then leaves SIGINT alone; restore
    # Python's handler so that the reactor installs its own and SIGINT stops the server as SIGTERM does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
