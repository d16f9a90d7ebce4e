"""
Consul's answer bodies turned into restygate's values: the only place that
knows their JSON shapes.  Bodies from real agents carry C{null} maps and omit
fields on old versions, so parsing is defensive: an entry that cannot be used
is skipped and logged, never allowed to break the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from twisted.logger import Logger

from restygate.discovery.model import Instance

__all__ = [
    "ConsulError",
    "HealthAnswer",
    "parse_entry",
    "parse_health",
    "parse_datacenters",
    "parse_service_names",
    "severity",
]

log = Logger()

#: What restygate says about Consul's 429: the agent's per-client connection cap
#: (limits.http_max_conns_per_client) refused a connection.
CONNECTION_LIMIT = "Consul agent connection limit reached"


class ConsulError(Exception):
    """
    Consul answered with an error, or could not be asked.
    """

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HealthAnswer:
    """
    One answer to a health query: the instances and Consul's index.
    """

    index: int
    instances: Tuple[Instance, ...]
    # Every registered instance, passing or not (panic mode needs them).
    registered: Tuple[Instance, ...] = ()
    # Those whose worst check is warning (include-warning needs them).
    warning: Tuple[Instance, ...] = ()


def _mapping(value: Any) -> dict:  # type: ignore[type-arg]
    return value if isinstance(value, dict) else {}


def parse_entry(entry: Any) -> Optional[Instance]:
    """
    One C{/v1/health/service} entry as an L{Instance}, or L{None} when it
    names no usable address and port.
    """
    node = _mapping(_mapping(entry).get("Node"))
    service = _mapping(_mapping(entry).get("Service"))
    address = service.get("Address") or node.get("Address")
    port = service.get("Port")
    if not isinstance(address, str) or not address:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    tags = service.get("Tags")
    meta = _mapping(service.get("Meta"))
    weights = _mapping(service.get("Weights"))
    return Instance(
        address=address.strip("[]"),
        port=port,
        tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
        meta=tuple(sorted((str(k), str(v)) for k, v in meta.items())),
        id=str(service.get("ID") or ""),
        node=str(node.get("Node") or ""),
        # Consul refuses a passing weight below 1 and defaults both to 1.
        weight=_weight(weights.get("Passing"), 1),
        warning_weight=_weight(weights.get("Warning"), 0),
    )


def _weight(value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 1
    return max(minimum, value)


# The worst check decides, as Consul's own health aggregation does; a status
# it does not know (maintenance is "critical" already) counts as critical.
_SEVERITY: Dict[Any, int] = {"passing": 0, "warning": 1}


def severity(status: Any) -> int:
    """
    A check status as 0 (passing), 1 (warning) or 2 (critical, or anything else).
    """
    return _SEVERITY.get(status, 2)


def _health(entry: Any) -> int:
    """
    0 when every check of the entry passes, 1 when the worst is warning, 2
    when one is critical (or the entry has no checks list at all).
    """
    checks = _mapping(entry).get("Checks")
    if not isinstance(checks, list):
        return 2
    return max((severity(_mapping(c).get("Status")) for c in checks), default=0)


def parse_health(body: bytes) -> Tuple[Tuple[Instance, ...], Tuple[Instance, ...], Tuple[Instance, ...]]:
    """
    The usable instances in a C{/v1/health/service} body: those whose every
    check passes (what Consul's C{?passing} would keep), those whose worst
    check is warning, and all of them, each in a stable order so that an
    answer with the same members compares equal to the last one.
    """
    try:
        entries = json.loads(body)
    except ValueError as e:
        raise ConsulError(f"unparsable answer from Consul: {e}") from None
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ConsulError("unexpected answer from Consul: not a JSON array")
    parsed: List[Tuple[Instance, int]] = []
    for entry in entries:
        instance = parse_entry(entry)
        if instance is None:
            log.warn("skipping a Consul entry with no usable address or port: {entry!r:.200}", entry=entry)
        else:
            parsed.append((instance, _health(entry)))
    # Every field in the key: entries alike in address, port and ID (one
    # service address shared by several nodes) must not swap places between
    # answers, or an unchanged service would look changed.
    parsed.sort(key=lambda p: (p[0].address, p[0].port, p[0].id, p[0].node, p[0].tags, p[0].meta))
    return (
        tuple(i for i, health in parsed if health == 0),
        tuple(i for i, health in parsed if health == 1),
        tuple(i for i, _ in parsed),
    )


def answer_text(body: bytes) -> str:
    """
    The start of an error answer's body, fit for a log line.
    """
    return body[:300].decode("utf-8", "replace").strip()


def json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as e:
        raise ConsulError(f"unparsable answer from Consul: {e}") from None


def parse_datacenters(body: bytes) -> Tuple[str, ...]:
    """
    The datacenters in a C{/v1/catalog/datacenters} body, in Consul's order.
    """
    names = json_body(body)
    if not isinstance(names, list):
        raise ConsulError("unexpected answer from Consul: not a JSON array")
    return tuple(n for n in names if isinstance(n, str) and n)


@dataclass(frozen=True)
class Coordinate:
    """
    A Consul network coordinate (Vivaldi, in seconds).
    """

    vec: Tuple[float, ...]
    height: float
    adjustment: float


def _coordinate(raw: Any) -> Optional[Coordinate]:
    coord = _mapping(raw)
    vec, height, adjustment = coord.get("Vec"), coord.get("Height", 0.0), coord.get("Adjustment", 0.0)
    numbers = (int, float)
    if not isinstance(vec, list) or not vec or not all(isinstance(v, numbers) for v in vec):
        return None
    if not isinstance(height, numbers) or not isinstance(adjustment, numbers):
        return None
    return Coordinate(tuple(float(v) for v in vec), float(height), float(adjustment))


def parse_coordinates(body: bytes) -> Dict[str, Tuple[Coordinate, ...]]:
    """
    The servers' coordinates of each datacenter in a
    C{/v1/coordinate/datacenters} body; unusable entries are left out.
    """
    areas = json_body(body)
    if not isinstance(areas, list):
        raise ConsulError("unexpected answer from Consul: not a JSON array")
    found: Dict[str, Tuple[Coordinate, ...]] = {}
    for area in areas:
        name = _mapping(area).get("Datacenter")
        entries = _mapping(area).get("Coordinates")
        if isinstance(name, str) and name and isinstance(entries, list):
            coordinates = (_coordinate(_mapping(e).get("Coord")) for e in entries)
            found[name] = found.get(name, ()) + tuple(c for c in coordinates if c is not None)
    return found


def parse_service_names(body: bytes) -> Tuple[str, ...]:
    """
    The service names in a C{/v1/catalog/services} body (name -> tags).
    """
    services = json_body(body)
    if services is None:
        return ()
    if not isinstance(services, dict):
        raise ConsulError("unexpected answer from Consul: not a JSON object")
    return tuple(sorted(n for n in services if isinstance(n, str) and n))
