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
from typing import Any, Dict, Optional, Tuple

from restygate.discovery.model import (
    DiscoveryError,
    DiscoveryUnavailable,
    Instance,
    Snapshot,
    UnknownDatacenter,
    UnknownService,
)

__all__ = ["encode_snapshot", "decode_snapshot", "encode_error", "decode_error"]

def _tuples(value: Any) -> Any:
    # JSON has only lists; the model's values are tuples all the way down.
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# Looked up once: dataclasses.fields() per instance cost the daemon ~5 % of its time
# with thousands of first requests a second.
_INSTANCE_NAMES = tuple(f.name for f in dataclasses.fields(Instance) if f.init)
_INSTANCE_FIELDS = frozenset(_INSTANCE_NAMES)
_SNAPSHOT_NAMES = tuple(f.name for f in dataclasses.fields(Snapshot))
_SNAPSHOT_FIELDS = frozenset(_SNAPSHOT_NAMES)


def _instance(fields: Dict[str, Any], seen: Dict[Tuple[Any, ...], Instance]) -> Instance:
    """
    The instance C{fields} describe: the one already made when an earlier
    list of the same snapshot had it (its passing instances are also among
    the registered ones), so a worker holds one object per instance.
    """
    values = {k: _tuples(v) for k, v in fields.items() if k in _INSTANCE_FIELDS}
    key = tuple(sorted(values.items()))
    instance = seen.get(key)
    if instance is None:
        # Addresses and node names repeat across every service on a node.
        for name in ("address", "node"):
            if isinstance(values.get(name), str):
                values[name] = sys.intern(values[name])
        instance = seen[key] = Instance(**values)
    return instance


def _fields(instance: Instance) -> Dict[str, Any]:
    return {name: getattr(instance, name) for name in _INSTANCE_NAMES}


def encode_snapshot(version: int, snapshot: Snapshot) -> str:
    """
    C{snapshot} as the JSON of one line, with its C{version}: every field of
    L{Snapshot}, its instance tuples as lists of objects.
    """
    data: Dict[str, Any] = {"version": version}
    for name in _SNAPSHOT_NAMES:
        value = getattr(snapshot, name)
        data[name] = [_fields(i) for i in value] if isinstance(value, tuple) else value
    return json.dumps(data, separators=(",", ":"))


def decode_snapshot(text: str) -> Tuple[int, Snapshot]:
    """
    The version and snapshot of an L{encode_snapshot} line.
    """
    data = json.loads(text)
    known = _SNAPSHOT_FIELDS
    seen: Dict[Tuple[Any, ...], Instance] = {}
    fields: Dict[str, Any] = {
        k: tuple(_instance(i, seen) for i in v) if isinstance(v, list) else v for k, v in data.items() if k in known
    }
    return data["version"], Snapshot(**fields)


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
