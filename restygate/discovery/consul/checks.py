"""
The change feed's view of C{/v1/health/state/any} bodies: each service's
checks and each node's own checks (C{serfHealth}), and from them a
fingerprint per service of everything that can change its health entries:
which checks, on which nodes, in which status, with which tags.  Two answers
with the same fingerprint for a service mean its health did not change
between them; indexes are left out, so a check's output or an index reset
changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Set, Tuple

from restygate.discovery.consul.answers import ConsulError, json_body

__all__ = ["CheckStates", "parse_check_states", "fingerprints", "NOT_PASSING"]

#: The feed's ?filter: only what is not passing (small), waking on any check change.
NOT_PASSING = 'Status != "passing"'

# node, check id, status, service tags, ModifyIndex
Item = Tuple[str, str, str, Tuple[str, ...], int]


@dataclass
class CheckStates:
    """
    One answer's checks: a service's own (by lower-cased name) and a node's own.
    """

    per_service: Dict[str, List[Item]] = field(default_factory=dict)
    per_node: Dict[str, List[Item]] = field(default_factory=dict)

    def services_on_node(self) -> Dict[str, Set[str]]:
        """
        Node -> the services with a check on it (meaningful in a full answer).
        """
        found: Dict[str, Set[str]] = {}
        for name, items in self.per_service.items():
            for item in items:
                found.setdefault(item[0], set()).add(name)
        return found

    def not_passing(self) -> CheckStates:
        """
        What a C{?filter=Status != "passing"} answer would have held.
        """
        keep = lambda items: [i for i in items if i[2] != "passing"]  # noqa: E731
        return CheckStates(
            {n: keep(i) for n, i in self.per_service.items() if keep(i)},
            {n: keep(i) for n, i in self.per_node.items() if keep(i)},
        )


def _item(check: Mapping[str, Any]) -> Item:
    tags, modify = check.get("ServiceTags"), check.get("ModifyIndex")
    return (
        str(check.get("Node") or ""),
        str(check.get("CheckID") or ""),
        str(check.get("Status") or ""),
        # A tag change can change which instances a tag filter keeps.
        tuple(sorted(str(t) for t in tags)) if isinstance(tags, list) else (),
        modify if isinstance(modify, int) else 0,
    )


def parse_check_states(body: bytes) -> CheckStates:
    """
    The checks of a C{/v1/health/state/<state>} body.
    """
    checks = json_body(body)
    if checks is None:
        checks = []
    if not isinstance(checks, list):
        raise ConsulError("unexpected answer from Consul: not a JSON array")
    states = CheckStates()
    for check in checks:
        if not isinstance(check, dict):
            continue
        name = check.get("ServiceName")
        item = _item(check)
        if isinstance(name, str) and name:
            states.per_service.setdefault(name.lower(), []).append(item)
        else:
            states.per_node.setdefault(item[0], []).append(item)
    return states


def fingerprints(states: CheckStates, services_on_node: Mapping[str, Iterable[str]]) -> Dict[str, Tuple[int, int]]:
    """
    Per service: the fingerprint of its checks and of its nodes' own checks
    (C{services_on_node} says which services a node has), and the highest
    C{ModifyIndex} among them.
    """
    every: Dict[str, List[Item]] = {name: list(items) for name, items in states.per_service.items()}
    for node, items in states.per_node.items():
        for name in services_on_node.get(node, ()):
            every.setdefault(name, []).extend(items)
    return {
        name: (hash(tuple(sorted(i[:4] for i in items))), max(i[4] for i in items))
        for name, items in every.items()
    }
