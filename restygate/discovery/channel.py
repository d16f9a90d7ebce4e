"""
The wire format of the discovery channel between the daemon, which runs
discovery once per host, and its worker processes, which route with the
snapshots it sends them (L{restygate.discovery.remote},
L{restygate.daemon.workers.hub}).

One message a line, over the pipes the daemon already has to each worker
(its standard input one way, the control pipe the other):

 - worker to daemon: C{want <id> <dc> <service>} (a lookup the worker has no
   snapshot for; names are route segments, never whitespace) and
   C{used <dc>/<service>/<count> ...} (what it served from its view lately
   and how often: the daemon's watches are not stopped as idle, and the
   busiest get dedicated queries);
 - daemon to worker: C{snap <json>} (a versioned snapshot, sent to every
   worker on each change and the whole view to a worker that starts),
   C{drop <json>} (a pair no longer watched), C{answer <id> <json>} (the
   outcome of a C{want}: a snapshot, or only its version when the snapshot
   went to every worker as C{snap} just before, or an error kind) and C{ready} (Consul
   answers the daemon: the worker's discovery is ready).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, Dict, List, Optional, Tuple

from restygate.discovery.model import (
    DiscoveryError,
    DiscoveryUnavailable,
    Instance,
    Snapshot,
    UnknownDatacenter,
    UnknownService,
)

__all__ = ["encode_snapshot", "decode_snapshot", "snapshot_from", "encode_error", "decode_error"]

# Looked up once: dataclasses.fields() per instance cost the daemon ~5 % of its time
# with thousands of first requests a second.  An instance goes as the list of
# its init fields in this order.
_INSTANCE_NAMES = tuple(f.name for f in dataclasses.fields(Instance) if f.init)
_INSTANCE_LISTS = ("instances", "registered", "warning")
_SNAPSHOT_NAMES = tuple(f.name for f in dataclasses.fields(Snapshot) if f.name not in _INSTANCE_LISTS)
_TAGS = _INSTANCE_NAMES.index("tags")
_META = _INSTANCE_NAMES.index("meta")
_ADDRESS = _INSTANCE_NAMES.index("address")
_NODE = _INSTANCE_NAMES.index("node")
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_snapshot(version: int, snapshot: Snapshot) -> str:
    """
    C{snapshot} as the JSON of one line, with its C{version}: its plain
    fields, a table of its distinct instances (each the list of its fields)
    and each instance tuple as indexes into it -- the passing instances are
    among the registered ones, so each instance is written and read once.
    """
    data: Dict[str, Any] = {"version": version}
    for name in _SNAPSHOT_NAMES:
        data[name] = getattr(snapshot, name)
    where: Dict[Instance, int] = {}
    table: List[List[Any]] = []
    for name in _INSTANCE_LISTS:
        indexes = []
        for instance in getattr(snapshot, name):
            index = where.get(instance)
            if index is None:
                index = where[instance] = len(table)
                table.append([getattr(instance, field) for field in _INSTANCE_NAMES])
            indexes.append(index)
        data[name] = indexes
    data["table"] = table
    return _ENCODER.encode(data)


def _instance(fields: List[Any]) -> Instance:
    fields[_TAGS] = tuple(fields[_TAGS])
    fields[_META] = tuple(tuple(pair) for pair in fields[_META])
    # Addresses and node names repeat across every service on a node.
    fields[_ADDRESS] = sys.intern(fields[_ADDRESS])
    fields[_NODE] = sys.intern(fields[_NODE])
    return Instance(*fields)


def snapshot_from(data: Dict[str, Any]) -> Tuple[int, Snapshot]:
    """
    The version and snapshot of an L{encode_snapshot} line's JSON, parsed:
    one object per instance, however many of its tuples name it.
    """
    table = [_instance(fields) for fields in data["table"]]
    values: Dict[str, Any] = {name: data[name] for name in _SNAPSHOT_NAMES}
    for name in _INSTANCE_LISTS:
        values[name] = tuple(table[index] for index in data[name])
    return data["version"], Snapshot(**values)


def decode_snapshot(text: str) -> Tuple[int, Snapshot]:
    """
    The version and snapshot of an L{encode_snapshot} line.
    """
    return snapshot_from(json.loads(text))


def encode_error(error: BaseException) -> str:
    """
    A lookup's failure as the JSON of one line.
    """
    if isinstance(error, UnknownService):
        return json.dumps({"error": "unknown_service", "dc": error.dc, "service": error.service})
    if isinstance(error, UnknownDatacenter):
        return json.dumps({"error": "unknown_datacenter", "dc": error.dc})
    return json.dumps({"error": "unavailable", "message": str(error)})


def decode_error(data: Dict[str, Any]) -> DiscoveryError:
    """
    The exception an L{encode_error} line stands for.
    """
    kind: Optional[str] = data.get("error")
    if kind == "unknown_service":
        return UnknownService(data["dc"], data["service"])
    if kind == "unknown_datacenter":
        return UnknownDatacenter(data["dc"])
    return DiscoveryUnavailable(str(data.get("message", "discovery unavailable")))
