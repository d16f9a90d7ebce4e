"""The test server's data model: Consul's constants and the immutable catalog entities.

Nodes, service instances and checks are frozen and replaced as a whole; each renders itself the way
Consul's ``/v1/health/service`` body shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple

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

# A JSON-shaped value as Python's json module produces and consumes it.
JSON = Any


def new_coordinate(
    vec: Sequence[float] = (0.0,) * 8, height: float = 1e-5, adjustment: float = 0.0, error: float = 1.5
) -> Dict[str, JSON]:
    """A network coordinate as Consul serves it (lib/coordinate: 8 dimensions, a new one at the origin)."""
    if len(vec) != 8:
        raise ValueError("a Consul coordinate has 8 dimensions")
    return {"Adjustment": adjustment, "Error": error, "Height": height, "Vec": [float(v) for v in vec]}


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
# The catalog. Entities are immutable and replaced as a whole; equality ignores the raft indexes so that a
# re-registration with identical data is recognised as "no change" and does not wake blocking queries,
# as Consul's state store does.


@dataclass(frozen=True)
class Node:
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
class Service:
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
class Check:
    node: str
    check_id: str
    name: str
    status: str
    service_id: str
    notes: str
    output: str
    create_index: int = field(default=0, compare=False)
    modify_index: int = field(default=0, compare=False)

    def to_json(self, service: Optional[Service]) -> Dict[str, JSON]:
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
class Registration:
    """A validated ``/v1/catalog/register`` body."""

    datacenter: str
    node: Node
    skip_node_update: bool
    service: Optional[Service]
    checks: Tuple[Check, ...]


# A mutation of one datacenter: given the datacenter and the raft index it would commit at, it applies its
# change and returns the lower-cased names of the services whose health view changed, or None if nothing

@dataclass
class Agent:
    """The agent's identity and settings, shared by the server and its API; tests may change them."""

    datacenter: str
    node_name: str
    #: Tokens that grant full access; None disables ACLs.
    acl_tokens: Optional[FrozenSet[str]]
    #: Answer "No path to datacenter" the way a client agent does, with its RPC prefix.
    agent_prefix: bool
    #: What ``/v1/status/leader`` reports; ``""`` while the cluster has no leader.
    leader: str = "127.0.0.1:8300"
    #: What ``X-Consul-LastContact`` reports on a ``?stale`` read: ms since the server heard from the leader.
    last_contact_ms: int = 0

    def no_path_message(self) -> str:
        """The body of Consul's 500 for an unknown datacenter, as this agent words it."""
        return (AGENT_RPC_PREFIX if self.agent_prefix else "") + NO_PATH_TO_DATACENTER
