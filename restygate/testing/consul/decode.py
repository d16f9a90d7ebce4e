"""Decoding of ``/v1/catalog/register`` and ``deregister`` bodies with Consul's rules.

Go's encoding/json matches field names case-insensitively and refuses values of the wrong type with a
400; Consul refuses semantic errors with a 500. Both are raised as `ConsulError`.
"""

from __future__ import annotations

import json
from typing import Dict, List, Mapping, Optional, Tuple

from .model import (
    DEFAULT_WEIGHTS,
    HEALTH_STATUSES,
    JSON,
    Check,
    ConsulError,
    Node,
    Registration,
    Service,
)


def _decode_error(message: str) -> ConsulError:
    return ConsulError(400, f"Request decode failed: {message}")


def get_field(body: Mapping[str, JSON], name: str) -> JSON:
    if name in body:
        return body[name]
    lowered = name.lower()
    for key, value in body.items():
        if key.lower() == lowered:
            return value
    return None


def str_field(body: Mapping[str, JSON], name: str, where: str) -> str:
    value = get_field(body, name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _decode_error(f"{where}{name}: expected a string, got {type(value).__name__}")
    return value


def _int_field(body: Mapping[str, JSON], name: str, where: str) -> int:
    value = get_field(body, name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _decode_error(f"{where}{name}: expected an integer, got {type(value).__name__}")
    return value


def _bool_field(body: Mapping[str, JSON], name: str, where: str) -> bool:
    value = get_field(body, name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _decode_error(f"{where}{name}: expected a boolean, got {type(value).__name__}")
    return value


def _object_field(body: Mapping[str, JSON], name: str, where: str) -> Optional[Dict[str, JSON]]:
    value = get_field(body, name)
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
    value = get_field(body, name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _decode_error(f"{where}{name}: expected an array of strings")
    return tuple(value)


def decode_json_object(raw: bytes) -> Dict[str, JSON]:
    if not raw.strip():
        raise _decode_error("EOF")
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise _decode_error(str(e)) from None
    if not isinstance(body, dict):
        raise _decode_error(f"cannot unmarshal {type(body).__name__} into an object")
    return body


def _decode_service(body: Mapping[str, JSON]) -> Service:
    where = "Service."
    name = str_field(body, "Service", where)
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
    return Service(
        # Consul uses the service name as its ID when none is given.
        service_id=str_field(body, "ID", where) or name,
        name=name,
        tags=_str_list_field(body, "Tags", where),
        address=str_field(body, "Address", where),
        port=port,
        meta=_str_map_field(body, "Meta", where),
        weights=weights,
        tagged_addresses=_object_field(body, "TaggedAddresses", where),
    )


def _decode_check(body: Mapping[str, JSON], node: str) -> Check:
    where = "Check."
    check_node = str_field(body, "Node", where) or node
    if check_node != node:
        raise ConsulError(500, f"Check node {check_node!r} does not match the registered node {node!r}")
    name = str_field(body, "Name", where)
    # Consul derives a missing check ID from the name, and a missing status means critical.
    check_id = str_field(body, "CheckID", where) or name
    if not check_id:
        raise ConsulError(500, "Missing check ID")
    status = str_field(body, "Status", where) or "critical"
    if status not in HEALTH_STATUSES:
        raise ConsulError(500, f"Invalid Health Check Status '{status}'")
    return Check(
        node=node,
        check_id=check_id,
        name=name,
        status=status,
        service_id=str_field(body, "ServiceID", where),
        notes=str_field(body, "Notes", where),
        output=str_field(body, "Output", where),
    )


def decode_registration(body: Mapping[str, JSON], default_datacenter: str) -> Registration:
    node = str_field(body, "Node", "")
    address = str_field(body, "Address", "")
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
    many = get_field(body, "Checks")
    if many is not None:
        if not isinstance(many, list) or not all(isinstance(c, dict) for c in many):
            raise _decode_error("Checks: expected an array of objects")
        check_bodies.extend(many)
    return Registration(
        datacenter=str_field(body, "Datacenter", "") or default_datacenter,
        node=Node(
            name=node,
            address=address,
            node_id=str_field(body, "ID", ""),
            # Absent maps are stored as None so the health body shows `null`, as Consul does for them.
            tagged_addresses=_str_map_field(body, "TaggedAddresses", ""),
            meta=_str_map_field(body, "NodeMeta", ""),
        ),
        skip_node_update=skip_node_update,
        service=_decode_service(service_body) if service_body is not None else None,
        checks=tuple(_decode_check(c, node) for c in check_bodies),
    )


def node_write_denied(body: Mapping[str, JSON]) -> ConsulError:
    # Consul >= 1.11 wording; older agents say just "Permission denied".
    node = json.dumps(get_field(body, "Node"))
    return ConsulError(403, f"Permission denied: anonymous token lacks permission 'node:write' on {node}")
