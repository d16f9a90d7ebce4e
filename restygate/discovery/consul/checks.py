"""
The change feed's view of C{/v1/health/state/any} bodies: each service's
checks and each node's own checks (C{serfHealth}), and from them a
fingerprint per service of everything that can change its health entries:
which checks, on which nodes, in which status, with which tags.  Two answers
with the same fingerprint for a service mean its health did not change
between them; indexes are left out, so a check's output or an index reset
changes nothing.  What is not passing also tells which instances must stop
serving before their service is fetched again (L{screen}), and whether such
a fetch can add anything (L{only_worse}).  Two full answers tell which
instances are evidently gone (L{present}, L{gone}): their checks were in the
first and are in no way in the second; L{without} takes them away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Set, Tuple

from restygate.discovery.consul.answers import ConsulError, HealthAnswer, json_body, severity
from restygate.discovery.model import Instance

__all__ = [
    "CheckStates", "parse_check_states", "fingerprints", "NOT_PASSING", "screen", "only_worse", "Present", "present",
    "gone", "without",
]

#: The feed's ?filter: only what is not passing (small), waking on any check change.
NOT_PASSING = 'Status != "passing"'

# node, check id, status, service tags, ModifyIndex, service ID
Item = Tuple[str, str, str, Tuple[str, ...], int, str]
# Per service (lower-cased), the (node, service ID) pairs with a check of it; the nodes with checks of their own.
Present = Tuple[Dict[str, Set[Tuple[str, str]]], Set[str]]


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
        str(check.get("ServiceID") or ""),
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


def _worst(states: CheckStates, service: str) -> Tuple[Dict[Tuple[str, str], int], Dict[str, int]]:
    """
    The worst severity per (node, service ID) of C{service}'s own checks,
    and per node of the nodes' own checks, in C{states}.
    """
    own: Dict[Tuple[str, str], int] = {}
    for item in states.per_service.get(service.lower(), ()):
        key = (item[0], item[5])
        own[key] = max(own.get(key, 0), severity(item[2]))
    nodes = {node: max(severity(i[2]) for i in items) for node, items in states.per_node.items() if items}
    return own, nodes


def screen(answer: HealthAnswer, not_passing: CheckStates, service: str) -> HealthAnswer:
    """
    C{answer} (a C{/v1/health/service} answer for C{service}) without the
    instances C{not_passing} (what a C{Status != "passing"} read holds) says
    are not passing: those at warning move to the warning ones, critical
    ones leave both.  It only ever takes instances away: an instance whose
    checks pass again is added by a fetch, which knows it is still there.
    """
    own, nodes = _worst(not_passing, service)
    if not own and not nodes:
        return answer

    def worst(i: Instance) -> int:
        return max(own.get((i.node, i.id), 0), nodes.get(i.node, 0))

    passing = tuple(i for i in answer.instances if worst(i) == 0)
    warned = {i for i in answer.warning if worst(i) < 2} | {i for i in answer.instances if worst(i) == 1}
    order = answer.registered or answer.instances + answer.warning
    warning = tuple(i for i in order if i in warned)
    if passing == answer.instances and warning == answer.warning:
        return answer
    return HealthAnswer(answer.index, passing, answer.registered, warning)


def only_worse(before: CheckStates, now: CheckStates, service: str) -> bool:
    """
    Whether C{service}'s health moved only the way L{screen} can follow from
    what is not passing: every check not passing before is still at least as
    bad now.  (Otherwise an instance may pass again, and only a fetch can say
    whether it is still registered.)
    """
    own_before, nodes_before = _worst(before, service)
    own_now, nodes_now = _worst(now, service)
    return all(own_now.get(k, -1) >= v for k, v in own_before.items()) and all(
        nodes_now.get(k, -1) >= v for k, v in nodes_before.items()
    )


def present(states: CheckStates) -> Present:
    """
    What has checks in C{states} (a full answer): instances and nodes.
    """
    pairs = {name: {(i[0], i[5]) for i in items if i[5]} for name, items in states.per_service.items()}
    return pairs, {node for node, items in states.per_node.items() if items}


def gone(before: Present, now: Present) -> Present:
    """
    What had checks in C{before} and has none in C{now} (two full answers in
    turn): instances, and nodes, Consul evidently deregistered in between.
    What never had a check is never in it: services and nodes without
    checks exist (a catalog-registered external service).
    """
    pairs_now = now[0]
    pairs = {name: keys - pairs_now.get(name, set()) for name, keys in before[0].items()}
    return {name: keys for name, keys in pairs.items() if keys}, before[1] - now[1]


def without(answer: HealthAnswer, pairs: Set[Tuple[str, str]], nodes: Set[str]) -> HealthAnswer:
    """
    C{answer} without the instances in C{pairs} (node, service ID) or on
    C{nodes}, registered ones included: it only ever takes away.
    """
    def there(i: Instance) -> bool:
        return (i.node, i.id) not in pairs and i.node not in nodes

    if all(map(there, answer.registered + answer.instances + answer.warning)):
        return answer
    return HealthAnswer(
        answer.index, tuple(filter(there, answer.instances)), tuple(filter(there, answer.registered)),
        tuple(filter(there, answer.warning)),
    )
